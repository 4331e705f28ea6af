//! The full flow over real HTTP: JWT -> policy -> plugin -> lease.

use serde_json::json;
use x509_parser::prelude::*;

use crate::support::{Daemon, Issuer};

fn pem_der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    p.contents
}

#[tokio::test]
async fn pki_certificate_chains_to_ca_with_names_expiry_and_key() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web", "ttl": "10m"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["role"], "pki/web");
    assert_eq!(v["ttl_seconds"], 600);
    assert_eq!(v["renewable"], false);
    assert_eq!(v["policies"], json!(["gh-main-web"]));
    let lease_id = v["lease_id"].as_str().unwrap();
    assert!(lease_id.starts_with("lse_"));

    let cred = &v["credential"];
    let cert_der = pem_der(cred["certificate"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();

    // Chains to the CA served at /v1/pki/{role}/ca.
    let ca_pem = String::from_utf8(d.bytes("/v1/pki/pki/web/ca").await).unwrap();
    let ca_der = pem_der(&ca_pem);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).expect("certificate is signed by the role's CA");
    assert_eq!(cert.issuer(), ca.subject());
    // The short role name works too.
    assert_eq!(d.bytes("/v1/pki/web/ca").await, ca_pem.as_bytes());

    // Names are the templated allowed names.
    let mut names: Vec<String> = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(s) => names.push(format!("dns:{s}")),
                    GeneralName::URI(s) => names.push(format!("uri:{s}")),
                    _ => {}
                }
            }
        }
    }
    names.sort();
    assert_eq!(names, vec!["dns:acme.svc.lessor.test", "uri:spiffe://lessor.test/gh/acme/api"]);

    // not_after matches the lease expiry.
    let expires = ::time::OffsetDateTime::parse(v["expires_at"].as_str().unwrap(), &::time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(cert.validity().not_after.timestamp(), expires.unix_timestamp());

    // The private key matches the certificate's public key.
    let key = rcgen::KeyPair::from_pem(cred["private_key"].as_str().unwrap()).unwrap();
    assert_eq!(key.public_key_raw(), cert.public_key().subject_public_key.data.as_ref());

    // The lease is visible to its owner without the secret.
    let (s, l) = d.get(&format!("/v1/leases/{lease_id}"), &jwt).await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["state"], "active");
    assert!(l.get("credential").is_none());
    assert!(!l.to_string().contains("PRIVATE KEY"));

    // Certificates have a fixed lifetime: renew is a precise 409.
    let (s, e) = d.post(&format!("/v1/leases/{lease_id}/renew"), &jwt, json!({})).await;
    assert_eq!(s, 409, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("cannot be renewed"), "{e}");

    // Revoke: the serial is on the CRL at once.
    let serial = cred["serial"].as_str().unwrap().to_lowercase();
    assert!(!d.crl_serials("pki/web").await.contains(&serial));
    let (s, r) = d.delete(&format!("/v1/leases/{lease_id}"), &jwt).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "revoked");
    assert!(d.crl_serials("pki/web").await.contains(&serial), "serial {serial} on the CRL");
}

#[tokio::test]
async fn token_verifies_against_jwks_and_introspection_follows_revocation() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "token/orders", "ttl": "5m", "scopes": ["orders.read"]})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["scopes"], json!(["orders.read"]));
    let token = v["credential"]["token"].as_str().unwrap().to_owned();
    let lease_id = v["lease_id"].as_str().unwrap();

    // Verifies against the published JWKS.
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&d.bytes("/.well-known/jwks.json").await).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid in JWKS");
    let mut val = jsonwebtoken::Validation::new(header.alg);
    val.set_audience(&["lessor:token/orders"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(), &val)
        .expect("token verifies against the JWKS");
    assert_eq!(data.claims["jti"], lease_id);
    assert_eq!(data.claims["scope"], "orders.read");
    assert_eq!(data.claims["sub"], "repo:acme/api:ref:refs/heads/main");

    let i = d.introspect(&token).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["scope"], "orders.read");

    let (s, _) = d.delete(&format!("/v1/leases/{lease_id}"), &jwt).await;
    assert_eq!(s, 200);
    let i = d.introspect(&token).await;
    assert_eq!(i, json!({"active": false}));
}

#[tokio::test]
async fn roles_lists_what_the_caller_may_request_with_scope_descriptions() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let (s, v) = d.get("/v1/roles", &iss.token()).await;
    assert_eq!(s, 200, "{v}");
    let roles: Vec<&str> = v["roles"].as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, vec!["pki/web", "token/orders"]);
    let orders = &v["roles"][1];
    assert_eq!(orders["scopes"][0]["name"], "orders.read");
    assert_eq!(orders["scopes"][0]["allows"], "Read orders.");
    assert_eq!(orders["scopes"][0]["denies"], "Cannot change orders.");
    assert_eq!(orders["scopes"][2]["name"], "invoices.send");
    assert_eq!(orders["max_ttl_seconds"], 3600);

    // A workload no policy permits sees no roles.
    let other = iss.sign(&iss.gh_claims("evil/x", "refs/heads/main"));
    let (s, v) = d.get("/v1/roles", &other).await;
    assert_eq!(s, 200);
    assert_eq!(v["roles"], json!([]));
}

#[tokio::test]
async fn kubernetes_service_account_tokens_map_nested_claims() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let now = crate::support::now();
    let claims = |sa: &str| {
        json!({
            "iss": iss.url, "aud": "lessor", "sub": format!("system:serviceaccount:payments:{sa}"),
            "iat": now, "exp": now + 300,
            "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": sa, "uid": "u1"}}
        })
        .as_object()
        .unwrap()
        .clone()
    };
    let (s, v) = d.issue(&iss.sign(&claims("api")), json!({"role": "token/orders", "scopes": ["orders.read"]})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["policies"], json!(["k8s-payments-api-tokens"]));
    let (s, v) = d.issue(&iss.sign(&claims("default")), json!({"role": "token/orders"})).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("k8s-no-default-service-account"), "{v}");
}

#[tokio::test]
async fn an_operator_jwt_allowed_by_policy_may_use_admin_endpoints() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let (s, _) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);
    let ops = iss.sign(&iss.gh_claims("acme/lessor-ops", "refs/heads/main"));
    let (s, v) = d.get("/v1/admin/leases", &ops).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["leases"].as_array().unwrap().len(), 1);
    let (s, v) = d.get("/v1/admin/leases", &iss.token()).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("admin endpoints need an admin credential"), "{v}");
}
