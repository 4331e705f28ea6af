//! Workload JWT rejections: each a precise 401, and no lease.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{now, Daemon, Issuer, Key};

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn refused(d: &Daemon, jwt: &str, want: &str) {
    let (s, v) = d.issue(jwt, json!({"role": "token/orders"})).await;
    assert_eq!(s, 401, "expected 401 for `{want}`, got {s}: {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(want), "message `{msg}` should contain `{want}`");
    assert!(!msg.contains(jwt), "the token must not be echoed");
}

#[tokio::test]
async fn every_rejection_is_precise_and_creates_nothing() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let t = now();
    let base = iss.gh_claims("acme/api", "refs/heads/main");

    // Times in whole seconds, checked a moment later by the daemon: each
    // sits mid-way in its range, so a slow machine's second or two of
    // slippage keeps the printed prefix.
    let mut c = base.clone();
    c.insert("iat".into(), json!(t - 480));
    c.insert("nbf".into(), json!(t - 480));
    c.insert("exp".into(), json!(t - 200));
    refused(&d, &iss.sign(&c), "token expired 3m2").await;

    let mut c = base.clone();
    c.insert("nbf".into(), json!(t + 630));
    refused(&d, &iss.sign(&c), "not valid for another 10m").await;

    let mut c = base.clone();
    c.insert("iat".into(), json!(t - 7230));
    refused(&d, &iss.sign(&c), "token is 2h3").await;
    refused(&d, &iss.sign(&c), " old; issuer `").await;

    let mut c = base.clone();
    c.insert("aud".into(), json!("someone-else"));
    refused(&d, &iss.sign(&c), "audience `someone-else` not accepted").await;

    // An unconfigured issuer is refused before any network call.
    let fetched = iss.fetches.load(Ordering::SeqCst);
    let mut c = base.clone();
    c.insert("iss".into(), json!("https://evil.example"));
    refused(&d, &iss.sign(&c), "issuer `https://evil.example` is not configured").await;
    assert_eq!(iss.fetches.load(Ordering::SeqCst), fetched, "no JWKS fetch for an unknown issuer");

    // alg none.
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&Value::Object(base.clone())));
    refused(&d, &none, "alg `none` is never accepted").await;

    // HS256 "signed" with the issuer's public key as the HMAC secret.
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(iss.key.kid.clone());
    let hs = jsonwebtoken::encode(&h, &base, &EncodingKey::from_secret(iss.key.public_pem.as_bytes())).unwrap();
    refused(&d, &hs, "algorithm `HS256` is not allowed").await;

    // Tampered payload: signature from the real token, claims changed.
    let good = iss.token();
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = base.clone();
    evil.insert("repository_owner".into(), json!("acme"));
    evil.insert("repository".into(), json!("acme/payments"));
    let tampered = format!("{}.{}.{}", parts[0], b64(&Value::Object(evil)), parts[2]);
    refused(&d, &tampered, "signature does not verify").await;

    // Oversized.
    let mut c = base.clone();
    c.insert("padding".into(), json!("x".repeat(9000)));
    refused(&d, &iss.sign(&c), "the limit is 8192").await;

    // Missing token.
    let r = d.http.post(format!("{}/v1/leases", d.url)).json(&json!({"role": "pki/web"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("www-authenticate").is_some());

    // A `jku` header is never followed.
    let stranger = Key::generate();
    let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(stranger.kid.clone());
    h.jku = Some(format!("{}/attacker-jwks", iss.url));
    let jku = jsonwebtoken::encode(&h, &base, &EncodingKey::from_ec_pem(stranger.pem.as_bytes()).unwrap()).unwrap();
    refused(&d, &jku, "unknown key id").await;
    assert_eq!(iss.other_hits.load(Ordering::SeqCst), 0, "jku was fetched");

    assert!(d.leases().await.is_empty(), "a refused request created a lease");
}

#[tokio::test]
async fn unknown_kid_refetches_after_rotation_but_rate_limited() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    // Warm the cache.
    let (s, _) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);

    let rotated = Key::generate();
    let jwt = iss.sign_with(&rotated, &iss.gh_claims("acme/api", "refs/heads/main"));
    refused(&d, &jwt, "unknown key id").await;

    // The issuer rotates; lessor picks the new key up on a later refetch.
    iss.keys.lock().unwrap().push(rotated.jwk.clone());
    let before = iss.fetches.load(Ordering::SeqCst);
    let ok = Daemon::eventually(Duration::from_secs(5), || async {
        let (s, _) = d.issue(&jwt, json!({"role": "token/orders"})).await;
        (s == 201).then_some(())
    })
    .await;
    assert!(ok.is_some(), "rotated key was never picked up");
    // Refetches are rate limited (1s here): a burst of unknown kids does not
    // become a burst of fetches.
    let stranger = Key::generate();
    let bad = iss.sign_with(&stranger, &iss.gh_claims("acme/api", "refs/heads/main"));
    for _ in 0..20 {
        refused(&d, &bad, "unknown key id").await;
    }
    let fetched = iss.fetches.load(Ordering::SeqCst) - before;
    assert!(fetched <= 4, "{fetched} JWKS fetches for one rotation and a burst of unknown kids");
}

#[tokio::test]
async fn last_good_keys_are_kept_when_the_issuer_is_down() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let (s, _) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);
    // The key set now fails to parse (issuer broken); known keys still work.
    iss.keys.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stranger = Key::generate();
    refused(&d, &iss.sign_with(&stranger, &iss.gh_claims("acme/api", "refs/heads/main")), "unknown key id").await;
    let (s, v) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");
}
