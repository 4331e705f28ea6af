//! Managed root credentials: `validate_root`, `install_root`, `remove_root`,
//! `rotate_root`, and a managed connection with nothing installed.

use std::time::Duration;

use lessor_plugin::secrecy::ExposeSecret;
use lessor_plugin::{Plugin, RenewRequest, RoleSpec, RootSecretSpec};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;

use crate::support::*;

const NO_ROOT: &str =
    "connection `pg` has no active root credential: set one with `lessor connection set-secret pg`";

/// The standard roles plus `traced`, whose creation records the admin that
/// ran it as the role's `search_path` setting.
fn traced_roles() -> Vec<RoleSpec> {
    let mut r = roles();
    r.push(role(
        "traced",
        &[],
        json!({"creation": [
            "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}",
            "ALTER ROLE {{name}} SET search_path = {{admin}}",
        ]}),
    ));
    r
}

/// The admin that created a `traced` role.
fn created_by(pg: &Pg, name: &str) -> String {
    pg.psql(&format!(
        "SELECT array_to_string(s.setconfig, ',') FROM pg_db_role_setting s \
         JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = '{name}'"
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn managed_connection_without_a_root_says_how_to_set_one() {
    // No server: nothing may be attempted without a root credential.
    let p = build(Value::Null, roles()).await.unwrap();
    assert_eq!(
        p.root_credentials().map(|r| r.spec()),
        Some(RootSecretSpec {
            describes: "the admin DSN, postgres://user:password@host:port/database".into(),
            can_rotate: true,
        })
    );
    let id = lease_id();
    let issued_lease = lease(&id, "plain", None);
    let errors = [
        p.validate().await.unwrap_err(),
        p.issue(request(&id, "plain", &[], Duration::from_secs(60))).await.unwrap_err(),
        p.renew(RenewRequest {
            lease: issued_lease.clone(),
            expires_at: OffsetDateTime::now_utc() + Duration::from_secs(60),
        })
        .await
        .unwrap_err(),
        p.revoke(&issued_lease).await.unwrap_err(),
        p.root_credentials().unwrap().rotate_root().await.unwrap_err(),
    ];
    for e in errors {
        assert_eq!(retryable(e), NO_ROOT);
    }
    // Removing what is not there is fine.
    p.root_credentials().unwrap().remove_root(3).await.unwrap();
}

#[tokio::test]
async fn validate_root_checks_only_the_candidate_and_refuses_precisely() {
    let pg = Pg::start();
    let port = pg.pg.port();
    let good = pg.admin_role("lessor_admin", "admin-pw-1", "CREATEROLE");
    let plain = pg.admin_role("plain_admin", "plain-pw-1", "");
    let p = concrete(json!({"connect_timeout": "1s"}), roles()).unwrap();

    let v = p.root_credentials().unwrap().validate_root(&secret(&good)).await.unwrap();
    assert_eq!(v.identity, "lessor_admin");
    assert_eq!(v.details["database"], "app");
    assert_eq!(v.details["createrole"], "true");
    assert_eq!(v.details["host"], format!("127.0.0.1:{port}"));
    assert!(v.details["server_version"].starts_with(char::is_numeric), "{:?}", v.details);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    let v = p.root_credentials().unwrap().validate_root(&secret(&pg.admin_dsn())).await.unwrap();
    assert_eq!(v.identity, "postgres");
    assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);

    let wrong = pg.pg.dsn("lessor_admin", "Canary-wrong-pw", "app");
    let m = permanent(p.root_credentials().unwrap().validate_root(&secret(&wrong)).await.unwrap_err());
    assert_eq!(m, format!("password rejected for user `lessor_admin` at 127.0.0.1:{port}"));
    let m = permanent(p.root_credentials().unwrap().validate_root(&secret(&plain)).await.unwrap_err());
    assert_eq!(m, "role `plain_admin` lacks CREATEROLE (needed to create lease roles)");
    let missing_db = pg.pg.dsn("lessor_admin", "admin-pw-1", "nope");
    let m = permanent(p.root_credentials().unwrap().validate_root(&secret(&missing_db)).await.unwrap_err());
    assert_eq!(m, format!("database `nope` does not exist at 127.0.0.1:{port}"));
    let closed = free_port();
    let down = format!("postgres://lessor_admin:Canary-down@127.0.0.1:{closed}/app?sslmode=disable");
    let m = retryable(p.root_credentials().unwrap().validate_root(&secret(&down)).await.unwrap_err());
    assert!(m.starts_with(&format!("cannot reach PostgreSQL at 127.0.0.1:{closed}: ")), "{m}");
    assert!(!m.contains("Canary"), "{m}");
    let m = invalid(p.root_credentials().unwrap().validate_root(&secret("postgres://u:Canary-x@h/db?bogus=1")).await.unwrap_err());
    assert!(m.contains("unknown parameter `bogus`") && !m.contains("Canary"), "{m}");

    // A role's own database must admit the candidate too.
    let other_db = vec![role("elsewhere", &[], json!({"database": "other"}))];
    let p2 = pg.managed(other_db).await;
    let m = permanent(p2.root_credentials().unwrap().validate_root(&secret(&good)).await.unwrap_err());
    assert_eq!(m, format!("database `other` does not exist at 127.0.0.1:{port}"));

    // Validating switched nothing: there is still no root to issue with.
    let m = retryable(p.issue(request(&lease_id(), "plain", &[], Duration::from_secs(60))).await.unwrap_err());
    assert_eq!(m, NO_ROOT);
    assert_eq!(pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lessor\\_plain\\_%'"), "0");

    // Installed without validating, a wrong one fails every call precisely
    // and shows its password nowhere.
    p.root_credentials().unwrap().install_root(1, secret(&wrong), true).await.unwrap();
    let errors = [
        p.validate().await.unwrap_err(),
        p.issue(request(&lease_id(), "plain", &[], Duration::from_secs(60))).await.unwrap_err(),
        p.root_credentials().unwrap().rotate_root().await.unwrap_err(),
    ];
    for e in errors {
        let m = permanent(e);
        assert!(
            m.starts_with(&format!("authentication failed for user `lessor_admin` at 127.0.0.1:{port}/app: ")),
            "{m}"
        );
        assert!(!m.contains("Canary"), "{m}");
    }
    let debug = format!("{p:?}");
    assert!(!debug.contains("Canary") && debug.contains("version: Some(1)"), "{debug}");
    // The right one replaces it under the same version.
    p.root_credentials().unwrap().install_root(1, secret(&good), true).await.unwrap();
    assert_eq!(p.validate().await.unwrap().identity, "lessor_admin");
}

#[tokio::test]
async fn install_root_switches_issuance_and_old_leases_revoke_with_their_version() {
    let mut pg = Pg::start();
    let new_admin = pg.admin_role("lessor_admin", "admin-pw-2", "CREATEROLE");
    let p = pg.managed(traced_roles()).await;
    p.root_credentials().unwrap().install_root(1, secret(&pg.admin_dsn()), true).await.unwrap();
    p.root_credentials().unwrap().install_root(1, secret(&pg.admin_dsn()), true).await.unwrap(); // again: no-op

    // Under version 1 (the superuser): a lease whose role creates a table.
    let a = lease_id();
    let issued_a = issue(p.as_ref(), &a, "orders", &["work.create"]).await;
    assert_eq!(issued_a.root_version, Some(1));
    let mut c = login(&issued_a).await.unwrap();
    sqlx::query("CREATE TABLE work.made_by_a (id int)").execute(&mut c).await.unwrap();
    c.close().await.unwrap();
    let t = lease_id();
    let issued_t = issue(p.as_ref(), &t, "traced", &[]).await;
    assert!(created_by(&pg, &username(&issued_t)).contains("postgres"));

    // Version 2 (a CREATEROLE admin) becomes active: new issuance uses it.
    p.root_credentials().unwrap().install_root(2, secret(&new_admin), true).await.unwrap();
    let b = lease_id();
    let issued_b = issue(p.as_ref(), &b, "traced", &[]).await;
    assert_eq!(issued_b.root_version, Some(2));
    assert!(created_by(&pg, &username(&issued_b)).contains("lessor_admin"));
    login(&issued_b).await.unwrap();
    let v = p.validate().await.unwrap();
    assert_eq!((v.identity.as_str(), v.details["root_version"].as_str()), ("lessor_admin", "2"));

    // Lease A revokes with version 1: what its role owned goes to the admin
    // that revoked it, the superuser (version 2 would have taken it itself).
    p.revoke(&lease(&a, "orders", Some(&issued_a))).await.unwrap();
    assert!(!pg.role_exists(&username(&issued_a)));
    assert_eq!(pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_a'"), "postgres");
    p.revoke(&lease(&b, "traced", Some(&issued_b))).await.unwrap();
    assert!(!pg.role_exists(&username(&issued_b)));

    // The active version cannot be removed; a retiring one can, and its
    // leases then revoke with the active one.
    let m = invalid(p.root_credentials().unwrap().remove_root(2).await.unwrap_err());
    assert_eq!(m, "root credential version 2 of connection `pg` is the active one; activate another before removing it");
    p.root_credentials().unwrap().remove_root(1).await.unwrap();
    let t_lease = lease(&t, "traced", Some(&issued_t));
    assert_eq!(t_lease.root_version, Some(1));
    p.revoke(&t_lease).await.unwrap();
    assert!(!pg.role_exists(&username(&issued_t)));

    // Installed as not active, the active version stops being used.
    p.root_credentials().unwrap().install_root(2, secret(&new_admin), false).await.unwrap();
    let m = retryable(p.issue(request(&lease_id(), "plain", &[], Duration::from_secs(60))).await.unwrap_err());
    assert_eq!(m, NO_ROOT);

    // A DSN from `dsn_file` is an unversioned active root until a managed
    // version is activated.
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let p = build(c, traced_roles()).await.unwrap();
    let x = lease_id();
    let issued_x = issue(p.as_ref(), &x, "traced", &[]).await;
    assert_eq!(issued_x.root_version, None);
    assert!(created_by(&pg, &username(&issued_x)).contains("postgres"));
    p.root_credentials().unwrap().install_root(5, secret(&new_admin), true).await.unwrap();
    let y = lease_id();
    let issued_y = issue(p.as_ref(), &y, "traced", &[]).await;
    assert_eq!(issued_y.root_version, Some(5));
    assert!(created_by(&pg, &username(&issued_y)).contains("lessor_admin"));
    for (id, i) in [(&x, &issued_x), (&y, &issued_y)] {
        p.revoke(&lease(id, "traced", Some(i))).await.unwrap();
        assert!(!pg.role_exists(&username(i)));
    }
}

#[tokio::test]
async fn rotate_root_changes_the_admin_password_at_the_server() {
    let pg = Pg::start();
    let port = pg.pg.port();
    let old = pg.admin_role("lessor_admin", "first-admin-pw", "CREATEROLE");
    // The server logs every statement of the admin's sessions.
    pg.psql("ALTER ROLE lessor_admin SET log_statement = 'all'");
    let p = pg.managed(roles()).await;
    p.root_credentials().unwrap().install_root(1, secret(&old), true).await.unwrap();
    let before_id = lease_id();
    let before = issue(p.as_ref(), &before_id, "plain", &[]).await;
    assert_eq!(before.root_version, Some(1));

    let new = p.root_credentials().unwrap().rotate_root().await.unwrap();
    let url = url::Url::parse(new.expose_secret()).unwrap();
    let password = url.password().unwrap().to_owned();
    assert_eq!(password.len(), 43, "256 bits in base64url");
    assert_eq!(new.expose_secret(), pg.pg.dsn("lessor_admin", &password, "app"));

    // At the server: the old password is refused, the new one logs in.
    let e = PgConnection::connect(&old).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    let mut c = PgConnection::connect(new.expose_secret()).await.unwrap();
    let who: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut c).await.unwrap();
    assert_eq!(who, "lessor_admin");
    let v = p.root_credentials().unwrap().validate_root(&new).await.unwrap();
    assert_eq!((v.identity.as_str(), v.details["database"].as_str()), ("lessor_admin", "app"));
    let m = permanent(p.root_credentials().unwrap().validate_root(&secret(&old)).await.unwrap_err());
    assert_eq!(m, format!("password rejected for user `lessor_admin` at 127.0.0.1:{port}"));

    // Only the SCRAM verifier crossed the wire: the log has it, not the password.
    let log = std::fs::read_to_string(pg.pg.dir().join("server.log")).unwrap();
    assert!(log.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "statement not logged");
    assert!(!log.contains(&password));

    // A restarted daemon: version 1 installed as retiring can no longer log
    // in, so its lease revokes with the active version 2.
    let p = pg.managed(roles()).await;
    p.root_credentials().unwrap().install_root(1, secret(&old), false).await.unwrap();
    p.root_credentials().unwrap().install_root(2, new, true).await.unwrap();
    let after_id = lease_id();
    let after = issue(p.as_ref(), &after_id, "plain", &[]).await;
    assert_eq!(after.root_version, Some(2));
    login(&after).await.unwrap();
    let before_lease = lease(&before_id, "plain", Some(&before));
    assert_eq!(before_lease.root_version, Some(1));
    p.revoke(&before_lease).await.unwrap();
    assert!(!pg.role_exists(&username(&before)));
    p.revoke(&lease(&after_id, "plain", Some(&after))).await.unwrap();
    assert!(!pg.role_exists(&username(&after)));
}
