//! Redis ACL users through the whole daemon, against two real throwaway
//! `redis-server` processes (the every-node rule): exactly the granted keys,
//! disconnected at revoke, a node down keeps the lease `revoke_failed` until
//! it is back, and never an orphaned user (`kill -9` mid-burst).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use lessor_redis::testkit::TempRedis;
use serde_json::{json, Value};

use crate::support::{Daemon, Issuer, Opts};

pub const REDIS_POLICY: &str = r#"
@id("test-redis-app")
@reason("acme's main branch may use the cache")
permit(principal, action in [Lessor::Action::"issue", Lessor::Action::"renew"], resource == Lessor::Role::"cache/app")
when { principal has repository_owner && principal.repository_owner == "acme" };
"#;

/// Two nodes with the same admin password.
pub struct Nodes {
    pub a: TempRedis,
    pub b: TempRedis,
    pub password: String,
}

pub async fn start_nodes() -> Nodes {
    let a = TempRedis::start().unwrap_or_else(|e| panic!("{e}"));
    let password = a.admin_password().to_owned();
    let b = TempRedis::start_with_password(&password).unwrap_or_else(|e| panic!("{e}"));
    Nodes { a, b, password }
}

impl Nodes {
    /// Every lessor user on either node, as the lease id its name ends with.
    pub async fn lease_ids(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for r in [&self.a, &self.b] {
            let mut c = connect(r, "default", &self.password).await.unwrap();
            let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut c).await.unwrap();
            out.extend(users.into_iter().filter(|u| u.starts_with("lessor_")).map(|u| format!("lse_{}", &u[u.len() - 32..])));
        }
        out
    }

    /// The same, per node: `(on a, on b)`.
    pub async fn per_node(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut sets = Vec::new();
        for r in [&self.a, &self.b] {
            let mut c = connect(r, "default", &self.password).await.unwrap();
            let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut c).await.unwrap();
            sets.push(users.into_iter().filter(|u| u.starts_with("lessor_")).collect::<BTreeSet<_>>());
        }
        let b = sets.pop().unwrap_or_default();
        (sets.pop().unwrap_or_default(), b)
    }
}

/// Config for connection `cache` with role `cache/app` on both nodes.
pub fn redis_toml(n: &Nodes, dir: &Path) -> String {
    let pw = dir.join("redis.password");
    std::fs::write(&pw, &n.password).unwrap();
    format!(
        r#"
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0

[scopes."cache.read"]
allows = "Read keys under cache:."
[scopes."cache.write"]
allows = "Write keys under cache:."

[connections.cache]
plugin = "redis"
environment = "staging"
[connections.cache.config]
nodes = ["{}", "{}"]
password_file = "{}"
timeout = "1s"
[connections.cache.roles.app]
max_ttl = "1h"
default_ttl = "10m"
scopes = ["cache.read", "cache.write"]
default_scopes = ["cache.read"]
[connections.cache.roles.app.config.scopes]
"cache.read" = "~cache:* +@read +@connection"
"cache.write" = ["~cache:*", "+@write"]
"#,
        n.a.url(),
        n.b.url(),
        pw.display()
    )
}

pub async fn connect(r: &TempRedis, user: &str, password: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(r.url().as_str())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("AUTH").arg(user).arg(password).query_async(&mut c).await?;
    Ok(c)
}

async fn leases_in(d: &Daemon, state: &str) -> BTreeSet<String> {
    let (s, v) = d.get(&format!("/v1/admin/leases?state={state}&limit=10000"), &d.admin).await;
    assert_eq!(s, 200, "{v}");
    v["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap().to_owned()).collect()
}

async fn redis_daemon(iss: &Issuer, n: &Nodes, leases_toml: &str) -> (Daemon, tempfile::TempDir) {
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: redis_toml(n, aux.path()),
        leases_toml: leases_toml.into(),
        policy: REDIS_POLICY.into(),
        ..Default::default()
    })
    .await;
    (d, aux)
}

#[tokio::test]
async fn an_issued_redis_user_reads_its_keys_only_and_is_cut_off_at_revoke() {
    let iss = Issuer::start().await;
    let n = start_nodes().await;
    let (d, _aux) = redis_daemon(&iss, &n, "").await;
    let mut admin = connect(&n.a, "default", &n.password).await.unwrap();
    let _: () = redis::cmd("SET").arg("cache:greeting").arg("hello").query_async(&mut admin).await.unwrap();
    let _: () = redis::cmd("SET").arg("billing:card").arg("4111").query_async(&mut admin).await.unwrap();

    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "cache/app", "ttl": "10m", "scopes": ["cache.read"]})).await;
    assert_eq!(s, 201, "{v}");
    let user = v["credential"]["username"].as_str().unwrap().to_owned();
    let pw = v["credential"]["password"].as_str().unwrap().to_owned();
    assert!(v["credential"]["url"].as_str().unwrap().starts_with("redis://lessor_"), "{v}");
    let mut c = connect(&n.a, &user, &pw).await.expect("the issued user logs in");
    let got: String = redis::cmd("GET").arg("cache:greeting").query_async(&mut c).await.unwrap();
    assert_eq!(got, "hello");
    let e = redis::cmd("GET").arg("billing:card").query_async::<Option<String>>(&mut c).await.unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    let e = redis::cmd("SET").arg("cache:greeting").arg("x").query_async::<()>(&mut c).await.unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    let mut on_b = connect(&n.b, &user, &pw).await.expect("the user exists on every node");
    let _: Option<String> = redis::cmd("GET").arg("cache:greeting").query_async(&mut on_b).await.unwrap();

    let (s, r) = d.delete(&format!("/v1/leases/{}", v["lease_id"].as_str().unwrap()), &jwt).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "revoked");
    assert!(redis::cmd("PING").query_async::<String>(&mut c).await.is_err(), "the open connection on a was cut");
    assert!(redis::cmd("PING").query_async::<String>(&mut on_b).await.is_err(), "the open connection on b was cut");
    assert!(connect(&n.a, &user, &pw).await.is_err(), "no login after revoke");
    assert!(n.lease_ids().await.is_empty(), "user deleted on every node");
}

#[tokio::test]
async fn a_redis_node_down_keeps_the_lease_revoke_failed_until_it_is_back() {
    let iss = Issuer::start().await;
    let mut n = start_nodes().await;
    let (d, _aux) = redis_daemon(&iss, &n, "retry_max = \"1s\"\nbreaker_base = \"1s\"\nbreaker_max = \"1s\"").await;
    let jwt = iss.token();
    let mut ids = BTreeSet::new();
    // Long enough that no expiry starts before the node is down, even on a
    // loaded machine (checked).
    let issued = Instant::now();
    for _ in 0..2 {
        let (s, v) = d.issue(&jwt, json!({"role": "cache/app", "ttl": "5s"})).await;
        assert_eq!(s, 201, "{v}");
        ids.insert(v["lease_id"].as_str().unwrap().to_owned());
    }
    n.b.stop();
    assert!(issued.elapsed() < Duration::from_secs(4), "issuing took {:?}; the test needs the node down before expiry", issued.elapsed());
    let failed = Daemon::eventually(Duration::from_secs(25), || async {
        let f = leases_in(&d, "revoke_failed").await;
        (f.len() == 2).then_some(f)
    })
    .await
    .expect("revocations fail visibly while a node is down");
    assert_eq!(failed, ids);
    let first = ids.iter().next().unwrap();
    let (_, l) = d.get(&format!("/v1/leases/{first}"), &d.admin).await;
    let err = l["last_error"].as_str().unwrap();
    assert!(err.contains("done on 1 of 2 nodes") && err.contains(&format!("127.0.0.1:{}", n.b.port())), "{err}");
    assert!(!err.contains(&n.password));
    // The live node is clean already; nothing is marked ended meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(leases_in(&d, "expired").await.is_empty() && leases_in(&d, "revoked").await.is_empty());

    let (on_a, _) = {
        let mut c = connect(&n.a, "default", &n.password).await.unwrap();
        let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut c).await.unwrap();
        (users.into_iter().filter(|u| u.starts_with("lessor_")).collect::<Vec<_>>(), ())
    };
    assert!(on_a.is_empty(), "the live node is revoked already: {on_a:?}");
    // The down node keeps both users in its ACL file: they come back with it
    // (lessor's retries then delete them).
    let file = n.b.acl_file();
    assert_eq!(file.lines().filter(|l| l.starts_with("user lessor_")).count(), 2, "{file}");
    n.b.restart().unwrap();
    let done = Daemon::eventually(Duration::from_secs(20), || async {
        let e = leases_in(&d, "expired").await;
        (e.len() == 2).then_some(e)
    })
    .await;
    assert!(done.is_some(), "revoked once the node is back: {:?}", leases_in(&d, "revoke_failed").await);
    assert!(n.lease_ids().await.is_empty(), "users deleted on every node");
}

/// `kill -9` in the middle of a burst of Redis issues, then a restart:
/// every lessor user on every node belongs to an active lease, and every
/// active lease has its user on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_leaves_no_orphaned_redis_user() {
    let iss = Issuer::start().await;
    let n = start_nodes().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = crate::support::daemon::kill_9_mid_burst(&iss, dir, REDIS_POLICY, &redis_toml(&n, dir), "cache/app").await;
    let active = d.active_once_pending_are_cleaned().await;
    let (on_a, on_b) = n.per_node().await;
    assert_eq!(on_a, on_b, "every user exists on both nodes or on neither");
    assert_eq!(n.lease_ids().await, active, "every Redis user belongs to an active lease, and every active lease has one");
    d.stop();
}

/// `lessor dev --redis <URL>`: one flag adds a Redis role, and the user it
/// issues can read `cache:*` and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_redis_users_with_one_flag() {
    use crate::binary::{run, spawn_until, stop};
    let r = TempRedis::start().unwrap_or_else(|e| panic!("{e}"));
    let mut admin = connect(&r, "default", r.admin_password()).await.unwrap();
    let _: () = redis::cmd("SET").arg("cache:k").arg("v").query_async(&mut admin).await.unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev");
    let data_s = data.display().to_string();
    let url = format!("redis://default:{}@127.0.0.1:{}", r.admin_password(), r.port());
    let (child, addr) = spawn_until(
        &["dev", "--listen", "127.0.0.1:0", "--data-dir", &data_s, "--redis", &url],
        repo,
        &[],
        &tmp.path().join("dev.log"),
        "lessor dev is serving on ",
    );
    let (code, jwt, err) = run(&["dev", "token", "--data-dir", &data_s], repo, &[]);
    assert_eq!(code, 0, "{err}");
    let env = [("LESSOR_JWT", jwt.trim()), ("LESSOR_ADDR", addr.as_str())];
    let (code, out, err) = run(&["creds", "cache/readonly", "--ttl", "5m"], repo, &env);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let client = redis::Client::open(v["credential"]["url"].as_str().unwrap()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let got: String = redis::cmd("GET").arg("cache:k").query_async(&mut c).await.unwrap();
    assert_eq!(got, "v");
    let e = redis::cmd("SET").arg("cache:k").arg("w").query_async::<()>(&mut c).await.unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    let cfg = std::fs::read_to_string(data.join("lessor.toml")).unwrap();
    assert!(!cfg.contains(r.admin_password()), "the password is in a private file, not the config");
    stop(child);
}

/// The reconciler on two Redis nodes: a user made behind lessor's back in
/// lessor's shape (on one node only) and one whose lease row was deleted by
/// hand are found, left alone within the grace, then deleted on every node;
/// the live lease's user and users that only share the prefix stay.
#[tokio::test]
async fn redis_strays_are_deleted_on_every_node_after_the_grace() {
    use sqlx::Connection;
    let iss = Issuer::start().await;
    let n = start_nodes().await;
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: format!("{}\n[reconcile]\ninterval = \"0s\"\ngrace = \"2s\"\n", redis_toml(&n, aux.path())),
        policy: REDIS_POLICY.into(),
        ..Default::default()
    })
    .await;
    let issue = || async {
        let (s, v) = d.issue(&iss.token(), json!({"role": "cache/app", "ttl": "10m"})).await;
        assert_eq!(s, 201, "{v}");
        (v["lease_id"].as_str().unwrap().to_owned(), v["credential"]["username"].as_str().unwrap().to_owned())
    };
    let (kept, kept_user) = issue().await;
    let (deleted, deleted_user) = issue().await;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", d.dir.join("lessor.db").display())).await.unwrap();
    sqlx::query("DELETE FROM leases WHERE id = ?").bind(&deleted).execute(&mut db).await.unwrap();
    let sneaky = format!("lessor_app_sneaky_{}", hex::encode(rand::random::<[u8; 16]>()));
    let mut on_b = connect(&n.b, "default", &n.password).await.unwrap();
    let _: () = redis::cmd("ACL").arg(&[ "SETUSER", sneaky.as_str(), "on", ">pw", "allkeys", "+@read"][..]).query_async(&mut on_b).await.unwrap();
    for r in [&n.a, &n.b] {
        let mut c = connect(r, "default", &n.password).await.unwrap();
        let _: () = redis::cmd("ACL").arg(&["SETUSER", "lessor_admin", "on", ">pw"][..]).query_async(&mut c).await.unwrap();
    }
    let pass = || async {
        let (s, v) = d.post("/v1/admin/reconcile", &d.admin, json!({})).await;
        assert_eq!(s, 200, "{v}");
        v["connections"].as_array().unwrap().iter().find(|c| c["connection"] == "cache").cloned().unwrap_or_else(|| panic!("cache in {v}"))
    };

    let c = pass().await;
    assert_eq!((c["status"].as_str(), c["objects"].as_u64()), (Some("checked"), Some(3)), "kept, deleted, sneaky: {c}");
    let strays = c["strays"].as_array().unwrap();
    let objects: BTreeSet<&str> = strays.iter().map(|s| s["object"].as_str().unwrap()).collect();
    assert_eq!(objects, [deleted_user.as_str(), sneaky.as_str()].into_iter().collect(), "{c}");
    assert!(strays.iter().all(|s| s["outcome"] == "waiting" && s["reason"] == "no_lease"), "{c}");
    let (on_a, on_b_users) = n.per_node().await;
    assert!(on_a.contains(&deleted_user) && on_b_users.contains(&deleted_user) && on_b_users.contains(&sneaky), "untouched within the grace");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let c = pass().await;
    let strays = c["strays"].as_array().unwrap();
    assert_eq!(strays.len(), 2, "{c}");
    assert!(strays.iter().all(|s| s["outcome"] == "revoked"), "{c}");
    let (on_a, on_b_users) = n.per_node().await;
    let want: BTreeSet<String> = [kept_user.clone(), "lessor_admin".to_owned()].into_iter().collect();
    assert_eq!((on_a, on_b_users), (want.clone(), want), "strays deleted on every node; the live user and the prefix-only user stay");
    assert_eq!(d.lease_state(&kept).await, "active");
    let c = pass().await;
    assert_eq!((c["objects"].as_u64(), c["strays"].as_array().unwrap().len()), (Some(1), 0), "{c}");
}
