use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::PluginError;
use serde_json::json;
use std::time::Duration;

use crate::support::*;

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

each_server! {
    async fn validate_names_the_admin_and_the_server(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let v = p.validate().await.unwrap();
        assert_eq!(v.identity, "admin@%");
        let (flavor, version) = match server {
            lessor_mysql::testkit::Server::MariaDb => ("MariaDB", "MariaDB"),
            lessor_mysql::testkit::Server::Mysql8 => ("MySQL", "8.0."),
        };
        assert_eq!(v.details["flavor"], flavor);
        assert!(v.details["version"].contains(version), "{v:?}");
        assert!(v.warnings.is_empty(), "{v:?}");
    }
}

each_server! {
    async fn candidates_are_checked_precisely(server) {
        let db = Db::start(server);
        let p = build(json!({"connect_timeout": "2s"}), roles()).await;
        let v = p.root_credentials().unwrap().validate_root(&secret(&db.db.admin_dsn())).await.unwrap();
        assert_eq!(v.identity, "admin@%");

        let wrong = db.db.dsn("admin", "not-the-password", "");
        let e = p.root_credentials().unwrap().validate_root(&secret(&wrong)).await.unwrap_err();
        assert!(matches!(&e, PluginError::Permanent(m) if *m == format!("password rejected for user `admin` at 127.0.0.1:{}", db.db.port())), "{e:?}");
        assert!(!e.to_string().contains("not-the-password"));

        db.sql("CREATE USER weak@'%' IDENTIFIED BY 'weakpw'; GRANT SELECT ON *.* TO weak@'%'");
        let e = p.root_credentials().unwrap().validate_root(&secret(&db.db.dsn("weak", "weakpw", ""))).await.unwrap_err();
        assert!(matches!(&e, PluginError::Permanent(m) if m == "`weak@%` lacks CREATE USER (needed to create lease users)"), "{e:?}");
        db.sql("GRANT CREATE USER ON *.* TO weak@'%'");
        let e = p.root_credentials().unwrap().validate_root(&secret(&db.db.dsn("weak", "weakpw", ""))).await.unwrap_err();
        assert!(matches!(&e, PluginError::Permanent(m) if m.contains("lacks GRANT OPTION")), "{e:?}");
        db.sql("GRANT CREATE USER ON *.* TO weak@'%' WITH GRANT OPTION");
        let v = p.root_credentials().unwrap().validate_root(&secret(&db.db.dsn("weak", "weakpw", ""))).await.unwrap();
        assert!(v.warnings.iter().any(|w| w.contains("lacks PROCESS")), "{v:?}");

        let e = p.root_credentials().unwrap().validate_root(&secret(&db.db.dsn("admin", db.db.admin_password(), "nosuchdb"))).await.unwrap_err();
        assert!(matches!(&e, PluginError::Permanent(m) if m.contains("cannot use database")), "{e:?}");
    }
}

each_server! {
    async fn managed_root_issues_rotates_and_old_leases_still_revoke(server) {
        let db = Db::start(server);
        db.sql("CREATE USER lessor_admin@'%' IDENTIFIED BY 'first'; GRANT ALL ON *.* TO lessor_admin@'%' WITH GRANT OPTION");
        db.db
            .sql_as("admin", db.db.admin_password(), "GRANT orders_reader TO lessor_admin@'%' WITH ADMIN OPTION; GRANT invoices_reader TO lessor_admin@'%' WITH ADMIN OPTION")
            .unwrap();
        let p = build(json!({"connect_timeout": "2s", "user_prefix": "jit"}), roles()).await;
        let e = p.issue(request(&lease_id(), "plain", &[], Duration::from_secs(600))).await.unwrap_err();
        assert!(matches!(&e, PluginError::Retryable(m) if m.contains("has no active root credential")), "{e:?}");
        let v1 = db.db.dsn("lessor_admin", "first", "");
        p.root_credentials().unwrap().install_root(1, secret(&v1), true).await.unwrap();
        let id = lease_id();
        let issued = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
        assert_eq!(issued.root_version, Some(1));

        let v2 = p.root_credentials().unwrap().rotate_root().await.unwrap();
        assert!(v2.expose_secret().starts_with("mysql://lessor_admin:") && !v2.expose_secret().contains(":first@"));
        assert!(db.db.sql_as("lessor_admin", "first", "SELECT 1").is_err(), "the old password no longer works");
        p.root_credentials().unwrap().validate_root(&v2).await.unwrap();
        p.root_credentials().unwrap().install_root(2, v2, true).await.unwrap();
        p.root_credentials().unwrap().install_root(1, secret(&v1), false).await.unwrap();
        // The lease of version 1 is revoked (through the active root when v1 no
        // longer logs in: its pooled connection is still logged in here).
        p.revoke(&lessor_plugin::LeaseRef {
            lease_id: id,
            role: "orders".into(),
            handle: Some(issued.handle.clone()),
            expires_at: issued.expires_at,
            root_version: Some(1),
        })
        .await
        .unwrap();
        assert!(db.db.users_with_prefix("jit_").unwrap().is_empty());
        let e = p.root_credentials().unwrap().remove_root(2).await.unwrap_err();
        assert!(matches!(e, PluginError::InvalidRequest(_)));
        p.root_credentials().unwrap().remove_root(1).await.unwrap();
    }
}

each_server! {
    /// The least-privileged admin the README sets up (CREATE USER, PROCESS
    /// and the privilege to end sessions, SELECT on `mysql.user`, the server
    /// roles WITH ADMIN OPTION) validates without warnings and runs the
    /// whole lifecycle: issue, a working login (through its default role),
    /// revoke ending its session. On MariaDB such an admin may not set
    /// another account's default role: the account sets its own, and when
    /// its host pattern keeps lessor out, the issue fails saying so and
    /// leaves no account.
    async fn the_readmes_least_privileged_admin_is_enough(server) {
        let mut db = Db::start(server);
        let end_sessions = match server {
            lessor_mysql::testkit::Server::MariaDb => "CONNECTION ADMIN",
            lessor_mysql::testkit::Server::Mysql8 => "CONNECTION_ADMIN",
        };
        db.sql(&format!(
            "CREATE USER lessor_admin@'%' IDENTIFIED BY 'least-privileged'; \
             GRANT CREATE USER, PROCESS, {end_sessions} ON *.* TO lessor_admin@'%' WITH GRANT OPTION; \
             GRANT SELECT ON mysql.user TO lessor_admin@'%'"
        ));
        // By the account that made the role and holds it WITH ADMIN OPTION.
        db.db.sql_as("admin", db.db.admin_password(), "GRANT orders_reader TO lessor_admin@'%' WITH ADMIN OPTION").unwrap();
        let c = db.connection(&db.db.dsn("lessor_admin", "least-privileged", ""), json!({}));
        let p = build(c, roles()).await;
        let v = p.validate().await.unwrap();
        assert_eq!(v.identity, "lessor_admin@%");
        assert!(v.warnings.is_empty(), "{v:?}");
        let id = lease_id();
        let issued = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
        assert_eq!(db.login(&issued, "SELECT COUNT(*) FROM app.orders").unwrap(), "1");
        let user = username(&issued);
        let pw = issued.secret["password"].expose_secret().to_owned();
        // A session the workload keeps open, ended by the revocation.
        let mut open = <sqlx::MySqlConnection as sqlx::Connection>::connect(&db.db.dsn(&user, &pw, "app")).await.unwrap();
        p.revoke(&lessor_plugin::LeaseRef {
            lease_id: id,
            role: "orders".into(),
            handle: Some(issued.handle.clone()),
            expires_at: issued.expires_at,
            root_version: None,
        })
        .await
        .unwrap();
        let r: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&mut open).await;
        assert!(r.is_err(), "the open session ended");
        assert_eq!(db.lease_users(), vec!["lessor_admin".to_string()], "only the admin is left");

        let far = role("far", &["orders.read"], json!({"roles": {"orders.read": ["orders_reader"]}, "host": "10.9.9.%"}));
        let c = db.connection(&db.db.dsn("lessor_admin", "least-privileged", ""), json!({}));
        let p = build(c, vec![far]).await;
        let r = p.issue(request(&lease_id(), "far", &["orders.read"], Duration::from_secs(600))).await;
        match server {
            lessor_mysql::testkit::Server::MariaDb => {
                let e = r.unwrap_err();
                assert!(matches!(&e, PluginError::Permanent(m) if m.contains("host pattern must admit lessor")), "{e:?}");
                assert!(!format!("{e:?}").contains("least-privileged"));
                assert_eq!(db.lease_users(), vec!["lessor_admin".to_string()], "the half-made account is dropped");
            }
            // MySQL sets it for the admin with no more privileges.
            lessor_mysql::testkit::Server::Mysql8 => {
                r.unwrap();
            }
        }
    }
}
