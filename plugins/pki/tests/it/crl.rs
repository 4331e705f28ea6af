use std::sync::Arc;

use lessor_plugin::{LeaseRef, MemoryState, StateStore};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::support::*;

fn lease(
    id: lessor_plugin::LeaseId,
    handle: Option<serde_json::Value>,
    expires_at: OffsetDateTime,
) -> LeaseRef {
    LeaseRef {
        lease_id: id,
        role: ROLE.into(),
        handle,
        expires_at,
        root_version: None,
    }
}

#[tokio::test]
async fn revoke_by_lease_id_alone_lists_the_derived_serial() {
    let (plugin, _) = standard("p256").await;
    let req = request(api_workload(), json!({}), in_minutes(10));
    let id = req.lease_id.clone();
    let issued = plugin.issue(req).await.unwrap();
    let cert_serial = norm(parse_cert(&pem_der(public_str(&issued, "certificate"))).raw_serial());
    assert!(crl_serials(plugin.as_ref(), ROLE).await.is_empty());

    plugin
        .revoke(&lease(id.clone(), None, in_minutes(10)))
        .await
        .unwrap();
    let listed = crl_serials(plugin.as_ref(), ROLE).await;
    assert_eq!(listed, vec![norm(&expected_serial(&id))]);
    assert_eq!(listed, vec![cert_serial]);
}

#[tokio::test]
async fn revoke_uses_the_handle_serial() {
    let (plugin, _) = standard("p256").await;
    let handle = json!({ "serial": "0A0b0c" });
    plugin
        .revoke(&lease(lease_id(), Some(handle), in_minutes(10)))
        .await
        .unwrap();
    assert_eq!(
        crl_serials(plugin.as_ref(), ROLE).await,
        vec![vec![0x0a, 0x0b, 0x0c]]
    );

    let bad = json!({ "serial": "not hex" });
    let r = plugin
        .revoke(&lease(lease_id(), Some(bad), in_minutes(10)))
        .await;
    assert!(
        matches!(r, Err(lessor_plugin::PluginError::Permanent(_))),
        "{r:?}"
    );
}

#[tokio::test]
async fn revoking_again_keeps_the_first_revocation_time() {
    let (plugin, state) = standard("p256").await;
    let id = lease_id();
    let key = format!("crl/web/{}", hex::encode(expected_serial(&id)));
    plugin
        .revoke(&lease(id.clone(), None, in_minutes(10)))
        .await
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(&state.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(first["not_after"], json!(in_minutes(10).unix_timestamp()));

    // Pretend the first revocation was long ago, then revoke with a later end.
    let earlier = json!({ "revoked_at": 1_000, "not_after": first["not_after"] });
    state
        .put(&key, earlier.to_string().as_bytes())
        .await
        .unwrap();
    plugin
        .revoke(&lease(id.clone(), None, in_minutes(20)))
        .await
        .unwrap();
    let again: serde_json::Value =
        serde_json::from_slice(&state.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(again["revoked_at"], json!(1_000));
    assert_eq!(again["not_after"], json!(in_minutes(20).unix_timestamp()));
    assert_eq!(crl_serials(plugin.as_ref(), ROLE).await.len(), 1);
}

#[tokio::test]
async fn serials_leave_the_crl_after_retention() {
    let expired_long_ago = OffsetDateTime::now_utc() - Duration::hours(48);
    let expired_recently = OffsetDateTime::now_utc() - Duration::hours(1);

    // Default retention: 24h after not_after.
    let (plugin, _) = standard("p256").await;
    let old = lease_id();
    let recent = lease_id();
    plugin
        .revoke(&lease(old.clone(), None, expired_long_ago))
        .await
        .unwrap();
    plugin
        .revoke(&lease(recent.clone(), None, expired_recently))
        .await
        .unwrap();
    assert_eq!(
        crl_serials(plugin.as_ref(), ROLE).await,
        vec![norm(&expected_serial(&recent))]
    );

    // A longer retention keeps both.
    let state = Arc::new(MemoryState::new());
    let config = json!({ "allowed_names": ALLOWED });
    let plugin = lessor_pki::build(
        ctx(state),
        json!({ "crl_retention": "72h" }),
        vec![role(ROLE, config)],
    )
    .await
    .unwrap();
    plugin
        .revoke(&lease(old.clone(), None, expired_long_ago))
        .await
        .unwrap();
    plugin
        .revoke(&lease(recent.clone(), None, expired_recently))
        .await
        .unwrap();
    let mut listed = crl_serials(plugin.as_ref(), ROLE).await;
    listed.sort();
    let mut want = vec![
        norm(&expected_serial(&old)),
        norm(&expected_serial(&recent)),
    ];
    want.sort();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn an_unreadable_entry_stays_on_the_crl() {
    let (plugin, state) = standard("p256").await;
    state.put("crl/web/0abc", b"not json").await.unwrap();
    assert_eq!(
        crl_serials(plugin.as_ref(), ROLE).await,
        vec![vec![0x0a, 0xbc]]
    );
}

#[tokio::test]
async fn crls_are_per_role_and_numbered() {
    let state = Arc::new(MemoryState::new());
    let roles = vec![
        role("web", json!({ "allowed_names": ALLOWED })),
        role("db", json!({ "allowed_names": ["db.internal"] })),
    ];
    let plugin = lessor_pki::build(ctx(state), json!({}), roles)
        .await
        .unwrap();
    let id = lease_id();
    plugin
        .revoke(&lease(id.clone(), None, in_minutes(10)))
        .await
        .unwrap();
    assert_eq!(crl_serials(plugin.as_ref(), "web").await.len(), 1);
    assert!(crl_serials(plugin.as_ref(), "db").await.is_empty());

    let number = |body: Vec<u8>| {
        let (_, crl) = x509_parser::parse_x509_crl(&body).unwrap();
        crl.crl_number().cloned().expect("CRL number")
    };
    let a = number(
        plugin
            .document(Some("web"), "crl")
            .await
            .unwrap()
            .unwrap()
            .body,
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = number(
        plugin
            .document(Some("web"), "crl")
            .await
            .unwrap()
            .unwrap()
            .body,
    );
    assert!(b > a, "{a} then {b}");
}

#[tokio::test]
async fn unknown_documents_are_none() {
    let (plugin, _) = standard("p256").await;
    assert!(plugin.document(Some("nope"), "ca").await.unwrap().is_none());
    assert!(plugin.document(Some(ROLE), "jwks").await.unwrap().is_none());
    assert!(plugin.document(None, "ca").await.unwrap().is_none());
}
