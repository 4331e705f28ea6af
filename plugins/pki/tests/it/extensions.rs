//! Leaf certificates say where their CRL and their issuer are.

use std::sync::Arc;

use lessor_plugin::{MemoryState, PluginContext};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn leaves_name_the_crl_and_the_issuer_under_public_url() {
    let (plugin, _) = standard("p256").await;
    let issued = issue(plugin.as_ref(), json!({})).await.unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    let cert = parse_cert(&der);
    assert_eq!(crl_urls(&cert), ["http://127.0.0.1:8200/v1/pki/corp/web/crl"]);
    assert_eq!(ca_issuers(&cert), ["http://127.0.0.1:8200/v1/pki/corp/web/ca.der"]);

    // What those documents are: the CA certificate alone in DER (RFC 5280
    // 4.2.2.1), and the CRL.
    let doc = plugin.document(Some(ROLE), "ca.der").await.unwrap().unwrap();
    assert_eq!(doc.content_type, "application/pkix-cert");
    assert_eq!(doc.body, ca_der(plugin.as_ref(), ROLE).await);
    let ca = parse_cert(&doc.body);
    cert.verify_signature(Some(ca.public_key())).unwrap();
}

#[tokio::test]
async fn urls_are_built_from_a_checked_public_url() {
    let state = Arc::new(MemoryState::new());
    let ctx = |url: &str| PluginContext {
        state: state.clone(),
        ..PluginContext::for_tests("corp ca", url)
    };
    let roles = || vec![role("web/ü", json!({ "allowed_names": ALLOWED }))];
    // Role names with `/` are refused earlier; other bytes are escaped.
    let m = misconfigured(lessor_pki::build(ctx("https://lessor.example/"), json!({}), roles()).await);
    assert!(m.contains("must not contain `/`"), "{m}");

    let plugin = lessor_pki::build(
        ctx("https://lessor.example/base/"),
        json!({}),
        vec![role("wéb", json!({ "allowed_names": ALLOWED }))],
    )
    .await
    .unwrap();
    let req = request(api_workload(), json!({}), in_minutes(10));
    let req = lessor_plugin::IssueRequest { role: "wéb".into(), ..req };
    let issued = plugin.issue(req).await.unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    let cert = parse_cert(&der);
    assert_eq!(crl_urls(&cert), ["https://lessor.example/base/v1/pki/corp%20ca/w%C3%A9b/crl"]);

    for bad in ["lessor.example", "ftp://lessor.example", "https://lessör.example", "https://a b"] {
        let m = misconfigured(lessor_pki::build(ctx(bad), json!({}), vec![role("web", json!({ "allowed_names": ALLOWED }))]).await);
        assert!(m.contains("`public_url`"), "{bad}: {m}");
    }
}
