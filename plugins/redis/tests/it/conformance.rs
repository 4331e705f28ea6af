//! The SDK's conformance kit on two nodes, with a real login as the
//! vendor's word.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::conformance::{run, Case, Probe};
use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{Handle, Plugin, RootCredentials};
use lessor_redis::testkit::TempRedis;
use serde_json::{json, Map, Value};

use crate::support::{code, connect, roles, secret, workload, Pair, RedisPluginExt};

/// A credential works iff it logs in and reads on *every* node; working on
/// some nodes only is an error (the every-node rule broken).
struct Login<'a>(&'a [&'a TempRedis]);

#[async_trait]
impl Probe for Login<'_> {
    async fn works(&self, public: &Map<String, Value>, secret: &BTreeMap<String, SecretString>, _: &Handle) -> Result<bool, String> {
        let user = public.get("username").and_then(Value::as_str).ok_or("no `username`")?;
        let pw = secret.get("password").ok_or("no `password`")?;
        let mut ok = Vec::new();
        for r in self.0 {
            match connect(r, user, pw.expose_secret()).await {
                Ok(mut c) => {
                    let _: Option<String> = redis::cmd("GET").arg("cache:x").query_async(&mut c).await.map_err(|e| e.to_string())?;
                    ok.push(true);
                }
                Err(e) if code(&e) == "WRONGPASS" => ok.push(false),
                Err(e) => return Err(format!("login failed unexpectedly: {e}")),
            }
        }
        match (ok.iter().all(|b| *b), ok.iter().any(|b| *b)) {
            (true, _) => Ok(true),
            (false, false) => Ok(false),
            _ => Err(format!("the credential works on some nodes only: {ok:?}")),
        }
    }
}

/// Runs the kit with the password from `password_file`, then with a managed
/// root credential installed by version; nothing is left behind.
#[tokio::test]
async fn redis_conforms_on_every_node() {
    let pair = Pair::start();
    let from_file = pair.plugin();
    let managed = pair.plugin_with(json!({"nodes": [pair.a.url(), pair.b.url()], "timeout": "1s"}), roles()).unwrap();
    assert!(managed.validate().await.unwrap_err().to_string().contains("no active root credential"));
    managed.install_root(1, secret(&pair.password), true).await.unwrap();
    for plugin in [from_file, managed] {
        let case = Case {
            role: "app".into(),
            scopes: vec!["cache.read".into()],
            params: Map::new(),
            workload: workload(),
            ttl: Duration::from_secs(300),
        };
        let report = run(&plugin, case, &Login(&pair.nodes())).await.unwrap();
        for check in [
            "issued credential works",
            "renew extends the credential",
            "revoke takes the credential back",
            "revoke of an unknown lease is Ok",
            "revoke by lease id alone takes the credential back",
        ] {
            assert!(report.checks_passed.contains(&check), "missing check {check}: {:?}", report.checks_passed);
        }
        for r in pair.nodes() {
            assert_eq!(pair.users(r).await, Vec::<String>::new(), "users left on {}", r.url());
        }
        assert!(plugin.all_users().await.is_empty());
    }
}
