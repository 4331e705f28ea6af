//! The SDK's conformance kit, with introspection as the vendor's word.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::conformance::{run, Case, Probe};
use lessor_plugin::secrecy::SecretString;
use lessor_plugin::{Handle, MemoryState, Plugin};
use serde_json::{json, Map, Value};

use crate::support::{ctx, roles, workload};

/// A token works iff introspection says it is active.
struct Introspects(Arc<dyn Plugin>);

#[async_trait]
impl Probe for Introspects {
    async fn works(
        &self,
        _public: &Map<String, Value>,
        secret: &BTreeMap<String, SecretString>,
        _handle: &Handle,
    ) -> Result<bool, String> {
        let token = secret
            .get("token")
            .ok_or("no `token` in the secret fields")?;
        match self.0.introspect(token).await {
            Ok(Some(i)) => Ok(i.active),
            Ok(None) => Err("the plugin does not recognise its own token".into()),
            Err(e) => Err(format!("introspect failed: {e}")),
        }
    }
}

async fn conform(connection: Value) {
    // The real clock: the kit computes expiries from it.
    let plugin = lessor_token::build(ctx(Arc::new(MemoryState::new())), connection, roles())
        .await
        .unwrap();
    let case = Case {
        role: "orders".into(),
        scopes: vec!["orders.read".into()],
        params: Map::new(),
        workload: workload(),
        ttl: Duration::from_secs(300),
    };
    let report = run(plugin.as_ref(), case, &Introspects(plugin.clone()))
        .await
        .unwrap();
    assert!(report
        .checks_passed
        .contains(&"revoke by lease id alone takes the credential back"));
    assert!(report
        .checks_passed
        .contains(&"renew is refused as unsupported"));
}

#[tokio::test]
async fn es256_conforms() {
    conform(Value::Null).await;
}

#[tokio::test]
async fn eddsa_conforms() {
    conform(json!({"algorithm": "EdDSA"})).await;
}
