//! The reconciler against a real PostgreSQL server through the whole
//! daemon: roles made behind lessor's back (or whose lease row was deleted
//! or ended by hand) are found, revoked after the grace period, audited and
//! counted; a clean vendor reports nothing; an issue in flight (pending
//! lease) is never touched; a dropped role is reported missing, not
//! revoked; passes are one at a time across replicas; a stray's grace
//! survives a restart; scheduled passes run unasked and `lessor reconcile`
//! exits by the verdict. The same on MariaDB (Redis: `redis_users`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lessor::store::{Lease, LeaseState, Store};
use lessor_mysql::testkit::Server;
use lessor_plugin::LeaseId;
use lessor_postgres::testkit::TempPostgres;
use serde_json::{json, Value};
use sqlx::Connection;
use time::OffsetDateTime;

use crate::postgres::{pg_toml, start_pg, PG_POLICY};
use crate::support::{Daemon, Issuer, Opts};

/// A daemon whose PostgreSQL connection is `conn` (role `<conn>/app`), with
/// scheduled passes off and the given grace.
async fn daemon(iss: &Issuer, pg: &TempPostgres, conn: &str, grace: &str, store: Option<String>) -> (Daemon, tempfile::TempDir) {
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(opts(iss, pg, conn, grace, store, aux.path())).await;
    (d, aux)
}

fn opts(iss: &Issuer, pg: &TempPostgres, conn: &str, grace: &str, store: Option<String>, aux: &Path) -> Opts {
    let toml = pg_toml(pg, aux).replace("[connections.pg", &format!("[connections.{conn}"));
    Opts {
        issuer_url: iss.url.clone(),
        extra_toml: format!("{toml}\n[reconcile]\ninterval = \"0s\"\ngrace = \"{grace}\"\n"),
        policy: PG_POLICY.replace("\"pg/app\"", &format!("\"{conn}/app\"")),
        store,
        ..Default::default()
    }
}

async fn issue(d: &Daemon, iss: &Issuer, conn: &str) -> (String, String) {
    let (s, v) = d.issue(&iss.token(), json!({"role": format!("{conn}/app"), "ttl": "10m"})).await;
    assert_eq!(s, 201, "{v}");
    (v["lease_id"].as_str().unwrap().to_owned(), v["credential"]["username"].as_str().unwrap().to_owned())
}

async fn pass(d: &Daemon) -> Value {
    let (s, v) = d.post("/v1/admin/reconcile", &d.admin, json!({})).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn conn_report<'a>(v: &'a Value, conn: &str) -> &'a Value {
    v["connections"].as_array().unwrap().iter().find(|c| c["connection"] == conn).unwrap_or_else(|| panic!("{conn} in {v}"))
}

fn role_exists(pg: &TempPostgres, name: &str) -> bool {
    pg.psql("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'")).unwrap().trim() == "1"
}

async fn sqlite(d: &Daemon) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", d.dir.join("lessor.db").display())).await.unwrap()
}

fn strays_counted(conn: &str, outcome: &str) -> u64 {
    lessor::telemetry::metrics().reconcile_strays.with_label_values(&[conn, outcome]).get()
}

fn hex32() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn audit_entries(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn strays_are_revoked_after_the_grace_audited_and_counted() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let (d, _aux) = daemon(&iss, &pg, "rc1", "3s", None).await;
    let (kept, kept_role) = issue(&d, &iss, "rc1").await;
    // A lease row deleted by hand, and one ended by hand: their roles stay.
    let (deleted, deleted_role) = issue(&d, &iss, "rc1").await;
    let (ended, ended_role) = issue(&d, &iss, "rc1").await;
    let mut db = sqlite(&d).await;
    sqlx::query("DELETE FROM leases WHERE id = ?").bind(&deleted).execute(&mut db).await.unwrap();
    // A role made behind lessor's back in lessor's shape, and two that
    // only share the prefix (never lessor's to take).
    let sneaky = format!("lessor_app_sneaky_{}", hex32());
    pg.psql("postgres", &format!("CREATE ROLE {sneaky} LOGIN; CREATE ROLE lessor_not_a_lease; CREATE ROLE lessor_admin2 LOGIN")).unwrap();
    let revoked_before = strays_counted("rc1", "revoked");
    // Ended just now (right before the pass, so well within the grace).
    let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    sqlx::query("UPDATE leases SET state = 'revoked', end_reason = 'revoked', ended_at = ? WHERE id = ?")
        .bind(now_ms)
        .bind(&ended)
        .execute(&mut db)
        .await
        .unwrap();

    // First pass: found, all within the grace.
    let v = pass(&d).await;
    let c = conn_report(&v, "rc1");
    assert_eq!(c["status"], "checked", "{v}");
    assert_eq!(c["objects"], 4, "kept, deleted, ended, sneaky: {v}");
    let strays = c["strays"].as_array().unwrap();
    assert_eq!(strays.len(), 3, "{v}");
    assert!(strays.iter().all(|s| s["outcome"] == "waiting" && s["revoke_after"].is_string()), "{v}");
    let reason_of = |name: &str| strays.iter().find(|s| s["object"] == name).map(|s| s["reason"].clone());
    assert_eq!(reason_of(&deleted_role), Some(json!("no_lease")));
    assert_eq!(reason_of(&sneaky), Some(json!("no_lease")));
    assert_eq!(reason_of(&ended_role), Some(json!("lease_ended")));
    assert_eq!(v["clean"], false);
    for r in [&kept_role, &deleted_role, &ended_role, &sneaky] {
        assert!(role_exists(&pg, r), "{r} is untouched within the grace");
    }

    // After the grace (counted from before the first pass returned): revoked.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let v = pass(&d).await;
    let c = conn_report(&v, "rc1");
    let strays = c["strays"].as_array().unwrap();
    assert_eq!(strays.len(), 3, "{v}");
    assert!(strays.iter().all(|s| s["outcome"] == "revoked"), "{v}");
    for r in [&deleted_role, &ended_role, &sneaky] {
        assert!(!role_exists(&pg, r), "stray {r} dropped");
    }
    assert!(role_exists(&pg, &kept_role), "the live lease's role stays");
    assert!(role_exists(&pg, "lessor_not_a_lease") && role_exists(&pg, "lessor_admin2"), "prefix alone is not lessor's");
    assert_eq!(d.lease_state(&kept).await, "active");
    assert_eq!(strays_counted("rc1", "revoked") - revoked_before, 3);
    assert_eq!(strays_counted("rc1", "failed"), 0);

    // Audited: one entry per stray, with connection and object, no secret.
    let entries = Daemon::eventually(Duration::from_secs(5), || async {
        let es: Vec<Value> =
            audit_entries(&d.dir).into_iter().filter(|e| e["action"] == "reconcile.revoke").collect();
        (es.len() >= 3).then_some(es)
    })
    .await
    .expect("three reconcile.revoke entries");
    assert_eq!(entries.len(), 3);
    for e in &entries {
        assert_eq!(e["outcome"], "ok");
        assert_eq!(e["details"]["connection"], "rc1");
        assert_eq!(e["actor"]["kind"], "admin");
    }
    let objects: std::collections::BTreeSet<&str> = entries.iter().map(|e| e["details"]["object"].as_str().unwrap()).collect();
    assert_eq!(objects, [deleted_role.as_str(), ended_role.as_str(), sneaky.as_str()].into_iter().collect());
    let of_ended = entries.iter().find(|e| e["lease_id"] == ended.as_str()).unwrap();
    assert_eq!((of_ended["details"]["stray"].as_str(), of_ended["role"].as_str()), (Some("lease_ended"), Some("rc1/app")));
    let metrics = reqwest::get(format!("{}/metrics", d.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"lessor_reconcile_strays_total{connection="rc1",outcome="revoked"}"#), "{metrics}");

    // Next pass: nothing left.
    let v = pass(&d).await;
    let c = conn_report(&v, "rc1");
    assert_eq!((c["objects"].as_u64(), c["strays"].as_array().unwrap().len(), c["missing_count"].as_u64()), (Some(1), 0, Some(0)), "{v}");
    assert_eq!(v["clean"], true, "{v}");
    pg.psql("postgres", "DROP ROLE lessor_not_a_lease; DROP ROLE lessor_admin2").unwrap();
}

/// `lessor reconcile` as an operator runs it: the report as text (or
/// `--json`), exit 0 for a clean pass and 1 otherwise, and a clear refusal
/// without an admin token. (Awaited: the daemon serves on this test's
/// runtime.)
async fn reconcile_cli(d: &Daemon, args: &[&str], token: Option<&str>, cwd: &Path) -> (i32, String, String) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_lessor"));
    c.arg("reconcile").args(["--addr", &d.url]).args(args).current_dir(cwd).env("XDG_CONFIG_HOME", cwd);
    c.env_remove("LESSOR_ADMIN_TOKEN").env_remove("LESSOR_ADMIN_TOKEN_FILE").env_remove("LESSOR_JWT");
    if let Some(t) = token {
        c.env("LESSOR_ADMIN_TOKEN", t);
    }
    let o = c.output().await.unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// With `interval` set nobody has to ask: a scheduled pass finds a role
/// made behind lessor's back and (no grace here) revokes it, audited as
/// the reconciler; then `lessor reconcile` says clean (exit 0), and after a
/// live lease's role is dropped by hand, not clean with it missing (exit 1).
#[tokio::test]
async fn a_scheduled_pass_revokes_a_stray_unasked_and_lessor_reconcile_exits_by_the_verdict() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let aux = tempfile::tempdir().unwrap();
    let mut o = opts(&iss, &pg, "rc6", "0s", None, aux.path());
    o.extra_toml = o.extra_toml.replace("interval = \"0s\"", "interval = \"1s\"");
    let d = Daemon::start_with(o).await;
    let (kept, kept_role) = issue(&d, &iss, "rc6").await;
    let sneaky = format!("lessor_app_sneaky_{}", hex32());
    pg.psql("postgres", &format!("CREATE ROLE {sneaky} LOGIN")).unwrap();

    let gone = Daemon::eventually(Duration::from_secs(20), || async { (!role_exists(&pg, &sneaky)).then_some(()) }).await;
    assert!(gone.is_some(), "no scheduled pass revoked {sneaky} within 20 s (interval 1 s)");
    assert!(role_exists(&pg, &kept_role), "the live lease's role stays");
    assert_eq!(d.lease_state(&kept).await, "active");
    let entry = Daemon::eventually(Duration::from_secs(5), || async {
        audit_entries(&d.dir).into_iter().find(|e| e["action"] == "reconcile.revoke" && e["details"]["object"] == sneaky.as_str())
    })
    .await
    .expect("the scheduled revocation is audited");
    assert_eq!((entry["actor"]["kind"].as_str(), entry["actor"]["name"].as_str()), (Some("system"), Some("reconciler")), "{entry}");

    let cwd = tempfile::tempdir().unwrap();
    let (code, out, err) = reconcile_cli(&d, &[], Some(&d.admin), cwd.path()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": clean") && out.contains("rc6") && out.contains("1 objects, 0 strays, 0 missing"), "{out}");

    pg.psql("app", &format!("DROP OWNED BY {kept_role}; DROP ROLE {kept_role}")).unwrap();
    let (code, out, err) = reconcile_cli(&d, &[], Some(&d.admin), cwd.path()).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("NOT CLEAN") && out.contains("0 objects, 0 strays, 1 missing"), "{out}");
    let (code, out, _) = reconcile_cli(&d, &["--json"], Some(&d.admin), cwd.path()).await;
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["clean"].as_bool(), conn_report(&v, "rc6")["missing_count"].as_u64()), (Some(false), Some(1)), "{v}");

    let (code, out, err) = reconcile_cli(&d, &[], None, cwd.path()).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("reconcile needs an admin token"), "{err}");
}

#[tokio::test]
async fn a_clean_vendor_reports_nothing_and_an_issue_in_flight_is_never_touched() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let (d, _aux) = daemon(&iss, &pg, "rc2", "0s", None).await;
    let (_, role) = issue(&d, &iss, "rc2").await;
    let v = pass(&d).await;
    let c = conn_report(&v, "rc2");
    assert_eq!((c["status"].as_str(), c["objects"].as_u64()), (Some("checked"), Some(1)), "{v}");
    assert!(c["strays"].as_array().unwrap().is_empty() && c["missing_count"] == 0, "{v}");
    assert_eq!(v["clean"], true, "{v}");
    // Certificates and tokens are no objects at a vendor.
    assert_eq!(conn_report(&v, "pki")["status"], "unsupported");
    assert_eq!(conn_report(&v, "token")["status"], "unsupported");
    assert_eq!(lessor::telemetry::metrics().reconcile_missing.with_label_values(&["rc2"]).get(), 0);

    // Mid-issue: the lease row is pending and the plugin has just made its
    // role. Even with no grace at all, the reconciler leaves it alone.
    let hex = hex32();
    let now = OffsetDateTime::now_utc();
    let pending = Lease {
        id: LeaseId::new(format!("lse_{hex}")),
        role: "rc2/app".into(),
        plugin: "postgres".into(),
        issuer: iss.url.clone(),
        subject: "repo:acme/api:ref:refs/heads/main".into(),
        claims: json!({}),
        scopes: vec!["orders.read".into()],
        policies: vec!["test-pg-app".into()],
        state: LeaseState::Pending,
        issued_at: now,
        expires_at: now + time::Duration::minutes(10),
        max_expires_at: now + time::Duration::hours(1),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    };
    d.running().store.insert_pending(&pending).await.unwrap();
    let inflight = format!("lessor_app_inflight_{hex}");
    pg.psql("postgres", &format!("CREATE ROLE {inflight} LOGIN")).unwrap();
    let v = pass(&d).await;
    let c = conn_report(&v, "rc2");
    assert_eq!(c["objects"], 2, "{v}");
    assert!(c["strays"].as_array().unwrap().is_empty(), "a pending lease's role is no stray: {v}");
    assert!(role_exists(&pg, &inflight) && role_exists(&pg, &role));
    assert_eq!(d.lease_state(&pending.id.to_string()).await, "pending");
}

#[tokio::test]
async fn a_lease_whose_role_was_dropped_by_hand_is_reported_missing_not_revoked() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let (d, _aux) = daemon(&iss, &pg, "rc3", "0s", None).await;
    let (lost, lost_role) = issue(&d, &iss, "rc3").await;
    let (_, kept_role) = issue(&d, &iss, "rc3").await;
    // Its grants are in database `app`: drop those there, then the role.
    pg.psql("app", &format!("DROP OWNED BY {lost_role}; DROP ROLE {lost_role}")).unwrap();
    let v = pass(&d).await;
    let c = conn_report(&v, "rc3");
    assert_eq!((c["objects"].as_u64(), c["missing_count"].as_u64()), (Some(1), Some(1)), "{v}");
    assert_eq!(c["missing"], json!([lost]), "{v}");
    assert!(c["strays"].as_array().unwrap().is_empty());
    assert_eq!(v["clean"], false);
    assert_eq!(d.lease_state(&lost).await, "active", "reported, not revoked");
    assert!(role_exists(&pg, &kept_role));
    let metrics = reqwest::get(format!("{}/metrics", d.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lessor_reconcile_missing{connection=\"rc3\"} 1"), "{metrics}");
    let text = lessor::cli::render_reconcile(&v);
    assert!(text.contains(&format!("missing: lease {lost} has no vendor object")) && text.contains("NOT CLEAN"), "{text}");
}

#[tokio::test]
async fn passes_are_one_at_a_time_across_replicas_on_a_postgres_store() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    pg.psql("postgres", "CREATE DATABASE lessor").unwrap();
    let dsn = pg.dsn("postgres", pg.superuser_password(), "lessor");
    let (d, _aux) = daemon(&iss, &pg, "rc4", "0s", Some(dsn.clone())).await;
    let other: Arc<dyn Store> = Arc::new(lessor::store::postgres::PgStore::open(&dsn).await.unwrap());
    // Another replica's pass holds the lock: this one is refused, at once.
    let held = other.try_lock("reconcile").await.unwrap().expect("the lock is free");
    assert!(other.try_lock("reconcile").await.unwrap().is_none(), "never held twice");
    let (s, v) = d.post("/v1/admin/reconcile", &d.admin, json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")), "{v}");
    held.release().await;
    let v = pass(&d).await;
    assert_eq!(conn_report(&v, "rc4")["status"], "checked", "{v}");
    // Released after the pass: the other replica may take it again.
    other.try_lock("reconcile").await.unwrap().expect("released after the pass").release().await;
    // SQLite: one process owns the store; the lock is always its own.
    let dir = tempfile::tempdir().unwrap();
    let lite = lessor::store::open(&format!("sqlite://{}", dir.path().join("l.db").display())).await.unwrap();
    let a = lite.try_lock("reconcile").await.unwrap();
    assert!(a.is_some());
}

/// A stray without a lease row waits out its grace once: the time a pass
/// first saw it is kept in the store, so a restart neither starts the grace
/// over nor forgets it; revoked or gone, it is forgotten.
#[tokio::test]
async fn a_strays_grace_is_counted_once_across_a_restart() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let aux = tempfile::tempdir().unwrap();
    let o = opts(&iss, &pg, "rc5", "4s", None, aux.path());
    let mut d = Daemon::start_with(o.clone()).await;
    let (deleted, deleted_role) = issue(&d, &iss, "rc5").await;
    sqlx::query("DELETE FROM leases WHERE id = ?").bind(&deleted).execute(&mut sqlite(&d).await).await.unwrap();
    let sneaky = format!("lessor_app_sneaky_{}", hex32());
    let vanishing = format!("lessor_app_vanishing_{}", hex32());
    pg.psql("postgres", &format!("CREATE ROLE {sneaky} LOGIN; CREATE ROLE {vanishing} LOGIN")).unwrap();

    let t0 = std::time::Instant::now();
    let v = pass(&d).await;
    let strays = conn_report(&v, "rc5")["strays"].as_array().unwrap().clone();
    assert_eq!(strays.len(), 3, "{v}");
    assert!(strays.iter().all(|s| s["outcome"] == "waiting" && s["reason"] == "no_lease"), "{v}");
    let after_of = |strays: &[Value], name: &str| strays.iter().find(|s| s["object"] == name).map(|s| s["revoke_after"].clone());
    let (due_deleted, due_sneaky) = (after_of(&strays, &deleted_role).unwrap(), after_of(&strays, &sneaky).unwrap());
    let recorded = |d: &Daemon| {
        let store = d.running().store.clone();
        async move { store.stray_objects("rc5", 100).await.unwrap() }
    };
    let mut all = vec![deleted_role.clone(), sneaky.clone(), vanishing.clone()];
    all.sort();
    assert_eq!(recorded(&d).await, all);

    // Restarted half-way through the grace; meanwhile one stray was
    // dropped by hand.
    d.stop().await;
    pg.psql("postgres", &format!("DROP ROLE {vanishing}")).unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let d = Daemon::start_in(&d.dir, &o).await;
    let v = pass(&d).await;
    let strays = conn_report(&v, "rc5")["strays"].as_array().unwrap().clone();
    assert_eq!(strays.len(), 2, "{v}");
    assert!(strays.iter().all(|s| s["outcome"] == "waiting"), "{v}");
    assert_eq!(after_of(&strays, &deleted_role), Some(due_deleted), "the same deadline, not a new grace: {v}");
    assert_eq!(after_of(&strays, &sneaky), Some(due_sneaky), "{v}");
    let mut left = vec![deleted_role.clone(), sneaky.clone()];
    left.sort();
    assert_eq!(recorded(&d).await, left, "the vanished one is forgotten");

    // The original grace (4s from the first pass), well short of a new one
    // (4s from the second): revoked.
    tokio::time::sleep(Duration::from_millis(4100).saturating_sub(t0.elapsed())).await;
    let v = pass(&d).await;
    let strays = conn_report(&v, "rc5")["strays"].as_array().unwrap().clone();
    assert_eq!(strays.len(), 2, "{v}");
    assert!(strays.iter().all(|s| s["outcome"] == "revoked"), "{v}");
    assert!(!role_exists(&pg, &sneaky) && !role_exists(&pg, &deleted_role));
    assert!(recorded(&d).await.is_empty(), "revoked ones are forgotten");
    let v = pass(&d).await;
    assert_eq!(v["clean"], true, "{v}");
}

crate::mysql::each_server! {
    /// MariaDB and MySQL 8 through the whole daemon: a clean server reports no stray; a
    /// user made behind lessor's back in its shape, and one whose lease row was
    /// deleted by hand, are found, left alone within the grace, then dropped
    /// (gone from `mysql.user`), audited and counted; a user that only shares
    /// the prefix is never touched.
    test(tokio::test)
    async fn mysql_strays_are_revoked_after_the_grace_and_a_clean_server_has_none(server) {
        let iss = Issuer::start().await;
        let db = crate::mysql::start_server(server);
        // Each server its own connection name: the strays counter is per
        // process.
        let rmy = match server {
            Server::MariaDb => "rmy",
            Server::Mysql8 => "rmy8",
        };
        let aux = tempfile::tempdir().unwrap();
        let toml = crate::mysql::my_toml(&db, aux.path()).replace("[connections.my", &format!("[connections.{rmy}"));
        let d = Daemon::start_with(Opts {
            issuer_url: iss.url.clone(),
            extra_toml: format!("{toml}\n[reconcile]\ninterval = \"0s\"\ngrace = \"3s\"\n"),
            policy: crate::mysql::MY_POLICY.replace("\"my/app\"", &format!("\"{rmy}/app\"")),
            ..Default::default()
        })
        .await;
        let users = || db.users_with_prefix("lessor_").unwrap();

        // Clean: one live lease, its user, nothing stray.
        let (kept, kept_user) = issue(&d, &iss, rmy).await;
        let v = pass(&d).await;
        let c = conn_report(&v, rmy);
        assert_eq!((c["status"].as_str(), c["objects"].as_u64()), (Some("checked"), Some(1)), "{v}");
        assert!(c["strays"].as_array().unwrap().is_empty() && c["missing_count"] == 0, "{v}");
        assert_eq!(v["clean"], true, "{v}");

        // A lease row deleted by hand, a user made by hand in lessor's shape,
        // and one that only shares the prefix.
        let (deleted, deleted_user) = issue(&d, &iss, rmy).await;
        sqlx::query("DELETE FROM leases WHERE id = ?").bind(&deleted).execute(&mut sqlite(&d).await).await.unwrap();
        let sneaky = match server {
            Server::MariaDb => format!("lessor_app_sneaky_{}", hex32()),
            Server::Mysql8 => lessor_mysql::mysql_user("lessor", &hex32()),
        };
        db.sql(&format!("CREATE USER '{sneaky}'@'%' IDENTIFIED BY 'behind-the-back'; CREATE USER 'lessor_admin2'@'%'")).unwrap();
        let revoked_before = strays_counted(rmy, "revoked");

        let v = pass(&d).await;
        let c = conn_report(&v, rmy);
        assert_eq!(c["objects"], 3, "kept, deleted, sneaky: {v}");
        let strays = c["strays"].as_array().unwrap();
        assert_eq!(strays.len(), 2, "{v}");
        assert!(strays.iter().all(|s| s["outcome"] == "waiting" && s["reason"] == "no_lease"), "{v}");
        let names: std::collections::BTreeSet<&str> = strays.iter().map(|s| s["object"].as_str().unwrap()).collect();
        assert_eq!(names, [deleted_user.as_str(), sneaky.as_str()].into_iter().collect(), "{v}");
        for u in [&kept_user, &deleted_user, &sneaky] {
            assert!(users().contains(u), "{u} is untouched within the grace");
        }

        tokio::time::sleep(Duration::from_millis(3100)).await;
        let v = pass(&d).await;
        let c = conn_report(&v, rmy);
        let strays = c["strays"].as_array().unwrap();
        assert_eq!(strays.len(), 2, "{v}");
        assert!(strays.iter().all(|s| s["outcome"] == "revoked"), "{v}");
        let left = users();
        assert!(!left.contains(&deleted_user) && !left.contains(&sneaky), "strays dropped from mysql.user: {left:?}");
        assert!(left.contains(&kept_user) && left.contains(&"lessor_admin2".to_string()), "{left:?}");
        assert_eq!(d.lease_state(&kept).await, "active");
        assert_eq!(strays_counted(rmy, "revoked") - revoked_before, 2);
        assert_eq!(strays_counted(rmy, "failed"), 0);
        let entries = Daemon::eventually(Duration::from_secs(5), || async {
            let es: Vec<Value> = audit_entries(&d.dir)
                .into_iter()
                .filter(|e| e["action"] == "reconcile.revoke" && e["details"]["connection"] == rmy)
                .collect();
            (es.len() >= 2).then_some(es)
        })
        .await
        .expect("two reconcile.revoke entries");
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e["outcome"] == "ok" && e["details"]["stray"] == "no_lease"), "{entries:?}");
        let audited: std::collections::BTreeSet<&str> = entries.iter().map(|e| e["details"]["object"].as_str().unwrap()).collect();
        assert_eq!(audited, names);
        let metrics = reqwest::get(format!("{}/metrics", d.url)).await.unwrap().text().await.unwrap();
        assert!(metrics.contains(&format!(r#"lessor_reconcile_strays_total{{connection="{rmy}",outcome="revoked"}} 2"#)), "{metrics}");

        let v = pass(&d).await;
        let c = conn_report(&v, rmy);
        assert_eq!((c["objects"].as_u64(), c["strays"].as_array().unwrap().len()), (Some(1), 0), "{v}");
        assert_eq!(v["clean"], true, "{v}");
    }
}
