use std::sync::Arc;

use lessor_plugin::{LeaseRef, MemoryState, Plugin, PluginContext, StateStore};
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
    let clock = TestClock::new();
    let plugin = lessor_pki::build(PluginContext { clock: clock.clock(), ..ctx(state) }, json!({}), roles)
        .await
        .unwrap();
    let number = |body: Vec<u8>| {
        let (_, crl) = x509_parser::parse_x509_crl(&body).unwrap();
        crl.crl_number().cloned().expect("CRL number")
    };
    let before = number(crl_der(plugin.as_ref(), "web").await);
    clock.advance(Duration::milliseconds(5));
    let id = lease_id();
    plugin
        .revoke(&lease(id.clone(), None, clock.now() + Duration::minutes(10)))
        .await
        .unwrap();
    assert_eq!(crl_serials(plugin.as_ref(), "web").await.len(), 1);
    assert!(crl_serials(plugin.as_ref(), "db").await.is_empty());
    let after = number(crl_der(plugin.as_ref(), "web").await);
    assert!(after > before, "{before} then {after}");
}

#[tokio::test]
async fn unknown_documents_are_none() {
    let (plugin, _) = standard("p256").await;
    assert!(plugin.document(Some("nope"), "ca").await.unwrap().is_none());
    assert!(plugin.document(Some(ROLE), "jwks").await.unwrap().is_none());
    assert!(plugin.document(None, "ca").await.unwrap().is_none());
}

async fn crl_der(plugin: &dyn Plugin, role: &str) -> Vec<u8> {
    plugin
        .document(Some(role), "crl")
        .await
        .unwrap()
        .expect("crl document")
        .body
}

/// The plugin with role `web` on `state`, its clock, and extra connection config.
async fn clocked(
    state: Arc<dyn StateStore>,
    clock: &TestClock,
    connection: serde_json::Value,
) -> Arc<dyn Plugin> {
    let ctx = lessor_plugin::PluginContext {
        state,
        clock: clock.clock(),
        ..lessor_plugin::PluginContext::for_tests("corp", "http://127.0.0.1:8200")
    };
    lessor_pki::build(
        ctx,
        connection,
        vec![role(ROLE, json!({ "allowed_names": ALLOWED }))],
    )
    .await
    .unwrap()
}

/// Issues a 10-minute certificate at the clock's time; returns the lease
/// as revoke sees it and the certificate's serial.
async fn issue_at(plugin: &dyn Plugin, clock: &TestClock) -> (LeaseRef, Vec<u8>) {
    let req = request(api_workload(), json!({}), clock.now() + Duration::minutes(10));
    let lease_ref = lease(req.lease_id.clone(), None, req.expires_at);
    let issued = plugin.issue(req).await.unwrap();
    let cert = pem_der(public_str(&issued, "certificate"));
    let serial = norm(parse_cert(&cert).raw_serial());
    (lease_ref, serial)
}

#[tokio::test]
async fn a_certificate_that_reaches_not_after_is_never_listed() {
    let state = Arc::new(MemoryState::new());
    let clock = TestClock::new();
    let plugin = clocked(state.clone(), &clock, json!({})).await;
    let (lease_ref, _) = issue_at(plugin.as_ref(), &clock).await;

    // The expiry worker revokes at (or after) the lease's end.
    clock.set(lease_ref.expires_at);
    plugin.revoke(&lease_ref).await.unwrap();
    clock.advance(Duration::minutes(1));
    plugin.revoke(&lease_ref).await.unwrap();
    assert!(crl_serials(plugin.as_ref(), ROLE).await.is_empty());
    assert!(state.list("crl/").await.unwrap().is_empty(), "no CRL row for an expiry");
}

#[tokio::test]
async fn an_early_revoke_is_listed_until_not_after_and_then_deleted() {
    let state = Arc::new(MemoryState::new());
    let clock = TestClock::new();
    let plugin = clocked(state.clone(), &clock, json!({ "crl_retention": "0s" })).await;
    let (early, early_serial) = issue_at(plugin.as_ref(), &clock).await;
    let (expiring, _) = issue_at(plugin.as_ref(), &clock).await;

    clock.advance(Duration::minutes(2));
    plugin.revoke(&early).await.unwrap();
    assert_eq!(crl_serials(plugin.as_ref(), ROLE).await, vec![early_serial.clone()]);

    // Still listed the second before its notAfter...
    clock.set(early.expires_at - Duration::seconds(1));
    assert_eq!(crl_serials(plugin.as_ref(), ROLE).await, vec![early_serial.clone()]);
    // ...the other one expires and is revoked at its end: not listed...
    clock.set(expiring.expires_at);
    plugin.revoke(&expiring).await.unwrap();
    // ...and past notAfter (+ a retention of 0s) the early one is gone, from
    // the CRL and from the store.
    clock.advance(Duration::seconds(1));
    assert!(crl_serials(plugin.as_ref(), ROLE).await.is_empty());
    assert!(state.list("crl/").await.unwrap().is_empty(), "row deleted after notAfter");
}

#[tokio::test]
async fn the_default_retention_keeps_an_early_revoke_24h_past_not_after() {
    let state = Arc::new(MemoryState::new());
    let clock = TestClock::new();
    let plugin = clocked(state.clone(), &clock, json!({})).await;
    let (early, serial) = issue_at(plugin.as_ref(), &clock).await;
    plugin.revoke(&early).await.unwrap();

    clock.set(early.expires_at + Duration::hours(23));
    assert_eq!(crl_serials(plugin.as_ref(), ROLE).await, vec![serial]);
    clock.set(early.expires_at + Duration::hours(24) + Duration::seconds(1));
    assert!(crl_serials(plugin.as_ref(), ROLE).await.is_empty());
    assert!(state.list("crl/").await.unwrap().is_empty());
}

#[tokio::test]
async fn requests_are_served_from_memory() {
    let state = Arc::new(CountingState::default());
    let clock = TestClock::new();
    let plugin = clocked(state.clone(), &clock, json!({ "crl_refresh": "5s" })).await;
    let (early, serial) = issue_at(plugin.as_ref(), &clock).await;
    plugin.revoke(&early).await.unwrap();

    let first = crl_der(plugin.as_ref(), ROLE).await;
    let reads = state.reads();
    for _ in 0..1000 {
        // The same bytes: not signed again (ECDSA signatures differ each time).
        assert_eq!(crl_der(plugin.as_ref(), ROLE).await, first);
        plugin.document(Some(ROLE), "ca").await.unwrap().unwrap();
        plugin.document(Some(ROLE), "ca.der").await.unwrap().unwrap();
    }
    assert_eq!(state.reads(), reads, "no store read after the first request");

    // Past `crl_refresh`: one read of the generation, no list, no signature.
    clock.advance(Duration::seconds(6));
    for _ in 0..100 {
        assert_eq!(crl_der(plugin.as_ref(), ROLE).await, first);
    }
    assert_eq!(state.reads(), reads + 1);
    assert_eq!(state.lists(), 1);

    // Half-way to nextUpdate it is signed again, with the same entries.
    clock.advance(Duration::minutes(31));
    let second = crl_der(plugin.as_ref(), ROLE).await;
    assert_ne!(second, first);
    let (_, crl) = x509_parser::parse_x509_crl(&second).unwrap();
    assert_eq!(crl.last_update().timestamp(), clock.now().unix_timestamp());
    assert_eq!(
        crl.iter_revoked_certificates().map(|r| norm(r.raw_serial())).collect::<Vec<_>>(),
        vec![serial]
    );
    assert_eq!(state.lists(), 2);
}

#[tokio::test]
async fn another_replicas_revocation_shows_within_crl_refresh() {
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::new());
    let clock = TestClock::new();
    let a = clocked(state.clone(), &clock, json!({ "crl_refresh": "5s" })).await;
    let b = clocked(state.clone(), &clock, json!({ "crl_refresh": "5s" })).await;
    assert!(crl_serials(a.as_ref(), ROLE).await.is_empty());

    let (early, serial) = issue_at(b.as_ref(), &clock).await;
    b.revoke(&early).await.unwrap();
    // On the replica that revoked: at once.
    assert_eq!(crl_serials(b.as_ref(), ROLE).await, vec![serial.clone()]);
    // On the other: within `crl_refresh`.
    clock.advance(Duration::seconds(5));
    assert_eq!(crl_serials(a.as_ref(), ROLE).await, vec![serial]);
}

#[tokio::test]
async fn a_store_outage_serves_the_current_crl_until_it_is_due() {
    let state = Arc::new(CountingState::default());
    let clock = TestClock::new();
    let plugin = clocked(state.clone(), &clock, json!({ "crl_refresh": "5s" })).await;
    let first = crl_der(plugin.as_ref(), ROLE).await;
    state.fail(true);
    clock.advance(Duration::seconds(10));
    assert_eq!(crl_der(plugin.as_ref(), ROLE).await, first);
    // Past nextUpdate the CRL would be stale: an error, not an old CRL.
    clock.advance(Duration::hours(1));
    assert!(plugin.document(Some(ROLE), "crl").await.is_err());
    state.fail(false);
    assert!(crl_serials(plugin.as_ref(), ROLE).await.is_empty());
}
