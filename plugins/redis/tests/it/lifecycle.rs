//! What a workload sees: exactly its scopes, a password nobody else sees,
//! and a revocation that ends open connections at once.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use lessor_plugin::{Plugin, PluginError};

use lessor_redis::testkit::TempRedis;
use lessor_redis::RedisPlugin;
use serde_json::json;

use crate::support::{code, connect, ctx, issue, lease, lease_id, password, roles, username, Pair};

#[tokio::test]
async fn a_user_can_read_allowed_keys_and_is_refused_others() {
    let pair = Pair::start();
    let p = pair.plugin();
    let mut admin = connect(&pair.a, "default", &pair.password).await.unwrap();
    let _: () = redis::cmd("SET").arg("cache:color").arg("blue").query_async(&mut admin).await.unwrap();
    let _: () = redis::cmd("SET").arg("secret:key").arg("x").query_async(&mut admin).await.unwrap();

    let id = lease_id();
    let issued = issue(&p, &id, &["cache.read"]).await.unwrap();
    let (user, pw) = (username(&issued), password(&issued));
    assert!(user.starts_with("lessor_app_shop_"), "{user}");
    assert_eq!(issued.handle["user"], user.as_str());
    let mut c = connect(&pair.a, &user, &pw).await.unwrap();
    let v: String = redis::cmd("GET").arg("cache:color").query_async(&mut c).await.unwrap();
    assert_eq!(v, "blue");
    let e = redis::cmd("GET").arg("secret:key").query_async::<Option<String>>(&mut c).await.unwrap_err();
    assert_eq!(code(&e), "NOPERM", "{e}");
    let e = redis::cmd("SET").arg("cache:color").arg("red").query_async::<()>(&mut c).await.unwrap_err();
    assert_eq!(code(&e), "NOPERM", "read-only scope must not write: {e}");
    // The same user on the other node, with the same rules.
    let mut c2 = connect(&pair.b, &user, &pw).await.unwrap();
    let e = redis::cmd("GET").arg("secret:key").query_async::<Option<String>>(&mut c2).await.unwrap_err();
    assert_eq!(code(&e), "NOPERM");

    // Two scopes: the rules add up.
    let id2 = lease_id();
    let rw = issue(&p, &id2, &["cache.read", "cache.write"]).await.unwrap();
    let mut w = connect(&pair.a, &username(&rw), &password(&rw)).await.unwrap();
    let _: () = redis::cmd("SET").arg("cache:color").arg("red").query_async(&mut w).await.unwrap();
    let e = redis::cmd("SET").arg("other").arg("1").query_async::<()>(&mut w).await.unwrap_err();
    assert_eq!(code(&e), "NOPERM");

    // The issued URL logs in too.
    let url = issued.secret["url"].clone();
    let client = redis::Client::open(lessor_plugin::secrecy::ExposeSecret::expose_secret(&url)).unwrap();
    let mut u = client.get_multiplexed_async_connection().await.unwrap();
    let v: String = redis::cmd("GET").arg("cache:color").query_async(&mut u).await.unwrap();
    assert_eq!(v, "red");

    // A scope the role lacks is refused before anything is created.
    let e = issue(&p, &lease_id(), &["admin"]).await.unwrap_err();
    assert!(matches!(e, PluginError::InvalidRequest(ref m) if m.contains("scope `admin`")), "{e}");
    p.revoke(&lease(&id, None)).await.unwrap();
    p.revoke(&lease(&id2, Some(rw.handle.clone()))).await.unwrap();
}

#[tokio::test]
async fn a_revoked_user_is_disconnected_at_once() {
    let pair = Pair::start();
    let p = pair.plugin();
    let id = lease_id();
    let issued = issue(&p, &id, &["cache.read"]).await.unwrap();
    let mut open = Vec::new();
    for r in pair.nodes() {
        let mut c = connect(r, &username(&issued), &password(&issued)).await.unwrap();
        let _: Option<String> = redis::cmd("GET").arg("cache:a").query_async(&mut c).await.unwrap();
        open.push(c);
    }
    p.revoke(&lease(&id, Some(issued.handle.clone()))).await.unwrap();
    for (i, c) in open.iter_mut().enumerate() {
        let r = redis::cmd("GET").arg("cache:a").query_async::<Option<String>>(c).await;
        assert!(r.is_err(), "node {i}: a connection authenticated as the revoked user still answers");
    }
    for r in pair.nodes() {
        let e = connect(r, &username(&issued), &password(&issued)).await.unwrap_err();
        assert_eq!(code(&e), "WRONGPASS", "{e}");
        assert!(pair.users(r).await.is_empty());
        // The deletion is in the ACL file: a restart does not bring it back.
        assert!(!r.acl_file().contains(&username(&issued)), "ACL SAVE missing");
    }
}

/// A revoke whose `ACL SAVE` failed after `ACL DELUSER` went through is
/// retried; the retry finds the user gone from memory but still in the ACL
/// file, and must save it, or a restart of the node brings the user back.
#[tokio::test]
async fn a_retried_revoke_saves_what_a_failed_acl_save_left_in_the_file() {
    let mut pair = Pair::start();
    let p = pair.plugin();
    let id = lease_id();
    let issued = issue(&p, &id, &["cache.read"]).await.unwrap();
    let user = username(&issued);
    assert!(pair.b.acl_file().contains(&user));
    // Node b cannot save: a non-empty directory holds its ACL file's name,
    // so the rename that ends `ACL SAVE` fails (for root too).
    let file = pair.b.dir().join("users.acl");
    let aside = pair.b.dir().join("users.acl.aside");
    std::fs::rename(&file, &aside).unwrap();
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("in-the-way"), "").unwrap();
    let e = p.revoke(&lease(&id, Some(issued.handle.clone()))).await.unwrap_err();
    assert!(matches!(&e, PluginError::Retryable(m) if m.contains("done on 1 of 2 nodes")), "{e:?}");
    assert!(pair.users(&pair.b).await.is_empty(), "the user was deleted from memory before the save failed");
    std::fs::remove_dir_all(&file).unwrap();
    std::fs::rename(&aside, &file).unwrap();
    assert!(pair.b.acl_file().contains(&user), "the failed save left the user in the file");

    p.revoke(&lease(&id, Some(issued.handle.clone()))).await.unwrap();
    assert!(!pair.b.acl_file().contains(&user), "the retry did not save the ACL file");
    pair.b.stop();
    pair.b.restart().unwrap();
    assert!(pair.users(&pair.b).await.is_empty(), "a restart brought the revoked user back");
}

/// A node that keeps no ACL file: with `acl_save = "auto"` (the default)
/// the plugin asks it (`CONFIG GET aclfile`) and saves nothing, so issue and
/// revoke work there; with `"always"` it saves anyway and the node's refusal
/// fails the issue, which deletes the user again.
#[tokio::test]
async fn a_node_without_an_acl_file_is_saved_only_when_told_to() {
    let r = TempRedis::start_without_acl_file("adm0123456789abcdef").unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{}", r.admin_password()).unwrap();
    let conn = |save: &str| json!({"nodes": [r.url()], "password_file": file.path(), "timeout": "1s", "acl_save": save});
    let p = RedisPlugin::new(ctx(), conn("auto"), roles()).unwrap();
    let id = lease_id();
    let issued = issue(&p, &id, &["cache.read"]).await.unwrap();
    let mut c = connect(&r, &username(&issued), &password(&issued)).await.unwrap();
    let _: Option<String> = redis::cmd("GET").arg("cache:a").query_async(&mut c).await.unwrap();
    p.revoke(&lease(&id, Some(issued.handle.clone()))).await.unwrap();
    let e = connect(&r, &username(&issued), &password(&issued)).await.unwrap_err();
    assert_eq!(code(&e), "WRONGPASS", "{e}");

    let p = RedisPlugin::new(ctx(), conn("always"), roles()).unwrap();
    let e = issue(&p, &lease_id(), &["cache.read"]).await.unwrap_err();
    assert!(e.to_string().contains("ACL file"), "the node's refusal of ACL SAVE: {e:?}");
    let mut admin = connect(&r, "default", r.admin_password()).await.unwrap();
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut admin).await.unwrap();
    assert_eq!(users, ["default"], "the failed issue deleted its user again");
}

/// Reads lines from a raw MONITOR connection until `stop` is seen.
fn monitor(port: u16, password: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "AUTH default {password}\r\nMONITOR\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[tokio::test]
async fn the_password_never_reaches_monitor_the_slowlog_or_the_acl_file() {
    let pair = Pair::start();
    let p = pair.plugin();
    let mut admin = connect(&pair.a, "default", &pair.password).await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg("0").query_async(&mut admin).await.unwrap();
    let mon = monitor(pair.a.port(), &pair.password);
    let mut lines = BufReader::new(mon.try_clone().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap(); // +OK (AUTH)
    first.clear();
    lines.read_line(&mut first).unwrap(); // +OK (MONITOR)

    let id = lease_id();
    let issued = issue(&p, &id, &["cache.read"]).await.unwrap();
    let pw = password(&issued);
    let _: () = redis::cmd("ECHO").arg("end-of-test").query_async(&mut admin).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("end-of-test") {
        let mut l = String::new();
        if lines.read_line(&mut l).unwrap() == 0 {
            break;
        }
        seen.push_str(&l);
    }
    assert!(seen.contains("end-of-test"), "MONITOR saw nothing: {seen}");
    assert!(!seen.contains(&pw), "MONITOR shows the password");
    let slow: redis::Value = redis::cmd("SLOWLOG").arg("GET").arg(128).query_async(&mut admin).await.unwrap();
    let slow = format!("{slow:?}");
    assert!(slow.to_ascii_lowercase().contains("setuser"), "the slowlog has no SETUSER to check: {slow}");
    assert!(!slow.contains(&pw), "the slowlog shows the password");
    let list: Vec<String> = redis::cmd("ACL").arg("LIST").query_async(&mut admin).await.unwrap();
    assert!(!list.join("\n").contains(&pw));
    assert!(list.iter().any(|l| l.contains(&username(&issued)) && l.contains('#')), "{list:?}");
    assert!(!pair.a.acl_file().contains(&pw) && pair.a.acl_file().contains(&username(&issued)));
    let debug = format!("{p:?} {issued:?}");
    assert!(!debug.contains(&pw) && !debug.contains(&pair.password));
    p.revoke(&lease(&id, None)).await.unwrap();
}
