use std::sync::Arc;

use lessor_plugin::MemoryState;
use serde_json::{json, Value};

use crate::support::*;

async fn build_err(connection: Value, roles: Vec<lessor_plugin::RoleSpec>) -> String {
    misconfigured(lessor_pki::build(ctx(Arc::new(MemoryState::new())), connection, roles).await)
}

async fn role_err(config: Value) -> String {
    build_err(json!({}), vec![role(ROLE, config)]).await
}

#[tokio::test]
async fn config_errors_name_the_role_and_field() {
    let m = role_err(json!({ "allowed_names": ALLOWED, "key_typ": "p256" })).await;
    assert!(m.starts_with("role `web`: unknown field `key_typ`"), "{m}");
    let m = role_err(json!({})).await;
    assert_eq!(m, "role `web`: `allowed_names` must list at least one name");
    let m = role_err(json!({ "allowed_names": ["{repo.svc"] })).await;
    assert!(
        m.starts_with("role `web`: `allowed_names` entry `{repo.svc`:"),
        "{m}"
    );
    let m = role_err(json!({ "allowed_names": ["Not_Valid.example"] })).await;
    assert!(m.contains("not a valid DNS name"), "{m}");
    let m = role_err(json!({ "allowed_names": ALLOWED, "key_type": "rsa4096" })).await;
    assert!(
        m.starts_with("role `web`: unknown variant `rsa4096`"),
        "{m}"
    );
    let m = role_err(json!({ "allowed_names": ALLOWED, "ca": { "cert_file": "/x.pem" } })).await;
    assert_eq!(
        m,
        "role `web`: `ca.cert_file` is set but `ca.key_file` is not"
    );
    let m = role_err(
        json!({ "allowed_names": ALLOWED, "ca": { "generate": { "key_type": "rsa2048" } } }),
    )
    .await;
    assert!(
        m.starts_with("role `web`: unknown variant `rsa2048`"),
        "{m}"
    );
    let m = role_err(json!({ "allowed_names": ALLOWED, "common_name": "{cn" })).await;
    assert!(m.starts_with("role `web`: `common_name` `{cn`:"), "{m}");

    let m = build_err(json!({ "crl_retention": "a while" }), vec![]).await;
    assert!(m.contains("crl_retention") || m.contains("a while"), "{m}");
    let m = build_err(json!({ "crl": "1h" }), vec![]).await;
    assert!(m.contains("unknown field `crl`"), "{m}");

    let twice = vec![
        role(ROLE, json!({ "allowed_names": ALLOWED })),
        role(ROLE, json!({ "allowed_names": ALLOWED })),
    ];
    assert_eq!(
        build_err(json!({}), twice).await,
        "role `web` is defined twice"
    );
    let m = build_err(
        json!({}),
        vec![role("a/b", json!({ "allowed_names": ALLOWED }))],
    )
    .await;
    assert!(m.starts_with("role `a/b`:"), "{m}");
}

#[tokio::test]
async fn a_connection_without_roles_still_validates() {
    let plugin = lessor_pki::build(ctx(Arc::new(MemoryState::new())), Value::Null, vec![])
        .await
        .unwrap();
    let v = plugin.validate().await.unwrap();
    assert!(!v.identity.is_empty());
}
