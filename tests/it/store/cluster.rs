//! [`ClusterStore`] conformance: shared metadata written once (exactly one
//! of racing writers wins), replica heartbeats by the database's clock,
//! listed while recent, removed on shutdown; the reconciler's first-seen
//! times of strays, recorded once (racing writers agree) and forgotten.

use std::sync::Arc;
use std::time::Duration;

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
    assert!(s.meta_put_if_absent("k", "v").await.unwrap());
    assert!(!s.meta_put_if_absent("k", "w").await.unwrap());
    assert_eq!(s.meta_get("k").await.unwrap().as_deref(), Some("v"));

    assert_eq!(s.meta_get("absent").await.unwrap(), None);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let s = s.clone();
        set.spawn(async move { (i, s.meta_put_if_absent("race", &format!("v{i}")).await.unwrap()) });
    }
    let winners: Vec<i32> = set.join_all().await.into_iter().filter(|(_, w)| *w).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(s.meta_get("race").await.unwrap(), Some(format!("v{}", winners[0])));

    // Replica heartbeats: recorded with the store's clock, updated in place,
    // listed while recent, removed on shutdown.
    let me = lessor::store::Replica {
        id: "ignored: the store uses its own id".into(),
        host: "h1".into(),
        pid: 42,
        version: "0.1.0".into(),
        policy_version: "aaaa".into(),
        started_at_ms: 1_000,
        seen_at_ms: 0,
    };
    assert!(s.replicas(Duration::from_secs(60)).await.unwrap().is_empty());
    s.heartbeat(&me).await.unwrap();
    s.heartbeat(&lessor::store::Replica { policy_version: "bbbb".into(), ..me.clone() }).await.unwrap();
    let live = s.replicas(Duration::from_secs(60)).await.unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    let r = &live[0];
    assert_eq!((r.id.as_str(), r.host.as_str(), r.pid, r.policy_version.as_str()), (s.replica_id(), "h1", 42, "bbbb"));
    let now_ms = lessor::store::to_ms(OffsetDateTime::now_utc());
    assert!((r.seen_at_ms - now_ms).abs() < 5_000, "seen_at {} vs now {now_ms}", r.seen_at_ms);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.replicas(Duration::from_millis(10)).await.unwrap().is_empty(), "older than `within`");
    s.remove_replica().await.unwrap();
    assert!(s.replicas(Duration::from_secs(60)).await.unwrap().is_empty());

    // Strays' first-seen times: the first recorded time stays (the caller's
    // clock, not the database's), per connection and object.
    assert_eq!(s.stray_first_seen("pg", "lessor_a", 1_000).await.unwrap(), 1_000);
    assert_eq!(s.stray_first_seen("pg", "lessor_a", 9_000).await.unwrap(), 1_000, "kept, not moved");
    assert_eq!(s.stray_first_seen("pg2", "lessor_a", 5_000).await.unwrap(), 5_000, "per connection");
    assert_eq!(s.stray_first_seen("pg", "lessor_b", 7_000).await.unwrap(), 7_000);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let s = s.clone();
        set.spawn(async move { s.stray_first_seen("pg", "lessor_race", 100 + i).await.unwrap() });
    }
    let seen: std::collections::BTreeSet<i64> = set.join_all().await.into_iter().collect();
    assert_eq!(seen.len(), 1, "racing passes agree on one first-seen time: {seen:?}");
    let strings = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(s.stray_objects("pg", 100).await.unwrap(), strings(&["lessor_a", "lessor_b", "lessor_race"]));
    assert_eq!(s.stray_objects("pg", 2).await.unwrap(), strings(&["lessor_a", "lessor_b"]), "bounded");
    s.stray_forget("pg", &strings(&["lessor_a", "lessor_race", "never_recorded"])).await.unwrap();
    s.stray_forget("pg", &[]).await.unwrap();
    assert_eq!(s.stray_objects("pg", 100).await.unwrap(), strings(&["lessor_b"]));
    assert_eq!(s.stray_objects("pg2", 100).await.unwrap(), strings(&["lessor_a"]), "another connection's stay");
    // Forgotten, seen again: a new first-seen time.
    assert_eq!(s.stray_first_seen("pg", "lessor_a", 20_000).await.unwrap(), 20_000);
}
