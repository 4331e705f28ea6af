use std::collections::BTreeMap;

use async_trait::async_trait;
use lessor_mysql::testkit::TempMysql;
use lessor_plugin::conformance::{run, Case, Probe};
use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{Handle, Workload};
use serde_json::{Map, Value};

use crate::support::*;

/// Logs in with the issued user and password over TCP.
struct Login<'a>(&'a TempMysql);

#[async_trait]
impl Probe for Login<'_> {
    async fn works(
        &self,
        public: &Map<String, Value>,
        secret: &BTreeMap<String, SecretString>,
        _: &Handle,
    ) -> Result<bool, String> {
        let user = public["username"].as_str().ok_or("no username")?;
        let pw = secret.get("password").ok_or("no password")?.expose_secret();
        Ok(self
            .0
            .sql_as(user, pw, "SELECT COUNT(*) FROM app.orders")
            .is_ok())
    }
}

each_server! {
    async fn conformance_kit_passes(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let case = Case {
            role: "orders".into(),
            scopes: vec!["orders.read".into()],
            params: Map::new(),
            workload: Workload { subject: "repo:acme/api:ref:refs/heads/main".into(), ..Default::default() },
            ttl: std::time::Duration::from_secs(300),
        };
        let report = run(p.as_ref(), case, &Login(&db.db)).await.unwrap();
        assert_eq!(report.checks_passed.len(), 9, "{:?}", report.checks_passed);
        assert!(db.lease_users().is_empty(), "nothing left: {:?}", db.lease_users());
    }
}
