//! MySQL / MariaDB users through the whole daemon, against real throwaway
//! MariaDB and MySQL 8 servers: log in with exactly the granted scopes,
//! sessions ended on revoke, and never an orphaned user (client
//! disconnects, `kill -9` mid-burst then a restart, the server down at
//! expiry).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lessor_mysql::testkit::{Server, TempMysql};
use serde_json::{json, Value};

use crate::support::daemon::{kill_9_mid_burst, spawn_until, stop};
use crate::support::{Daemon, Issuer, Opts};

pub const MY_POLICY: &str = r#"
@id("test-my-app")
@reason("acme's main branch may use the app database")
permit(principal, action in [Lessor::Action::"issue", Lessor::Action::"renew"], resource == Lessor::Role::"my/app")
when { principal has repository_owner && principal.repository_owner == "acme" };
"#;

/// Config for a `my` connection with role `my/app` (scope orders.read ->
/// server role `orders_reader`; orders.write -> a grant template).
pub fn my_toml(db: &TempMysql, dir: &Path) -> String {
    let dsn_file = dir.join("my.dsn");
    std::fs::write(&dsn_file, db.admin_dsn()).unwrap();
    format!(
        r#"
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0

[connections.my]
plugin = "mysql"
environment = "staging"
[connections.my.config]
dsn_file = "{}"
pool_size = 8
[connections.my.roles.app]
max_ttl = "1h"
default_ttl = "10m"
scopes = ["orders.read", "orders.write"]
default_scopes = ["orders.read"]
[connections.my.roles.app.config]
database = "app"
[connections.my.roles.app.config.roles]
"orders.read" = ["orders_reader"]
[connections.my.roles.app.config.grants]
"orders.write" = ["GRANT INSERT ON app.orders TO {{{{name}}}}"]
"#,
        dsn_file.display()
    )
}

/// A server with database `app` and server role `orders_reader` (held by
/// `admin` WITH ADMIN OPTION).
pub fn start_server(server: Server) -> TempMysql {
    let db = TempMysql::start(server).unwrap_or_else(|e| panic!("{}: {e}", server.label()));
    db.sql_as("admin", db.admin_password(), "CREATE ROLE orders_reader; GRANT SELECT ON app.orders TO orders_reader").unwrap();
    db
}

/// A test run once against MariaDB and once against MySQL 8
/// (`each_server! { test(tokio::test) async fn name(server) { ... } }`): makes
/// `name::mariadb` and `name::mysql8`, each calling the body with its
/// [`Server`].
macro_rules! each_server {
    ($(#[doc = $doc:expr])* test($($test:tt)*) async fn $name:ident($server:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn case($server: Server) $body
            #[$($test)*]
            async fn mariadb() {
                case(Server::MariaDb).await
            }
            #[$($test)*]
            async fn mysql8() {
                case(Server::Mysql8).await
            }
        }
    };
}
pub(crate) use each_server;

/// The lease id a lessor user's name stands for (MySQL's base-62 digits,
/// or MariaDB's 32 hex digits at the end).
pub fn lease_of_user(u: &str) -> String {
    match lessor_mysql::mysql_lease_of("lessor", u) {
        Some(id) => id.to_string(),
        None => format!("lse_{}", &u[u.len() - 32..]),
    }
}

/// Every lessor user in mysql.user, as the lease id its name stands for.
fn my_lease_ids(db: &TempMysql) -> BTreeSet<String> {
    db.users_with_prefix("lessor_").unwrap().iter().map(|u| lease_of_user(u)).collect()
}

async fn leases_in(d: &Daemon, state: &str) -> BTreeSet<String> {
    let (s, v) = d.get(&format!("/v1/admin/leases?state={state}&limit=10000"), &d.admin).await;
    assert_eq!(s, 200, "{v}");
    v["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap().to_owned()).collect()
}

async fn my_daemon(iss: &Issuer, db: &TempMysql, leases_toml: &str) -> (Daemon, tempfile::TempDir) {
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: my_toml(db, aux.path()),
        leases_toml: leases_toml.into(),
        policy: MY_POLICY.into(),
        ..Default::default()
    })
    .await;
    (d, aux)
}

each_server! {
    test(tokio::test)
    async fn an_issued_user_can_select_and_nothing_else_and_is_gone_after_revoke(server) {
        let iss = Issuer::start().await;
        let db = start_server(server);
        let (d, _aux) = my_daemon(&iss, &db, "").await;
        let jwt = iss.token();
        let (s, v) = d.issue(&jwt, json!({"role": "my/app", "ttl": "10m", "scopes": ["orders.read"]})).await;
        assert_eq!(s, 201, "{v}");
        let user = v["credential"]["username"].as_str().unwrap().to_owned();
        let pw = v["credential"]["password"].as_str().unwrap().to_owned();
        match server {
            Server::MariaDb => assert!(user.starts_with("lessor_app_") && user.len() <= 80, "{user}"),
            Server::Mysql8 => assert_eq!(lease_of_user(&user), v["lease_id"].as_str().unwrap(), "{user}"),
        }
        assert!(v["credential"]["dsn"].as_str().unwrap().starts_with(&format!("mysql://{user}:")));
        assert_eq!(db.sql_as(&user, &pw, "SELECT COUNT(*) FROM app.orders").unwrap(), "1");
        for denied in ["INSERT INTO app.orders VALUES (2)", "SELECT * FROM app.invoices", "CREATE USER x@'%'"] {
            let e = db.sql_as(&user, &pw, denied).unwrap_err();
            assert!(e.contains("denied"), "{denied}: {e}");
        }
        // orders.write adds INSERT through its grant template.
        let (s, w) = d.issue(&jwt, json!({"role": "my/app", "scopes": ["orders.read", "orders.write"]})).await;
        assert_eq!(s, 201, "{w}");
        let (wu, wp) = (w["credential"]["username"].as_str().unwrap(), w["credential"]["password"].as_str().unwrap());
        db.sql_as(wu, wp, "INSERT INTO app.orders VALUES (2)").unwrap();

        let (s, r) = d.delete(&format!("/v1/leases/{}", v["lease_id"].as_str().unwrap()), &jwt).await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["state"], "revoked");
        assert!(db.sql_as(&user, &pw, "SELECT 1").is_err(), "no login after revoke");
        assert_eq!(my_lease_ids(&db), BTreeSet::from([w["lease_id"].as_str().unwrap().to_owned()]));
    }
}

each_server! {
    test(tokio::test)
    async fn clients_that_disconnect_mid_request_leave_no_user_without_a_lease(server) {
        let iss = Issuer::start().await;
        let db = start_server(server);
        let (d, _aux) = my_daemon(&iss, &db, "").await;
        let jwt = iss.token();
        // One issue first, not cut: the issuer's keys are fetched and the
        // vendor's usual time learnt before any request is given up on (on a
        // busy host every request of a round could otherwise be cut before
        // lessor had verified it, and the test would check nothing).
        let (s, v) = d.issue(&jwt, json!({"role": "my/app"})).await;
        assert_eq!(s, 201, "{v}");
        let (mut cut, mut ok) = (0, 0);
        for round in 0..10u64 {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..16u64 {
                let (http, url, jwt) = (d.http.clone(), d.url.clone(), jwt.clone());
                // The last of each round waits for its answer; the others
                // give up after 0..12 ms.
                let after = if i == 15 { Duration::from_secs(60) } else { Duration::from_micros((round * 16 + i) * 7919 % 12_000) };
                set.spawn(async move {
                    let req = http.post(format!("{url}/v1/leases")).bearer_auth(jwt).json(&json!({"role": "my/app"})).send();
                    tokio::time::timeout(after, req).await.is_ok()
                });
            }
            while let Some(r) = set.join_next().await {
                if r.unwrap() {
                    ok += 1
                } else {
                    cut += 1
                }
            }
        }
        assert!(cut > 20, "the test must cut requests mid-way (cut {cut}, completed {ok})");
        let settled = Daemon::eventually(Duration::from_secs(20), || async { leases_in(&d, "pending").await.is_empty().then_some(()) }).await;
        assert!(settled.is_some(), "pending leases remain: {:?}", leases_in(&d, "pending").await);
        let users = my_lease_ids(&db);
        assert!(users.len() > 10, "users were issued: {} (cut {cut}, completed {ok})", users.len());
        assert_eq!(users, leases_in(&d, "active").await, "every user belongs to an active lease and every active lease has its user");
    }
}

each_server! {
    test(tokio::test)
    async fn server_down_at_expiry_is_retried_and_nothing_is_marked_revoked_early(server) {
        let iss = Issuer::start().await;
        let mut db = start_server(server);
        let (d, _aux) = my_daemon(&iss, &db, "retry_max = \"1s\"\nbreaker_base = \"1s\"\nbreaker_max = \"1s\"").await;
        let jwt = iss.token();
        let mut ids = BTreeSet::new();
        for _ in 0..3 {
            let (s, v) = d.issue(&jwt, json!({"role": "my/app", "ttl": "2s"})).await;
            assert_eq!(s, 201, "{v}");
            ids.insert(v["lease_id"].as_str().unwrap().to_owned());
        }
        db.stop().unwrap();
        let failed = Daemon::eventually(Duration::from_secs(15), || async {
            let f = leases_in(&d, "revoke_failed").await;
            (f.len() == 3).then_some(f)
        })
        .await
        .expect("revocations fail visibly while the server is down");
        assert_eq!(failed, ids);
        let (_, l) = d.get(&format!("/v1/leases/{}", ids.iter().next().unwrap()), &d.admin).await;
        let err = l["last_error"].as_str().unwrap();
        assert!(err.contains("cannot reach MySQL/MariaDB at 127.0.0.1:"), "{err}");
        assert!(!err.contains(db.admin_password()));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(leases_in(&d, "expired").await.is_empty() && leases_in(&d, "revoked").await.is_empty());

        db.restart().unwrap();
        assert_eq!(my_lease_ids(&db), ids, "the users still exist after the outage");
        let done = Daemon::eventually(Duration::from_secs(20), || async {
            let e = leases_in(&d, "expired").await;
            (e.len() == 3).then_some(e)
        })
        .await;
        assert!(done.is_some(), "revoked once the server is back: {:?}", leases_in(&d, "revoke_failed").await);
        assert!(my_lease_ids(&db).is_empty(), "users dropped");
    }
}

each_server! {
    /// `kill -9` in the middle of a burst of MySQL issues, then a restart:
    /// every lessor user in `mysql.user` belongs to an active lease.
    test(tokio::test(flavor = "multi_thread", worker_threads = 2))
    async fn kill_9_mid_burst_leaves_no_orphaned_user(server) {
        let iss = Issuer::start().await;
        let db = start_server(server);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let d = kill_9_mid_burst(&iss, dir, MY_POLICY, &my_toml(&db, dir), "my/app").await;
        let active = d.active_once_pending_are_cleaned().await;
        assert_eq!(my_lease_ids(&db), active, "every user in mysql.user belongs to an active lease");
        d.stop();
    }
}

each_server! {
    /// `lessor dev --mysql <DSN>`: one flag adds a MySQL / MariaDB role whose
    /// login can read the DSN's database and nothing else.
    test(tokio::test(flavor = "multi_thread", worker_threads = 2))
    async fn dev_mode_serves_mysql_users_with_one_flag(server) {
        let db = start_server(server);
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("dev");
        let data_s = data.display().to_string();
        let dsn = db.dsn("admin", db.admin_password(), "app");
        let (child, addr) = spawn_until(
            &["dev", "--listen", "127.0.0.1:0", "--data-dir", &data_s, "--mysql", &dsn],
            repo,
            &[],
            &tmp.path().join("dev.log"),
            "lessor dev is serving on ",
        );
        let bin = env!("CARGO_BIN_EXE_lessor");
        let out = std::process::Command::new(bin).args(["dev", "token", "--data-dir", &data_s]).current_dir(repo).output().unwrap();
        assert!(out.status.success());
        let jwt = String::from_utf8(out.stdout).unwrap();
        let out = std::process::Command::new(bin)
            .args(["creds", "my/readonly", "--ttl", "5m"])
            .current_dir(repo)
            .env("LESSOR_JWT", jwt.trim())
            .env("LESSOR_ADDR", &addr)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (user, pw) = (v["credential"]["username"].as_str().unwrap(), v["credential"]["password"].as_str().unwrap());
        assert_eq!(db.sql_as(user, pw, "SELECT COUNT(*) FROM app.orders").unwrap(), "1");
        assert!(db.sql_as(user, pw, "INSERT INTO app.orders VALUES (9)").unwrap_err().contains("denied"));
        let cfg = std::fs::read_to_string(data.join("lessor.toml")).unwrap();
        assert!(!cfg.contains(db.admin_password()), "the DSN is in a private file, not in the config");
        stop(child);
    }
}
