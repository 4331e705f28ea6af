use std::time::Duration;

use lessor_plugin::conformance::{run, Case};

use crate::support::*;

#[tokio::test]
async fn passes_the_conformance_kit() {
    let (plugin, _state) = standard("p256").await;
    let probe = CrlProbe {
        plugin: plugin.clone(),
        role: ROLE.into(),
    };
    let case = Case {
        role: ROLE.into(),
        scopes: vec![],
        params: Default::default(),
        workload: api_workload(),
        ttl: Duration::from_secs(600),
    };
    let report = run(plugin.as_ref(), case, &probe)
        .await
        .expect("conformance");
    assert!(report
        .checks_passed
        .contains(&"revoke by lease id alone takes the credential back"));
    assert!(report
        .checks_passed
        .contains(&"renew is refused as unsupported"));
}
