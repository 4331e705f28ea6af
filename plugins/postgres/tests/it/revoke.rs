//! Revocation: sessions, owned objects, unreachable servers, lease ids alone,
//! a dedicated (non-superuser) admin role, custom revocation.

use std::time::Duration;

use lessor_plugin::LeaseId;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn revoke_terminates_open_sessions_and_drops_the_role() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["orders.read"]).await;
    let mut held = login(&issued).await.unwrap();
    sqlx::query("SELECT * FROM orders").execute(&mut held).await.unwrap();

    p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
    assert!(sqlx::query("SELECT 1").execute(&mut held).await.is_err(), "the held session survived");
    assert!(!pg.role_exists(&username(&issued)));
}

#[tokio::test]
async fn owned_objects_are_reassigned_to_the_admin() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["work.create"]).await;
    let mut c = login(&issued).await.unwrap();
    sqlx::query("CREATE TABLE work.t (x int)").execute(&mut c).await.unwrap();

    p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
    assert_eq!(pg.psql("SELECT tableowner FROM pg_tables WHERE schemaname = 'work' AND tablename = 't'"), "postgres");
    assert!(!pg.role_exists(&username(&issued)));
}

#[tokio::test]
async fn owned_objects_fail_mode_refuses_and_keeps_the_role() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({"owned_objects": "fail"})).await;
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["work.create"]).await;
    let name = username(&issued);
    let mut c = login(&issued).await.unwrap();
    sqlx::query("CREATE TABLE work.t (x int)").execute(&mut c).await.unwrap();
    drop(c);

    let l = lease(&id, "orders", Some(&issued));
    let m = retryable(p.revoke(&l).await.unwrap_err());
    assert_eq!(
        m,
        format!("role `{name}` still owns 1 object(s) (e.g. table work.t); reassign or drop them, or set owned_objects = \"reassign\"")
    );
    assert!(pg.role_exists(&name));
    let e = login(&issued).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "the role no longer logs in: {e}");

    // Once the operator deals with it, the retry succeeds.
    pg.psql("DROP TABLE work.t");
    p.revoke(&l).await.unwrap();
    assert!(!pg.role_exists(&name));
}

#[tokio::test]
async fn revoke_is_retryable_while_the_server_is_down() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["orders.read"]).await;
    let l = lease(&id, "orders", Some(&issued));

    pg.pg.stop().unwrap();
    let started = std::time::Instant::now();
    let m = retryable(p.revoke(&l).await.unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by connect_timeout");
    let at = format!("cannot reach PostgreSQL at 127.0.0.1:{}/app: ", pg.pg.port());
    assert!(m.starts_with(&at), "{m}");
    assert!(m.to_lowercase().contains("refused"), "{m}");
    assert!(!m.contains(pg.pg.superuser_password()), "{m}");
    // Issuing is refused the same way.
    let m = retryable(p.issue(request(&lease_id(), "plain", &[], Duration::from_secs(60))).await.unwrap_err());
    assert!(m.starts_with(&at), "{m}");

    pg.pg.restart().unwrap();
    p.revoke(&l).await.unwrap();
    assert!(!pg.role_exists(&username(&issued)));
}

/// "Connection refused" answers at once: the pool would retry the connect
/// until `connect_timeout` (5 s here) before giving up.
#[tokio::test]
async fn a_refused_connection_fails_at_once_not_after_connect_timeout() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({"connect_timeout": "5s"})).await;
    let id = lease_id();
    pg.pg.stop().unwrap();
    // Nothing listens on the port now, and the pool has no connection yet.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let m = retryable(p.revoke(&lease(&id, "orders", None)).await.unwrap_err());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "took {took:?}: {m}");
        assert!(m.starts_with("cannot reach PostgreSQL at 127.0.0.1:"), "{m}");
        assert!(m.to_lowercase().contains("refused"), "{m}");
        assert!(!m.contains(pg.pg.superuser_password()), "{m}");
    }
    let started = std::time::Instant::now();
    let m = retryable(p.issue(request(&lease_id(), "plain", &[], Duration::from_secs(60))).await.unwrap_err());
    assert!(started.elapsed() < Duration::from_millis(500), "issue took {:?}: {m}", started.elapsed());

    // Back up: the same plugin connects and revokes.
    pg.pg.restart().unwrap();
    let issued = issue(p.as_ref(), &id, "orders", &["orders.read"]).await;
    p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
    assert!(!pg.role_exists(&username(&issued)));
}

#[tokio::test]
async fn revoke_by_lease_id_alone() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["orders.read"]).await;
    let other_id = lease_id();
    let other = issue(p.as_ref(), &other_id, "orders", &["orders.read"]).await;

    // No handle: found by the lease-id suffix.
    p.revoke(&lease(&id, "orders", None)).await.unwrap();
    assert!(!pg.role_exists(&username(&issued)));
    assert!(login(&issued).await.is_err());

    // A never-issued lease, and ids too short to name anything, are Ok.
    p.revoke(&lease(&lease_id(), "orders", None)).await.unwrap();
    p.revoke(&lease(&LeaseId::new("x"), "orders", None)).await.unwrap();
    // A role name of this lease is not confused with a longer hex.
    let mut l = lease(&LeaseId::new(&other_id.as_str()[..20]), "orders", None);
    p.revoke(&l).await.unwrap();
    // A handle naming another lease's role is not trusted.
    l.lease_id = lease_id();
    l.handle = Some(json!({"role": username(&other)}));
    p.revoke(&l).await.unwrap();
    assert!(pg.role_exists(&username(&other)));
    login(&other).await.unwrap();
    // Revoked through a role the config no longer has: still found.
    p.revoke(&lease(&other_id, "gone-role", None)).await.unwrap();
    assert!(!pg.role_exists(&username(&other)));
}

#[tokio::test]
async fn a_dedicated_createrole_admin_can_do_everything() {
    let mut pg = Pg::start();
    pg.psql(
        "CREATE ROLE lessor_admin LOGIN CREATEROLE PASSWORD 'adminpw'; \
         GRANT SELECT, INSERT ON orders TO lessor_admin WITH GRANT OPTION; \
         GRANT USAGE, CREATE ON SCHEMA work TO lessor_admin WITH GRANT OPTION;",
    );
    let dsn = pg.pg.dsn("lessor_admin", "adminpw", "app");
    let c = pg.connection(&dsn, json!({}));
    let p = build(c, roles()).await.unwrap();
    let v = p.validate().await.unwrap();
    assert_eq!(v.identity, "lessor_admin");
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);

    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["orders.read", "work.create"]).await;
    let mut held = login(&issued).await.unwrap();
    sqlx::query("SELECT * FROM orders").execute(&mut held).await.unwrap();
    sqlx::query("CREATE TABLE work.mine (x int)").execute(&mut held).await.unwrap();

    p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
    assert!(sqlx::query("SELECT 1").execute(&mut held).await.is_err(), "the held session survived");
    assert!(!pg.role_exists(&username(&issued)));
    assert_eq!(
        pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'mine'"),
        "lessor_admin"
    );
}

#[tokio::test]
async fn custom_revocation_replaces_the_default() {
    let mut pg = Pg::start();
    pg.psql("CREATE TABLE audit (expiry text)");
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let roles = vec![
        role(
            "audited",
            &[],
            json!({"revocation": ["INSERT INTO audit VALUES ({{expiry}})", "DROP OWNED BY {{name}}", "DROP ROLE {{name}}"]}),
        ),
        role("keeps", &[], json!({"revocation": ["SELECT 1"]})),
    ];
    let p = build(c, roles).await.unwrap();

    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "audited", &[]).await;
    p.revoke(&lease(&id, "audited", Some(&issued))).await.unwrap();
    assert!(!pg.role_exists(&username(&issued)));
    let recorded = pg.psql("SELECT extract(epoch FROM expiry::timestamptz)::numeric(20,6) FROM audit");
    let want = issued.expires_at.unix_timestamp_nanos() / 1000;
    assert_eq!(recorded.replace('.', ""), want.to_string(), "the lease expiry, to the microsecond");

    // Revocation that leaves the role behind is an error, never "revoked".
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "keeps", &[]).await;
    let m = permanent(p.revoke(&lease(&id, "keeps", Some(&issued))).await.unwrap_err());
    assert!(m.contains("left role") && m.contains("DROP ROLE {{name}}"), "{m}");
    assert_eq!(sqlstate(&login(&issued).await.unwrap_err()), "28000");
}
