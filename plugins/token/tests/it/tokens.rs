//! Issuing, verifying against the JWKS, revocation and introspection.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use lessor_plugin::{
    LeaseId, LeaseRef, MemoryState, Plugin, PluginError, RenewRequest, StateStore,
};
use serde_json::{json, Value};

use crate::support::*;

/// Verifies `token` the way a resource server does: JWKS + audience + issuer.
async fn verify_with_jwks(
    p: &dyn Plugin,
    token: &str,
    alg: Algorithm,
) -> serde_json::Map<String, Value> {
    let set = jwks(p).await;
    let jwk = set.find(&kid_of(token)).expect("token's kid is published");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut v = Validation::new(alg);
    v.set_audience(&["orders-api"]);
    v.set_issuer(&[ISSUER]);
    decode::<serde_json::Map<String, Value>>(token, &key, &v)
        .unwrap()
        .claims
}

async fn issued_token_verifies_and_has_claims(connection: Value, alg: Algorithm) {
    let (p, _state, clock) = plugin(connection).await;
    let expires_at = clock.now() + Duration::from_secs(900);
    let issued = p
        .issue(request("lease-1", "orders", expires_at))
        .await
        .unwrap();
    let token = token_str(&issued);

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, alg);
    let claims = verify_with_jwks(p.as_ref(), &token, alg).await;
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "repo:shop/orders");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(claims["scope"], "orders.read orders.write");
    assert_eq!(claims["exp"], expires_at.unix_timestamp());
    assert_eq!(claims["iat"], clock.now().unix_timestamp());
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(claims["jti"], "lease-1");
    assert_eq!(claims["lessor_role"], "tok/orders");
    assert_eq!(claims["team"], "shop");

    assert_eq!(issued.expires_at, expires_at);
    assert_eq!(
        issued.handle,
        json!({"jti": "lease-1", "kid": header.kid.clone().unwrap()})
    );
    assert_eq!(
        issued.public["scopes"],
        json!(["orders.read", "orders.write"])
    );
    assert_eq!(issued.public["token_type"], "Bearer");
    assert_eq!(issued.public["kid"], json!(header.kid.unwrap()));
    let rfc = expires_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(issued.public["expires_at"], json!(rfc));
    assert!(!format!("{issued:?}").contains(&token));

    let i = introspect(p.as_ref(), &token).await.unwrap();
    assert!(i.active);
    assert_eq!(i.claims["scope"], "orders.read orders.write");
    assert_eq!(i.claims["sub"], "repo:shop/orders");
    assert_eq!(i.claims["aud"], "orders-api");
    assert_eq!(i.claims["iss"], ISSUER);
    assert_eq!(i.claims["exp"], expires_at.unix_timestamp());
    assert_eq!(i.claims["jti"], "lease-1");
    assert_eq!(i.claims["token_type"], "Bearer");
    assert_eq!(i.claims["lessor_role"], "tok/orders");
    assert!(i.claims.contains_key("iat") && i.claims.contains_key("nbf"));
}

#[tokio::test]
async fn es256_token_verifies_against_jwks() {
    issued_token_verifies_and_has_claims(Value::Null, Algorithm::ES256).await;
}

#[tokio::test]
async fn eddsa_token_verifies_against_jwks() {
    issued_token_verifies_and_has_claims(json!({"algorithm": "EdDSA"}), Algorithm::EdDSA).await;
}

#[tokio::test]
async fn jwks_shape() {
    let (p, _, _) = plugin(Value::Null).await;
    let doc = p.document(None, "jwks").await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&doc.body).unwrap();
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["use"], "sig");
    assert_eq!(k["alg"], "ES256");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(k["x"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(k["y"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    assert_eq!(k["kid"].as_str().unwrap().len(), 16);
    let text = String::from_utf8(doc.body).unwrap();
    assert!(!text.contains("\"d\""), "no private part in the JWKS");

    let (p, _, _) = plugin(json!({"algorithm": "EdDSA"})).await;
    let body: Value =
        serde_json::from_slice(&p.document(None, "jwks").await.unwrap().unwrap().body).unwrap();
    let k = &body["keys"][0];
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert_eq!(k["alg"], "EdDSA");
    assert_eq!(k["use"], "sig");
    assert!(k.get("y").is_none());
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(k["x"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
}

#[tokio::test]
async fn other_documents_are_none() {
    let (p, _, _) = plugin(Value::Null).await;
    assert!(p.document(None, "ca").await.unwrap().is_none());
    assert!(p.document(Some("orders"), "jwks").await.unwrap().is_none());
}

#[tokio::test]
async fn default_audience_and_no_extra_claims() {
    let (p, _, clock) = plugin(Value::Null).await;
    let issued = p
        .issue(request("l", "plain", clock.now() + Duration::from_secs(60)))
        .await
        .unwrap();
    let i = introspect(p.as_ref(), &token_str(&issued)).await.unwrap();
    assert_eq!(i.claims["aud"], "lessor:tok/plain");
    assert_eq!(i.claims["lessor_role"], "tok/plain");
}

#[tokio::test]
async fn revoke_is_seen_at_once_and_is_idempotent() {
    let (p, state, clock) = plugin(Value::Null).await;
    let issued = issue(p.as_ref(), &clock, "lease-r", Duration::from_secs(600)).await;
    let other = issue(p.as_ref(), &clock, "lease-other", Duration::from_secs(600)).await;
    let lease = LeaseRef {
        lease_id: LeaseId::new("lease-r"),
        role: "orders".into(),
        handle: Some(issued.handle.clone()),
        expires_at: issued.expires_at,
        root_version: None,
    };
    assert!(is_active(p.as_ref(), &token_str(&issued)).await);
    p.revoke(&lease).await.unwrap();
    assert_inactive(p.as_ref(), &token_str(&issued)).await;
    assert!(
        is_active(p.as_ref(), &token_str(&other)).await,
        "only the revoked token is inactive"
    );

    let first = state.get("revoked/lease-r").await.unwrap().unwrap();
    clock.advance(Duration::from_secs(5));
    p.revoke(&lease).await.unwrap();
    assert_eq!(
        state.get("revoked/lease-r").await.unwrap().unwrap(),
        first,
        "revoking again changes nothing"
    );
    let entry: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(entry["exp"], issued.expires_at.unix_timestamp());
}

#[tokio::test]
async fn revoke_by_lease_id_alone() {
    let (p, _, clock) = plugin(Value::Null).await;
    let issued = issue(p.as_ref(), &clock, "lease-crash", Duration::from_secs(600)).await;
    p.revoke(&LeaseRef {
        lease_id: LeaseId::new("lease-crash"),
        role: "orders".into(),
        handle: None,
        expires_at: issued.expires_at,
        root_version: None,
    })
    .await
    .unwrap();
    assert_inactive(p.as_ref(), &token_str(&issued)).await;
}

#[tokio::test]
async fn tampered_token_is_inactive() {
    let (p, _, clock) = plugin(Value::Null).await;
    let issued = issue(p.as_ref(), &clock, "lease-t", Duration::from_secs(600)).await;
    let token = token_str(&issued);
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["scope"] = json!("orders.read orders.write orders.admin");
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_inactive(p.as_ref(), &forged).await;

    // The header switched to an algorithm the key is not for.
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    header["alg"] = json!("HS256");
    let forged_header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    assert_inactive(
        p.as_ref(),
        &format!("{forged_header}.{}.{}", parts[1], parts[2]),
    )
    .await;

    // The untouched token is still fine.
    assert!(is_active(p.as_ref(), &token).await);
}

#[tokio::test]
async fn wrong_issuer_is_inactive() {
    // Same keys (same state), another issuer: the signature is fine, `iss` is not.
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::new());
    let clock = ManualClock::new();
    let a = plugin_on(state.clone(), clock.clone(), Value::Null).await;
    let b = plugin_on(state, clock.clone(), json!({"issuer": "https://elsewhere"})).await;
    let issued = issue(b.as_ref(), &clock, "lease-i", Duration::from_secs(60)).await;
    assert!(is_active(b.as_ref(), &token_str(&issued)).await);
    assert_inactive(a.as_ref(), &token_str(&issued)).await;
}

#[tokio::test]
async fn foreign_tokens_are_not_mine() {
    let (p, _, clock) = plugin(Value::Null).await;
    let (other, _, _) = plugin(Value::Null).await;
    let theirs = issue(other.as_ref(), &clock, "lease-f", Duration::from_secs(600)).await;
    assert!(
        introspect(p.as_ref(), &token_str(&theirs)).await.is_none(),
        "another connection's key"
    );

    // A token from a key nobody here made, with a kid of the right shape.
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("0123456789abcdef".into());
    let stranger = jsonwebtoken::encode(
        &header,
        &json!({"iss": ISSUER, "sub": "x", "aud": "orders-api", "exp": 4_000_000_000u64, "jti": "j"}),
        &jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
    )
    .unwrap();
    assert!(introspect(p.as_ref(), &stranger).await.is_none());

    // No kid, not a JWT, empty.
    let no_kid = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::ES256),
        &json!({"exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
    )
    .unwrap();
    assert!(introspect(p.as_ref(), &no_kid).await.is_none());
    assert!(introspect(p.as_ref(), "not-a-token").await.is_none());
    assert!(introspect(p.as_ref(), "").await.is_none());
}

#[tokio::test]
async fn expired_token_is_inactive() {
    let (p, _, clock) = plugin(Value::Null).await;
    let issued = issue(p.as_ref(), &clock, "lease-e", Duration::from_secs(60)).await;
    clock.advance(Duration::from_secs(59));
    assert!(is_active(p.as_ref(), &token_str(&issued)).await);
    clock.advance(Duration::from_secs(1));
    assert_inactive(p.as_ref(), &token_str(&issued)).await;
}

#[tokio::test]
async fn renew_is_unsupported() {
    let (p, _, clock) = plugin(Value::Null).await;
    assert!(!p.capabilities().can_renew);
    assert!(p.capabilities().can_revoke());
    // Revocation is published for introspection at once; offline JWT
    // verifiers do not see it.
    assert_eq!(p.capabilities().revocation.mode(), "published");
    let issued = issue(p.as_ref(), &clock, "lease-n", Duration::from_secs(60)).await;
    let lease = LeaseRef {
        lease_id: LeaseId::new("lease-n"),
        role: "orders".into(),
        handle: Some(issued.handle),
        expires_at: issued.expires_at,
        root_version: None,
    };
    let err = p
        .renew(RenewRequest {
            lease,
            expires_at: issued.expires_at + Duration::from_secs(60),
        })
        .await
        .unwrap_err();
    assert!(matches!(&err, PluginError::Unsupported(w) if w == "renew"), "{err:?}");
}

#[tokio::test]
async fn issue_refuses_bad_requests() {
    let (p, _, clock) = plugin(Value::Null).await;
    let too_long = p
        .issue(request(
            "l1",
            "orders",
            clock.now() + MAX_TTL + Duration::from_secs(60),
        ))
        .await;
    match too_long {
        Err(PluginError::InvalidRequest(m)) => assert!(m.contains("exceeds role max 1h"), "{m}"),
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    let past = p
        .issue(request(
            "l2",
            "orders",
            clock.now() - Duration::from_secs(1),
        ))
        .await;
    assert!(
        matches!(past, Err(PluginError::InvalidRequest(_))),
        "{past:?}"
    );
    let unknown = p
        .issue(request("l3", "nope", clock.now() + Duration::from_secs(60)))
        .await;
    match unknown {
        Err(PluginError::InvalidRequest(m)) => assert!(m.contains("nope"), "{m}"),
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_config_is_misconfigured_naming_role_and_field() {
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::new());
    let mut r = roles();
    r[1].config = json!({"extra_claims": {"exp": "never"}});
    match lessor_token::build(ctx(state.clone()), Value::Null, r).await {
        Err(PluginError::Misconfigured(m)) => assert!(
            m.contains("tok/plain") && m.contains("extra_claims.exp"),
            "{m}"
        ),
        Err(e) => panic!("expected Misconfigured, got {e:?}"),
        Ok(_) => panic!("expected Misconfigured, got a plugin"),
    }
    match lessor_token::build(ctx(state), json!({"algorithm": "HS256"}), roles()).await {
        Err(PluginError::Misconfigured(m)) => assert!(m.contains("connection `tok`"), "{m}"),
        Err(e) => panic!("expected Misconfigured, got {e:?}"),
        Ok(_) => panic!("expected Misconfigured, got a plugin"),
    }
}

#[tokio::test]
async fn validate_names_issuer_and_key() {
    let (p, _, _) = plugin(Value::Null).await;
    let kid = jwks_kids(p.as_ref()).await.remove(0);
    let v = p.validate().await.unwrap();
    assert_eq!(
        v.identity,
        format!("token issuer {ISSUER}, key {kid} (ES256)")
    );
    assert_eq!(v.details["keys_published"], "1");
    assert_eq!(v.details["current_key_age"], "0s");
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[tokio::test]
async fn expired_revocations_are_pruned() {
    let (p, state, clock) = plugin(Value::Null).await;
    let a = issue(p.as_ref(), &clock, "lease-p1", Duration::from_secs(60)).await;
    let revoke = |id: &str, exp| LeaseRef {
        lease_id: LeaseId::new(id),
        role: "orders".into(),
        handle: None,
        expires_at: exp,
        root_version: None,
    };
    p.revoke(&revoke("lease-p1", a.expires_at)).await.unwrap();
    assert!(state.get("revoked/lease-p1").await.unwrap().is_some());

    clock.advance(Duration::from_secs(2 * 3600));
    let b = issue(p.as_ref(), &clock, "lease-p2", Duration::from_secs(60)).await;
    p.revoke(&revoke("lease-p2", b.expires_at)).await.unwrap();
    assert!(
        state.get("revoked/lease-p1").await.unwrap().is_none(),
        "expired entry pruned"
    );
    assert!(
        state.get("revoked/lease-p2").await.unwrap().is_some(),
        "live entry kept"
    );
    assert_inactive(p.as_ref(), &token_str(&b)).await;
}
