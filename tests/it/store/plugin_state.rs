//! [`PluginStateStore`] conformance: namespaced by connection, prefix
//! listing in key order without sealed values, put-if-absent that exactly
//! one of racing callers wins.

use std::sync::Arc;

use lessor::store::Store;
use time::OffsetDateTime;

use super::{postgres, sqlite};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms() {
    let (_d, s) = sqlite().await;
    suite(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conforms() {
    let (_pg, s) = postgres().await;
    suite(s).await;
}

pub async fn suite(s: Arc<dyn Store>) {
    let at = OffsetDateTime::now_utc();
    // Plugin state: namespaced by connection, prefix listing, put_if_absent.
    s.state_put("c1", "crl/web/01", b"x", false, at).await.unwrap();
    s.state_put("c1", "crl/web/02", b"y", false, at).await.unwrap();
    s.state_put("c1", "crl/api/01", b"z", false, at).await.unwrap();
    s.state_put("c2", "crl/web/03", b"w", false, at).await.unwrap();
    let keys: Vec<String> = s.state_list("c1", "crl/web/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["crl/web/01", "crl/web/02"]);
    assert!(s.state_put_if_absent("c1", "ca", b"first", true, at).await.unwrap());
    assert!(!s.state_put_if_absent("c1", "ca", b"second", true, at).await.unwrap());
    assert_eq!(s.state_get("c1", "ca").await.unwrap(), Some((b"first".to_vec(), true)));
    assert!(s.state_list("c1", "c").await.unwrap().iter().all(|(k, _)| k != "ca"), "sealed values are not listed");
    s.state_delete("c1", "crl/web/01").await.unwrap();
    assert_eq!(s.state_get("c1", "crl/web/01").await.unwrap(), None);

    s.state_delete("c1", "never-there").await.unwrap();
    // Overwrite replaces value and sealing; the other connection is untouched.
    s.state_put("c1", "crl/web/02", b"y2", true, at).await.unwrap();
    assert_eq!(s.state_get("c1", "crl/web/02").await.unwrap(), Some((b"y2".to_vec(), true)));
    let c2: Vec<(String, Vec<u8>)> = s.state_list("c2", "").await.unwrap();
    assert_eq!(c2, vec![("crl/web/03".to_owned(), b"w".to_vec())]);
    assert_eq!(s.state_get("c2", "ca").await.unwrap(), None, "namespaced by connection");

    // Racing put-if-absent: exactly one wins and its value stays.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let s = s.clone();
        set.spawn(async move { (i, s.state_put_if_absent("c3", "once", &[i], false, at).await.unwrap()) });
    }
    let winners: Vec<u8> = set.join_all().await.into_iter().filter(|(_, w)| *w).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(s.state_get("c3", "once").await.unwrap(), Some((vec![winners[0]], false)));
}
