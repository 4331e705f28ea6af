//! `validate`: who we are connected as, and precise refusals.

use lessor_plugin::PluginError;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn validate_reports_identity_and_warns_about_superusers() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let v = p.validate().await.unwrap();
    assert_eq!(v.identity, "postgres");
    assert_eq!(v.details["database"], "app");
    assert_eq!(v.details["host"], format!("127.0.0.1:{}", pg.pg.port()));
    assert!(!v.details["server_version"].is_empty());
    assert_eq!(
        v.warnings,
        vec!["connected as superuser `postgres`; a dedicated role with CREATEROLE is safer".to_string()]
    );
    assert_eq!(pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lessor%'"), "0");
}

#[tokio::test]
async fn validate_refuses_a_role_without_createrole() {
    let mut pg = Pg::start();
    pg.psql("CREATE ROLE plain_admin LOGIN PASSWORD 'plainpw'");
    let c = pg.connection(&pg.pg.dsn("plain_admin", "plainpw", "app"), json!({}));
    let p = build(c, roles()).await.unwrap();
    match p.validate().await.unwrap_err() {
        PluginError::Misconfigured(m) => {
            assert!(m.starts_with("role `plain_admin` lacks CREATEROLE"), "{m}");
            assert!(!m.contains("plainpw"));
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_password_and_missing_server_are_precise_and_hide_the_password() {
    let mut pg = Pg::start();
    let secret = "wrong-Pass%40word";
    let c = pg.connection(&pg.pg.dsn("postgres", secret, "app"), json!({}));
    let debug = format!("{:?}", concrete(c.clone(), roles()).unwrap());
    assert!(!debug.contains("wrong-Pass"), "{debug}");
    let p = build(c, roles()).await.unwrap();
    let port = pg.pg.port();
    let errors = [
        p.validate().await.unwrap_err(),
        p.issue(request(&lease_id(), "plain", &[], std::time::Duration::from_secs(60))).await.unwrap_err(),
        p.revoke(&lease(&lease_id(), "plain", None)).await.unwrap_err(),
    ];
    for e in errors {
        let m = permanent(e);
        assert!(
            m.starts_with(&format!("authentication failed for user `postgres` at 127.0.0.1:{port}/app: ")),
            "{m}"
        );
        assert!(!m.contains(secret) && !m.contains("wrong-Pass@word"), "{m}");
    }

    // Built while the server is down: building works, validate says why not.
    let good = pg.connection(&pg.admin_dsn(), json!({}));
    pg.pg.stop().unwrap();
    let p = build(good, roles()).await.unwrap();
    let m = retryable(p.validate().await.unwrap_err());
    assert!(m.starts_with(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}/app: ")), "{m}");
    assert!(!m.contains(pg.pg.superuser_password()), "{m}");
    pg.pg.restart().unwrap();
    assert_eq!(p.validate().await.unwrap().identity, "postgres");
}

#[tokio::test]
async fn config_errors_are_misconfigured_and_debug_hides_the_dsn() {
    let mut pg = Pg::start();
    let misconfigured = |e: PluginError| match e {
        PluginError::Misconfigured(m) => m,
        other => panic!("expected Misconfigured, got {other:?}"),
    };
    let c = pg.connection("mysql://u:topsecret@h/db", json!({}));
    let m = misconfigured(concrete(c, roles()).unwrap_err());
    assert!(m.contains("scheme `mysql`") && !m.contains("topsecret"), "{m}");
    let c = pg.connection("postgres://u:topsecret@h/db?passwd=topsecret", json!({}));
    let m = misconfigured(concrete(c, roles()).unwrap_err());
    assert!(m.contains("unknown parameter `passwd`") && !m.contains("topsecret"), "{m}");
    let c = pg.connection("postgres://u:topsecret@h/db?sslmode=sometimes", json!({}));
    let m = misconfigured(concrete(c, roles()).unwrap_err());
    assert!(!m.contains("topsecret"), "{m}");
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let bad_role = role("r", &["a.read"], json!({"grants": {"a.read": ["GRANT {{oops}}"]}}));
    let m = misconfigured(concrete(c, vec![bad_role]).unwrap_err());
    assert!(m.contains("role `pg/r`") && m.contains("unknown placeholder `{{oops}}`"), "{m}");

    let c = pg.connection(&pg.admin_dsn(), json!({"tls": "disable"}));
    let debug = format!("{:?}", concrete(c.clone(), roles()).unwrap());
    assert!(!debug.contains(pg.pg.superuser_password()), "{debug}");
    assert!(debug.contains("127.0.0.1"), "{debug}");
    let p = build(c, roles()).await.unwrap();
    let v = p.validate().await.unwrap();
    assert!(v.warnings.iter().any(|w| w.contains("TLS is disabled")), "{:?}", v.warnings);
}
