//! The every-node rule: a user exists on all nodes or none, and a
//! revocation is done only when every node confirmed.

use lessor_plugin::{Plugin, PluginError};

use crate::support::{connect, issue, lease, lease_id, password, username, Pair, RedisPluginExt};

#[tokio::test]
async fn an_issue_with_a_node_down_fails_retryably_and_leaves_nothing() {
    let mut pair = Pair::start();
    let p = pair.plugin();
    pair.b.stop();
    let e = issue(&p, &lease_id(), &["cache.read"]).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{}", pair.b.port())), "names the node: {e}");
    assert!(pair.users(&pair.a).await.is_empty(), "the user made on the live node must be deleted again");
    pair.b.restart().unwrap();
    let id = lease_id();
    let ok = issue(&p, &id, &["cache.read"]).await.unwrap();
    for r in pair.nodes() {
        assert_eq!(pair.users(r).await, vec![username(&ok)]);
    }
    p.revoke(&lease(&id, None)).await.unwrap();
}

#[tokio::test]
async fn a_node_down_during_revoke_keeps_the_revocation_unfinished_until_it_is_back() {
    let mut pair = Pair::start();
    let p = pair.plugin();
    let id = lease_id();
    let issued = issue(&p, &id, &["cache.read"]).await.unwrap();
    pair.b.stop();
    let e = p.revoke(&lease(&id, None)).await.unwrap_err();
    assert!(matches!(e, PluginError::Retryable(ref m) if m.contains("done on 1 of 2 nodes")), "{e}");
    assert!(pair.users(&pair.a).await.is_empty(), "the live node is revoked already");
    // The down node kept the user (its ACL file has it): back up, the user
    // works there until the retry.
    pair.b.restart().unwrap();
    assert!(connect(&pair.b, &username(&issued), &password(&issued)).await.is_ok());
    p.revoke(&lease(&id, None)).await.unwrap();
    for r in pair.nodes() {
        assert!(pair.users(r).await.is_empty());
    }
    assert!(p.all_users().await.is_empty());
}

#[tokio::test]
async fn revoke_finds_users_by_lease_id_on_every_node_and_touches_no_other() {
    let pair = Pair::start();
    let p = pair.plugin();
    let (keep, gone) = (lease_id(), lease_id());
    let kept = issue(&p, &keep, &["cache.read"]).await.unwrap();
    issue(&p, &gone, &["cache.write"]).await.unwrap();
    // A user outside lessor's prefix and one made by hand with the prefix.
    let mut admin = connect(&pair.a, "default", &pair.password).await.unwrap();
    let _: () = redis::cmd("ACL").arg("SETUSER").arg("app_static").arg("on").arg(">pw").query_async(&mut admin).await.unwrap();
    p.revoke(&lease(&gone, None)).await.unwrap();
    for r in pair.nodes() {
        assert_eq!(pair.users(r).await, vec![username(&kept)]);
    }
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut admin).await.unwrap();
    assert!(users.contains(&"app_static".to_owned()));
    let listed = p.list_users().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|(_, u)| u == &vec![username(&kept)]));
    p.revoke(&lease(&keep, Some(kept.handle.clone()))).await.unwrap();
}
