//! The SDK's conformance kit, with a real login as the vendor's word.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::conformance::{run, Case, Probe};
use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::Handle;
use serde_json::{json, Map, Value};
use sqlx::{Connection, PgConnection};

use crate::support::{roles, secret, sqlstate, workload, Pg};

/// A credential works iff its DSN logs in and can run a query.
struct Login;

#[async_trait]
impl Probe for Login {
    async fn works(
        &self,
        _public: &Map<String, Value>,
        secret: &BTreeMap<String, SecretString>,
        _handle: &Handle,
    ) -> Result<bool, String> {
        let dsn = secret.get("dsn").ok_or("no `dsn` in the secret fields")?;
        match PgConnection::connect(dsn.expose_secret()).await {
            Ok(mut c) => {
                sqlx::query("SELECT 1").execute(&mut c).await.map_err(|e| e.to_string())?;
                Ok(true)
            }
            // 28P01: no such role / wrong password; 28000: NOLOGIN.
            Err(e) if matches!(sqlstate(&e).as_str(), "28P01" | "28000") => Ok(false),
            Err(e) => Err(format!("login failed unexpectedly: {e}")),
        }
    }
}

/// Runs the kit with the DSN from `dsn_file`, then with a managed root
/// credential installed by version.
#[tokio::test]
async fn postgres_conforms() {
    let mut pg = Pg::start();
    let from_file = pg.plugin(json!({})).await;
    let managed = pg.managed(roles()).await;
    managed.root_credentials().unwrap().install_root(1, secret(&pg.admin_dsn()), true).await.unwrap();
    for plugin in [from_file, managed] {
        let case = Case {
            role: "orders".into(),
            scopes: vec!["orders.read".into()],
            params: Map::new(),
            workload: workload(),
            ttl: Duration::from_secs(300),
        };
        let report = run(plugin.as_ref(), case, &Login).await.unwrap();
        for check in [
            "issued credential works",
            "renew extends the credential",
            "revoke takes the credential back",
            "revoke of an unknown lease is Ok",
            "revoke by lease id alone takes the credential back",
        ] {
            assert!(report.checks_passed.contains(&check), "{check}: {report:?}");
        }
        // Nothing of the kit's leases is left behind.
        assert_eq!(pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lessor\\_%'"), "0");
    }
}
