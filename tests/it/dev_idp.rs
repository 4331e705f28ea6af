//! The dev OpenID provider `lessor dev` runs for people, over real HTTP:
//! discovery and JWKS, the code flow with PKCE (the ID token verified
//! against the JWKS), the refusals OAuth names, the device flow, the
//! loopback-only bind, HTML escaping and the caps.
//!
//! Why one file (about 870 lines): the flows share the provider start-up,
//! the PKCE and form helpers and the ID-token check at the top; split, each
//! part would repeat them.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lessor::dev_idp::{self, DevIdpError, DevIdpSettings, RunningDevIdp, DEVICE_GRANT};
use reqwest::{Client, StatusCode, Url};
use secrecy::SecretString;
use serde_json::Value;
use sha2::{Digest, Sha256};

const SECRET: &str = "test-client-secret-0123456789";
const REDIRECT: &str = "http://127.0.0.1:9/v1/people/callback";
const SCOPE: &str = "openid email profile groups";

async fn start(tune: impl FnOnce(&mut DevIdpSettings)) -> RunningDevIdp {
    let mut s = DevIdpSettings::new("lessor", SecretString::from(SECRET), vec![REDIRECT.into()]);
    s.post_logout_redirect_uris = vec!["http://127.0.0.1:9/".into()];
    tune(&mut s);
    dev_idp::start("127.0.0.1:0".parse().unwrap(), s).await.unwrap()
}

fn http() -> Client {
    Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// (verifier, S256 challenge)
fn pkce() -> (String, String) {
    let verifier = format!("v{}", "x".repeat(10)) + &uuidish();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn uuidish() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#x27;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The hidden fields of the first form of a page.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in html.split("<input type=\"hidden\" ").skip(1) {
        let name = part.split("name=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        let value = part.split("value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        out.push((unescape(name), unescape(value)));
    }
    out
}

fn authorize_params(challenge: &str, state: &str) -> Vec<(&'static str, String)> {
    vec![
        ("response_type", "code".into()),
        ("client_id", "lessor".into()),
        ("redirect_uri", REDIRECT.into()),
        ("scope", SCOPE.into()),
        ("state", state.into()),
        ("nonce", "nonce-123".into()),
        ("code_challenge", challenge.into()),
        ("code_challenge_method", "S256".into()),
    ]
}

fn location(r: &reqwest::Response) -> Url {
    Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
}

fn query(u: &Url, k: &str) -> Option<String> {
    u.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned())
}

/// Opens the authorization page, clicks `user`'s button, returns the
/// redirect back to the client.
async fn click(idp: &RunningDevIdp, challenge: &str, state: &str, user: &str) -> Url {
    let h = http();
    let page = h.get(format!("{}/authorize", idp.issuer)).query(&authorize_params(challenge, state)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("value=\"{user}\"")), "{html}");
    let mut form = hidden_fields(&html);
    form.push(("user".into(), user.into()));
    let r = h.post(format!("{}/authorize", idp.issuer)).form(&form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    location(&r)
}

async fn code_for(idp: &RunningDevIdp, challenge: &str, user: &str) -> String {
    let back = click(idp, challenge, "st", user).await;
    assert_eq!(back.as_str().split('?').next().unwrap(), REDIRECT);
    assert_eq!(query(&back, "state").as_deref(), Some("st"));
    assert_eq!(query(&back, "iss").as_deref(), Some(idp.issuer.as_str()));
    query(&back, "code").expect("a code")
}

async fn redeem(idp: &RunningDevIdp, code: &str, verifier: &str, redirect: &str, secret: &str) -> (StatusCode, Value) {
    let r = http()
        .post(format!("{}/token", idp.issuer))
        .basic_auth("lessor", Some(secret))
        .form(&[("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect), ("code_verifier", verifier)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (r.status(), r.json().await.unwrap())
}

async fn verify_id_token(idp: &RunningDevIdp, token: &str) -> Value {
    let jwks: JwkSet = http().get(format!("{}/jwks", idp.issuer)).send().await.unwrap().json().await.unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(jwks.find(&kid).expect("the token's kid is in the JWKS")).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["lessor"]);
    v.set_issuer(&[&idp.issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &v).unwrap().claims
}

#[tokio::test]
async fn discovery_names_every_endpoint_and_the_jwks_holds_the_key() {
    let idp = start(|_| {}).await;
    let d: Value = http().get(format!("{}/.well-known/openid-configuration", idp.issuer)).send().await.unwrap().json().await.unwrap();
    assert_eq!(d["issuer"], idp.issuer);
    for (k, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("jwks_uri", "/jwks"),
        ("device_authorization_endpoint", "/device_authorization"),
        ("end_session_endpoint", "/end_session"),
    ] {
        assert_eq!(d[k], format!("{}{path}", idp.issuer), "{k}");
    }
    assert_eq!(d["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(d["token_endpoint_auth_methods_supported"], serde_json::json!(["client_secret_basic", "client_secret_post"]));
    assert!(d["grant_types_supported"].as_array().unwrap().contains(&DEVICE_GRANT.into()));
    let jwks: Value = http().get(d["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    let k = &jwks["keys"][0];
    assert_eq!((k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()), (Some("EC"), Some("P-256"), Some("ES256")));
    assert!(k.get("d").is_none(), "the private part is never published");
    // A key per start: another provider has another key.
    let other = start(|_| {}).await;
    let jwks2: Value = http().get(format!("{}/jwks", other.issuer)).send().await.unwrap().json().await.unwrap();
    assert_ne!(jwks2["keys"][0]["x"], k["x"]);
    idp.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn code_flow_with_pkce_signs_a_dev_user_in() {
    let idp = start(|_| {}).await;
    let (verifier, challenge) = pkce();
    let code = code_for(&idp, &challenge, "alice").await;
    let (status, t) = redeem(&idp, &code, &verifier, REDIRECT, SECRET).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    let c = verify_id_token(&idp, t["id_token"].as_str().unwrap()).await;
    assert_eq!(c["sub"], "9c1f4e2a-0001");
    assert_ne!(c["sub"], c["email"], "sub is stable and not the email");
    assert_eq!(c["aud"], "lessor");
    assert_eq!(c["nonce"], "nonce-123");
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["email_verified"], true);
    assert_eq!(c["name"], "Alice Platform");
    assert_eq!(c["groups"], serde_json::json!(["platform"]));
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert!(exp > iat && exp - iat == 600, "iat {iat} exp {exp}");

    // userinfo with the access token; the ID token is not an access token.
    let info: Value = http()
        .get(format!("{}/userinfo", idp.issuer))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((info["sub"].as_str(), info["email"].as_str()), (Some("9c1f4e2a-0001"), Some("alice@example.com")));
    assert_eq!(info["groups"], serde_json::json!(["platform"]));
    let r = http().get(format!("{}/userinfo", idp.issuer)).bearer_auth(t["id_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The access token ends with its life.
    idp.clock().advance(Duration::from_secs(601));
    let r = http().get(format!("{}/userinfo", idp.issuer)).bearer_auth(t["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // client_secret_post works too; bob is in finance; fewer scopes release fewer claims.
    let (verifier, challenge) = pkce();
    let mut params = authorize_params(&challenge, "s2");
    params[3].1 = "openid email".into();
    let h = http();
    let html = h.get(format!("{}/authorize", idp.issuer)).query(&params).send().await.unwrap().text().await.unwrap();
    let mut form = hidden_fields(&html);
    form.push(("user".into(), "bob".into()));
    let back = location(&h.post(format!("{}/authorize", idp.issuer)).form(&form).send().await.unwrap());
    let code = query(&back, "code").unwrap();
    let r = h
        .post(format!("{}/token", idp.issuer))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("client_id", "lessor"),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["scope"], "openid email");
    let c = verify_id_token(&idp, t["id_token"].as_str().unwrap()).await;
    assert_eq!((c["sub"].as_str(), c["email"].as_str()), (Some("9c1f4e2a-0002"), Some("bob@example.com")));
    assert!(c.get("groups").is_none() && c.get("name").is_none(), "{c}");
    idp.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_refuses_with_the_oauth_error_codes() {
    let idp = start(|_| {}).await;
    let (verifier, challenge) = pkce();

    // A wrong client secret changes nothing: the code still works after.
    let code = code_for(&idp, &challenge, "carol").await;
    let (s, e) = redeem(&idp, &code, &verifier, REDIRECT, "wrong-secret-0123456789").await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")));
    let r = http()
        .post(format!("{}/token", idp.issuer))
        .basic_auth("lessor", Some(SECRET))
        .form(&[("grant_type", "authorization_code"), ("code", &code), ("client_secret", SECRET)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "two client authentication methods at once");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    let r = http()
        .post(format!("{}/token", idp.issuer))
        .form(&[("grant_type", "authorization_code"), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!((r.status(), r.json::<Value>().await.unwrap()["error"].clone()), (StatusCode::UNAUTHORIZED, "invalid_client".into()));
    let (s, t) = redeem(&idp, &code, &verifier, REDIRECT, SECRET).await;
    assert_eq!(s, 200, "{t}");
    let c = verify_id_token(&idp, t["id_token"].as_str().unwrap()).await;
    assert_eq!(c["groups"], serde_json::json!(["account:acme"]));

    // Reused code.
    let (s, e) = redeem(&idp, &code, &verifier, REDIRECT, SECRET).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));

    // Wrong PKCE verifier (well-formed, not the one): refused, and the code is spent.
    let code = code_for(&idp, &challenge, "alice").await;
    let (other_verifier, _) = pkce();
    let (s, e) = redeem(&idp, &code, &other_verifier, REDIRECT, SECRET).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{e}");
    assert!(e["error_description"].as_str().unwrap().contains("PKCE"));
    let (_, e) = redeem(&idp, &code, &verifier, REDIRECT, SECRET).await;
    assert_eq!(e["error"], "invalid_grant");

    // A malformed verifier is refused before the code is touched.
    let code = code_for(&idp, &challenge, "alice").await;
    let (s, e) = redeem(&idp, &code, "short", REDIRECT, SECRET).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));

    // Wrong redirect_uri at the token endpoint.
    let (s, e) = redeem(&idp, &code, &verifier, "http://127.0.0.1:9/other", SECRET).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    assert!(e["error_description"].as_str().unwrap().contains("redirect_uri"));

    // Expired: codes live 60 s.
    let code = code_for(&idp, &challenge, "dave").await;
    idp.clock().advance(Duration::from_secs(61));
    let (s, e) = redeem(&idp, &code, &verifier, REDIRECT, SECRET).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    // ... while one 59 s old still works.
    let code = code_for(&idp, &challenge, "dave").await;
    idp.clock().advance(Duration::from_secs(59));
    assert_eq!(redeem(&idp, &code, &verifier, REDIRECT, SECRET).await.0, 200);

    // Unknown grant type.
    let r = http()
        .post(format!("{}/token", idp.issuer))
        .basic_auth("lessor", Some(SECRET))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    idp.shutdown().await;
}

#[tokio::test]
async fn authorize_refuses_bad_requests_without_redirecting_to_strangers() {
    let idp = start(|_| {}).await;
    let (_, challenge) = pkce();
    let h = http();
    let get = |params: Vec<(&'static str, String)>| {
        let h = h.clone();
        let url = format!("{}/authorize", idp.issuer);
        async move { h.get(url).query(&params).send().await.unwrap() }
    };
    // Unregistered redirect_uri (even a prefix match) or client: a page, never a redirect.
    for (k, v) in [("redirect_uri", format!("{REDIRECT}/x")), ("redirect_uri", "http://evil.example/cb".into()), ("client_id", "other".into())] {
        let mut p = authorize_params(&challenge, "s");
        p.iter_mut().find(|(n, _)| *n == k).unwrap().1 = v.clone();
        let r = get(p).await;
        assert_eq!(r.status(), 400, "{k}={v}");
        assert!(r.headers().get("location").is_none());
    }
    // Everything else goes back to the client with the error and the state.
    for (k, v, error) in [
        ("response_type", "token", "unsupported_response_type"),
        ("code_challenge_method", "plain", "invalid_request"),
        ("code_challenge", "", "invalid_request"),
        ("nonce", "", "invalid_request"),
        ("scope", "email", "invalid_scope"),
        ("scope", "openid admin", "invalid_scope"),
    ] {
        let mut p = authorize_params(&challenge, "keep-me");
        p.iter_mut().find(|(n, _)| *n == k).unwrap().1 = v.into();
        let r = get(p).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{k}={v}");
        let back = location(&r);
        assert!(back.as_str().starts_with(REDIRECT));
        assert_eq!(query(&back, "error").as_deref(), Some(error), "{k}={v}");
        assert_eq!(query(&back, "state").as_deref(), Some("keep-me"));
    }
    let mut p = authorize_params(&challenge, "");
    p.retain(|(k, _)| *k != "state");
    assert_eq!(query(&location(&get(p).await), "error").as_deref(), Some("invalid_request"), "state is required");

    // A tampered submit is checked again.
    let html = get(authorize_params(&challenge, "s")).await.text().await.unwrap();
    let mut form = hidden_fields(&html);
    form.iter_mut().find(|(k, _)| k == "redirect_uri").unwrap().1 = "http://evil.example/cb".into();
    form.push(("user".into(), "alice".into()));
    let r = h.post(format!("{}/authorize", idp.issuer)).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    // Cancel is access_denied; an unknown user is refused.
    let mut form = hidden_fields(&html);
    form.push(("user".into(), "".into()));
    let back = location(&h.post(format!("{}/authorize", idp.issuer)).form(&form).send().await.unwrap());
    assert_eq!(query(&back, "error").as_deref(), Some("access_denied"));
    let mut form = hidden_fields(&html);
    form.push(("user".into(), "mallory".into()));
    assert_eq!(h.post(format!("{}/authorize", idp.issuer)).form(&form).send().await.unwrap().status(), 400);
    assert_eq!(idp.pending().codes, 0);
    idp.shutdown().await;
}

#[tokio::test]
async fn markup_in_state_and_redirect_uri_is_escaped() {
    let idp = start(|_| {}).await;
    let (verifier, challenge) = pkce();
    let evil = "\"><script>alert(1)</script><x a='";
    let h = http();
    let r = h.get(format!("{}/authorize", idp.issuer)).query(&authorize_params(&challenge, evil)).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let html = r.text().await.unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;x a=&#x27;"), "{html}");
    // The state still makes the round trip unchanged.
    let mut form = hidden_fields(&html);
    form.push(("user".into(), "alice".into()));
    let back = location(&h.post(format!("{}/authorize", idp.issuer)).form(&form).send().await.unwrap());
    assert_eq!(query(&back, "state").as_deref(), Some(evil));
    assert_eq!(redeem(&idp, &query(&back, "code").unwrap(), &verifier, REDIRECT, SECRET).await.0, 200);

    let mut p = authorize_params(&challenge, "s");
    p[2].1 = format!("http://x/{evil}");
    let html = h.get(format!("{}/authorize", idp.issuer)).query(&p).send().await.unwrap().text().await.unwrap();
    assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
    let mut p = authorize_params(&challenge, "s");
    p[1].1 = evil.into();
    let html = h.get(format!("{}/authorize", idp.issuer)).query(&p).send().await.unwrap().text().await.unwrap();
    assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
    let html = h.get(format!("{}/end_session", idp.issuer)).query(&[("post_logout_redirect_uri", evil)]).send().await.unwrap();
    assert_eq!(html.status(), 400);
    assert!(!html.text().await.unwrap().contains("<script>"));
    idp.shutdown().await;
}

async fn device_start(idp: &RunningDevIdp) -> Value {
    let r = http()
        .post(format!("{}/device_authorization", idp.issuer))
        .basic_auth("lessor", Some(SECRET))
        .form(&[("scope", SCOPE)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn poll(idp: &RunningDevIdp, device_code: &str) -> (StatusCode, Value) {
    let r = http()
        .post(format!("{}/token", idp.issuer))
        .basic_auth("lessor", Some(SECRET))
        .form(&[("grant_type", DEVICE_GRANT), ("device_code", device_code)])
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Opens the verification page the way a person does (the complete URI)
/// and clicks `user` ("" = deny).
async fn approve(idp: &RunningDevIdp, d: &Value, user: &str) -> reqwest::Response {
    let h = http();
    let html = h.get(d["verification_uri_complete"].as_str().unwrap()).send().await.unwrap().text().await.unwrap();
    assert!(html.contains(d["user_code"].as_str().unwrap()), "{html}");
    let mut form = hidden_fields(&html);
    form.push(("user".into(), user.into()));
    h.post(format!("{}/device", idp.issuer)).form(&form).send().await.unwrap()
}

#[tokio::test]
async fn device_flow_pending_slow_down_approve_token() {
    let idp = start(|_| {}).await;
    let d = device_start(&idp).await;
    let user_code = d["user_code"].as_str().unwrap();
    assert!(user_code.len() == 9 && user_code.as_bytes()[4] == b'-', "{user_code}");
    assert_eq!(d["verification_uri"], format!("{}/device", idp.issuer));
    assert_eq!((d["interval"].as_u64(), d["expires_in"].as_u64()), (Some(5), Some(600)));
    let dc = d["device_code"].as_str().unwrap();

    let (s, e) = poll(&idp, dc).await;
    assert_eq!((s, e["error"].as_str()), (StatusCode::BAD_REQUEST, Some("authorization_pending")));
    let (_, e) = poll(&idp, dc).await;
    assert_eq!(e["error"], "slow_down", "polled again at once");
    // The interval is now 10 s: 6 s later is still too fast.
    idp.clock().advance(Duration::from_secs(6));
    assert_eq!(poll(&idp, dc).await.1["error"], "slow_down");

    // The person types the code (any case, without the dash) on the page.
    let h = http();
    let typed = user_code.replace('-', "").to_lowercase();
    let r = h.get(format!("{}/device", idp.issuer)).query(&[("user_code", &typed)]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(user_code));
    let r = h.get(format!("{}/device", idp.issuer)).query(&[("user_code", "BCDF-GHJK")]).send().await.unwrap();
    assert_eq!(r.status(), 400, "an unknown code");
    let r = approve(&idp, &d, "bob").await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Signed in as bob"));
    // The user code is spent.
    let r = h.get(d["verification_uri_complete"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 400);

    idp.clock().advance(Duration::from_secs(15));
    let (s, t) = poll(&idp, dc).await;
    assert_eq!(s, 200, "{t}");
    let c = verify_id_token(&idp, t["id_token"].as_str().unwrap()).await;
    assert_eq!((c["sub"].as_str(), c["email"].as_str()), (Some("9c1f4e2a-0002"), Some("bob@example.com")));
    assert_eq!(c["groups"], serde_json::json!(["finance"]));
    assert!(c.get("nonce").is_none());
    // The device code is single use.
    idp.clock().advance(Duration::from_secs(60));
    assert_eq!(poll(&idp, dc).await.1["error"], "invalid_grant");

    // Denied.
    let d = device_start(&idp).await;
    assert_eq!(approve(&idp, &d, "").await.status(), 200);
    assert_eq!(poll(&idp, d["device_code"].as_str().unwrap()).await.1["error"], "access_denied");

    // Expired (10 minutes), also for the page.
    let d = device_start(&idp).await;
    idp.clock().advance(Duration::from_secs(601));
    let r = http().get(d["verification_uri_complete"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(poll(&idp, d["device_code"].as_str().unwrap()).await.1["error"], "expired_token");

    // The device endpoint authenticates the client too.
    let r = http()
        .post(format!("{}/device_authorization", idp.issuer))
        .form(&[("client_id", "lessor"), ("client_secret", "wrong-secret-000000"), ("scope", SCOPE)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    idp.shutdown().await;
}

#[tokio::test]
async fn refuses_to_listen_off_loopback() {
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let s = DevIdpSettings::new("lessor", SecretString::from(SECRET), vec![REDIRECT.into()]);
        match dev_idp::start(addr.parse().unwrap(), s).await {
            Err(DevIdpError::NotLoopback(a)) => assert_eq!(a.to_string(), addr),
            Err(e) => panic!("{addr}: {e}"),
            Ok(_) => panic!("{addr}: the dev provider listened off loopback"),
        }
    }
    let idp = start(|_| {}).await;
    assert!(idp.addr.ip().is_loopback());
    idp.shutdown().await;
}

#[tokio::test]
async fn caps_hold_under_a_flood() {
    let idp = start(|s| s.max_pending = 5).await;
    let (_, challenge) = pkce();
    let h = http();
    // Opening the page keeps nothing: 300 requests, no table grows.
    let url = format!("{}/authorize", idp.issuer);
    let floods = (0..300).map(|i| {
        let h = h.clone();
        let url = url.clone();
        let p = authorize_params(&challenge, &format!("s{i}"));
        async move { h.get(url).query(&p).send().await.unwrap().status() }
    });
    assert!(futures::future::join_all(floods).await.iter().all(|s| *s == 200));
    assert_eq!(idp.pending(), dev_idp::Pending { codes: 0, devices: 0 });
    // Clicks issue codes up to the cap, then the client hears why.
    for _ in 0..5 {
        assert!(query(&click(&idp, &challenge, "s", "alice").await, "code").is_some());
    }
    for _ in 0..20 {
        let back = click(&idp, &challenge, "s", "alice").await;
        assert_eq!(query(&back, "error").as_deref(), Some("temporarily_unavailable"));
    }
    assert_eq!(idp.pending().codes, 5);
    for _ in 0..5 {
        device_start(&idp).await;
    }
    let r = h.post(format!("{}/device_authorization", idp.issuer)).basic_auth("lessor", Some(SECRET)).form(&[("scope", SCOPE)]).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
    assert_eq!(idp.pending(), dev_idp::Pending { codes: 5, devices: 5 });
    // Expired entries make room again.
    idp.clock().advance(Duration::from_secs(1201));
    assert!(query(&click(&idp, &challenge, "s", "alice").await, "code").is_some());
    device_start(&idp).await;
    assert_eq!(idp.pending(), dev_idp::Pending { codes: 1, devices: 1 });
    idp.shutdown().await;
}

#[tokio::test]
async fn end_session_returns_only_to_registered_uris() {
    let idp = start(|_| {}).await;
    let h = http();
    let r = h.get(format!("{}/end_session", idp.issuer)).query(&[("post_logout_redirect_uri", "http://127.0.0.1:9/"), ("state", "z")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(location(&r).as_str(), "http://127.0.0.1:9/?state=z");
    let r = h.get(format!("{}/end_session", idp.issuer)).query(&[("post_logout_redirect_uri", "http://evil.example/")]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(h.get(format!("{}/end_session", idp.issuer)).send().await.unwrap().status(), 200);
    idp.shutdown().await;
}

/// A data directory and log file for a `lessor dev` run.
struct Dev {
    tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Dev {
    fn new() -> Dev {
        let tmp = tempfile::tempdir().unwrap();
        let (data, log) = (tmp.path().join("dev"), tmp.path().join("dev.log"));
        Dev { tmp, data, log }
    }
}

/// `lessor dev` on a free port with its state in `data`, from the
/// repository (its `policies/`), until it prints `marker`: the child and the
/// URL after the marker.
fn spawn_dev(data: &std::path::Path, log: &std::path::Path, marker: &str) -> (std::process::Child, String) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = data.display().to_string();
    super::binary::spawn_until(&["dev", "--listen", "127.0.0.1:0", "--data-dir", &data], repo, &[], log, marker)
}

#[test]
fn lessor_dev_runs_the_provider_for_its_people() {
    use std::os::unix::fs::PermissionsExt;
    let Dev { tmp: _tmp, data, log } = Dev::new();
    let (child, issuer) = spawn_dev(&data, &log, "dev OpenID provider at ");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secret_file = data.join("dev-idp.client-secret");
    assert_eq!(std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let cfg = std::fs::read_to_string(data.join("lessor.toml")).unwrap();
    let listen = cfg.lines().find_map(|l| l.strip_prefix("listen = \"")).unwrap().trim_end_matches('"').to_owned();
    assert!(!listen.ends_with(":0"), "the config names the real port: {listen}");
    assert!(cfg.contains(&format!("issuer = \"{issuer}\"")), "the [people] section names the provider:\n{cfg}");
    assert!(cfg.contains("client_secret_file = "));
    let device_code = rt.block_on(async {
        let h = http();
        let d: Value = h.get(format!("{issuer}/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
        assert_eq!(d["issuer"], issuer);
        // The secret file authenticates lessor at the provider; a wrong one does not.
        let mut device_code = String::new();
        for (s, want) in [(secret.trim(), 200), ("0000000000000000000000", 401)] {
            let r = h
                .post(format!("{issuer}/device_authorization"))
                .basic_auth("lessor", Some(s))
                .form(&[("scope", SCOPE)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), want);
            if want == 200 {
                device_code = r.json::<Value>().await.unwrap()["device_code"].as_str().unwrap().to_owned();
            }
        }
        // lessor's callback on its real address is the registered redirect URI.
        let (_, challenge) = pkce();
        let mut p = authorize_params(&challenge, "s");
        p[2].1 = format!("http://{listen}/v1/people/callback");
        let r = h.get(format!("{issuer}/authorize")).query(&p).send().await.unwrap();
        assert_eq!(r.status(), 200);
        device_code
    });
    super::binary::stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("dev OpenID provider is serving"), "{text}");
    for (what, v) in [("client secret", secret.trim()), ("device code", device_code.as_str())] {
        assert!(!text.contains(v), "the {what} is in lessor dev's log");
    }
    // Stopped with the daemon.
    assert!(std::net::TcpStream::connect(issuer.trim_start_matches("http://")).is_err(), "the provider outlived lessor dev");
}

/// A browser that follows `lessor dev`'s printed sign-in link, clicks
/// `user` on the dev provider's page and comes back with a session.
async fn click_through_dev_sign_in(link: &str, base: &str, user: &str) -> crate::people::Browser {
    use crate::people::Browser;
    // The link: lessor sends the browser to the dev provider.
    let b = Browser::new();
    let r = b.get(link).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let auth = r.location.clone().unwrap();
    assert!(auth.contains("/authorize?"), "{auth}");
    assert_eq!(query(&Url::parse(&auth).unwrap(), "redirect_uri").as_deref(), Some(format!("{base}/v1/people/callback").as_str()));
    // The provider's page: one button per dev user.
    let r = b.get(&auth).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for u in ["alice", "bob", "carol", "dave"] {
        assert!(r.body.contains(&format!("name=\"user\" value=\"{u}\"")), "{}", r.body);
    }
    let mut form = hidden_fields(&r.body);
    form.push(("user".into(), user.into()));
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let action = {
        let u = Url::parse(&auth).unwrap();
        format!("{}://{}/authorize", u.scheme(), u.host_str().unwrap().to_owned() + ":" + &u.port().unwrap().to_string())
    };
    let r = b.post_form(&action, &form).await;
    let back = r.location.clone().unwrap_or_else(|| panic!("no redirect after the click: {} {}", r.status, r.body));
    assert!(back.starts_with(&format!("{base}/v1/people/callback?")), "{back}");
    // The callback: a session cookie, then back to where the link started.
    let r = b.get(&back).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(r.set_cookies.iter().any(|c| c.starts_with("lessor_session=lsr_person_")), "{:?}", r.set_cookies);
    b
}

/// The newcomer's one click, end to end with the real `lessor dev`: the
/// printed sign-in link, followed by a browser that keeps cookies, goes to
/// the dev provider's page; the alice button sends it back to lessor's
/// callback, which opens a session: `/v1/people/me` says alice in
/// platform. Then `lessor login --provider dev` (the device flow, approved
/// on the dev provider's /device page) and `lessor whoami`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessor_dev_signs_a_newcomer_in_with_one_click_and_lessor_login() {
    use crate::people::cli;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let Dev { tmp: _tmp, data, log } = Dev::new();
    let (child, link) = spawn_dev(&data, &log, "Sign in: ");
    let base = link.split("/v1/").next().unwrap().to_owned();
    assert!(link.ends_with("/v1/people/login?provider=dev") && !base.ends_with(":0"), "{link}");

    let b = click_through_dev_sign_in(&link, &base, "alice").await;
    let r = b.get(&format!("{base}/v1/people/me")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let me: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(me["person"]["provider"], "dev");
    assert_eq!(me["person"]["email"], "alice@example.com");
    assert_eq!(me["person"]["name"], "Alice Platform");
    assert_eq!(me["person"]["groups"], serde_json::json!(["platform"]));
    // people.cedar lets platform read connections: Cedar decided for her.
    let r = b.get(&format!("{base}/v1/admin/connections")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // `lessor login --provider dev`: the device flow against the dev daemon.
    let home = tempfile::tempdir().unwrap();
    let mut login = Command::new(crate::support::daemon::BIN)
        .args(["login", "--addr", &base, "--provider", "dev"])
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = login.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut verification = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while verification.is_none() && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(v) = l.strip_prefix("verification: ") {
                verification = Some(v.trim().to_owned());
            }
            lines.push(l);
        }
    }
    let Some(verification) = verification else {
        let _ = login.kill();
        panic!("lessor login printed no verification page: {lines:?}");
    };
    // The person opens the page, sees the code and clicks bob.
    let h = http();
    let html = h.get(&verification).send().await.unwrap().text().await.unwrap();
    let mut form = hidden_fields(&html);
    assert!(!form.is_empty(), "the confirmation page: {html}");
    form.push(("user".into(), "bob".into()));
    let device = format!("{}/device", verification.split("/device").next().unwrap());
    let r = h.post(&device).form(&form).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = login.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = login.kill();
                panic!("lessor login did not finish after approval");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        lines.push(l);
    }
    assert!(status.success(), "lessor login failed: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("signed in as bob@example.com (dev#")), "{lines:?}");
    let (code, out, err) = cli(&["whoami", "--addr", &base], home.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Bob Finance <bob@example.com>") && out.contains("finance"), "{out}");
    // Where `lessor dev`'s admin token lies about (LESSOR_DEV_DIR), a
    // signed-in person's `lessor connection` commands still run as them,
    // never silently as the admin token (an approval would be break-glass).
    let o = Command::new(crate::support::daemon::BIN)
        .args(["connection", "list"])
        .env("LESSOR_ADDR", &base)
        .env("XDG_CONFIG_HOME", home.path())
        .env("LESSOR_DEV_DIR", &data)
        .env_remove("LESSOR_ADMIN_TOKEN")
        .env_remove("LESSOR_JWT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let audit = || -> Vec<Value> {
        std::fs::read_to_string(data.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let mut seen = None;
    for _ in 0..50 {
        seen = audit().into_iter().find(|e| {
            e["action"] == "decide" && e["details"]["policy_action"] == "connection_read" && e["actor"]["name"] == "bob@example.com"
        });
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.expect("`lessor connection list` ran as bob (else as the dev admin token)");
    assert_eq!((seen["actor"]["kind"].as_str(), seen["actor"]["claims_policy"].as_str()), (Some("person"), Some("dev")), "{seen}");
    super::binary::stop(child);
}

/// `lessor dev` runs customer tokens as well: carol (account:acme) signs in
/// with one click and creates a token; resource server `dev-api`, with the
/// secret `lessor dev` wrote (0600), introspects it as active for acme;
/// the policy's "too broad" combination asks for confirmation; dave
/// (account:globex) does not see acme. After a restart on the same data
/// directory the secret and the token still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessor_dev_lets_carol_create_a_customer_token_that_dev_api_introspects() {
    use std::os::unix::fs::PermissionsExt;
    let Dev { tmp: _tmp, data, log } = Dev::new();
    let (child, link) = spawn_dev(&data, &log, "Sign in: ");
    let base = link.split("/v1/").next().unwrap().to_owned();
    let secret_file = data.join("dev-api.secret");
    assert_eq!(std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let introspect = |base: String, secret: String, token: String| async move {
        let r = http()
            .post(format!("{base}/v1/introspect"))
            .basic_auth("dev-api", Some(secret.trim()))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
    };

    let carol = click_through_dev_sign_in(&link, &base, "carol").await;
    let me: Value = serde_json::from_str(&carol.get(&format!("{base}/v1/people/me")).await.body).unwrap();
    assert_eq!(me["person"]["groups"], serde_json::json!(["account:acme"]), "{me}");
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();
    let tokens = format!("{base}/v1/accounts/acme/tokens");
    let r = carol
        .post_json(&tokens, serde_json::json!({"name": "billing sync", "scopes": ["invoices.read", "security.write"]}), Some(&csrf))
        .await;
    assert_eq!(r.status, 409, "the shipped policy calls this broad: {}", r.body);
    assert!(r.body.contains("confirmation_required"), "{}", r.body);
    let r = carol.post_json(&tokens, serde_json::json!({"name": "billing sync", "scopes": ["invoices.read"]}), Some(&csrf)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("lsrc_"), "{token}");

    let (st, i) = introspect(base.clone(), secret.clone(), token.clone()).await;
    assert_eq!(st, 200, "{i}");
    assert_eq!((i["active"].as_bool(), i["account"].as_str(), i["scope"].as_str()), (Some(true), Some("acme"), Some("invoices.read")), "{i}");
    assert_eq!(i["environment"], "staging");
    let (st, _) = introspect(base.clone(), "0".repeat(64), token.clone()).await;
    assert_eq!(st, 401, "a wrong resource-server secret is refused");

    let dave = click_through_dev_sign_in(&link, &base, "dave").await;
    assert_eq!(dave.get(&tokens).await.status, 404, "globex's dave does not see acme");
    super::binary::stop(child);

    // Same data directory again: the secret is kept, the token still works.
    let (child, link) = spawn_dev(&data, &log, "Sign in: ");
    let base = link.split("/v1/").next().unwrap().to_owned();
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret, "dev-api's secret survives a restart");
    let (st, i) = introspect(base, secret.clone(), token.clone()).await;
    assert_eq!((st, i["active"].as_bool()), (200, Some(true)), "{i}");
    super::binary::stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    for (what, v) in [("customer token", token.as_str()), ("dev-api secret", secret.trim())] {
        assert!(!text.contains(v), "the {what} is in lessor dev's log");
    }
}
