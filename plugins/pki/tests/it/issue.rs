use lessor_plugin::secrecy::ExposeSecret;
use lessor_plugin::{LeaseRef, PluginError, RenewRequest};
use rcgen::{KeyPair, PublicKeyData};
use serde_json::json;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};

use crate::support::*;

/// Issues with lessor-generated keys and checks everything a client relies on.
async fn issues_a_valid_certificate(key_type: &str) {
    let (plugin, _state) = standard(key_type).await;
    let expires_at = in_minutes(10);
    let req = request(api_workload(), json!({}), expires_at);
    let lease = req.lease_id.clone();
    let issued = plugin.issue(req).await.unwrap();

    let der = pem_der(public_str(&issued, "certificate"));
    let cert = parse_cert(&der);
    let ca_der = ca_der(plugin.as_ref(), ROLE).await;
    let ca = parse_cert(&ca_der);
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the role CA");
    assert_eq!(cert.issuer(), ca.subject());

    assert_eq!(
        sans(&cert),
        [format!("URI:{API_URI}"), format!("DNS:{API_DNS}")]
    );
    assert_eq!(issued.public["names"], json!([API_URI, API_DNS]));
    assert_eq!(cn(&cert), API_URI, "CN defaults to the first name");

    assert_eq!(
        cert.validity().not_after.timestamp(),
        expires_at.unix_timestamp()
    );
    assert_eq!(issued.expires_at, expires_at);
    let not_before = cert.validity().not_before.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - 40..=now - 25).contains(&not_before),
        "backdated ~30s: {not_before} vs {now}"
    );
    let not_after = time::OffsetDateTime::parse(
        public_str(&issued, "not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(not_after.unix_timestamp(), expires_at.unix_timestamp());

    let serial = expected_serial(&lease);
    assert_eq!(norm(cert.raw_serial()), norm(&serial));
    assert_eq!(public_str(&issued, "serial"), hex::encode(&serial));
    assert_eq!(issued.handle, json!({ "serial": hex::encode(&serial) }));

    let chain = issued.public["ca_chain"].as_array().unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(pem_der(chain[0].as_str().unwrap()), ca_der);

    // The returned key is PKCS#8 and belongs to the certificate.
    let key_pem = issued.secret["private_key"].expose_secret();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM"
    );
    let key = KeyPair::from_pem(key_pem).unwrap();
    assert_eq!(key.subject_public_key_info(), cert.public_key().raw);

    let alg = &cert.public_key().algorithm.algorithm;
    match key_type {
        "p256" => assert_eq!(*alg, OID_KEY_TYPE_EC_PUBLIC_KEY),
        "ed25519" => assert_eq!(*alg, OID_SIG_ED25519),
        _ => assert_eq!(*alg, OID_PKCS1_RSAENCRYPTION),
    }

    // Leaf, for TLS both ways.
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(!bc.value.ca);
    let eku = cert.extended_key_usage().unwrap().expect("eku").value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = cert.key_usage().unwrap().expect("key usage").value;
    assert!(ku.digital_signature());
    assert_eq!(ku.key_encipherment(), key_type == "rsa2048");
    assert!(!ku.key_cert_sign());

    // The private key never shows in Debug or the public fields.
    let body = key_pem.lines().nth(1).unwrap();
    assert!(!format!("{issued:?}").contains(body));
    assert!(!serde_json::to_string(&issued.public)
        .unwrap()
        .contains(body));
}

#[tokio::test]
async fn issues_p256() {
    issues_a_valid_certificate("p256").await;
}

#[tokio::test]
async fn issues_ed25519() {
    issues_a_valid_certificate("ed25519").await;
}

#[tokio::test]
async fn issues_rsa2048() {
    issues_a_valid_certificate("rsa2048").await;
}

#[tokio::test]
async fn common_name_template() {
    let (plugin, _) =
        plugin(json!({ "allowed_names": ALLOWED, "common_name": "{repo_name} service" })).await;
    let issued = issue(plugin.as_ref(), json!({})).await.unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    assert_eq!(cn(&parse_cert(&der)), "api service");
}

#[tokio::test]
async fn ttl_beyond_role_max_is_refused() {
    let (plugin, _) = standard("p256").await;
    let m = invalid(
        plugin
            .issue(request(api_workload(), json!({}), in_minutes(120)))
            .await,
    );
    assert!(
        m.starts_with("ttl ") && m.contains("exceeds role `web` max 1h"),
        "{m}"
    );
    // Within max_ttl + 5s is fine.
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(3602);
    plugin
        .issue(request(api_workload(), json!({}), at))
        .await
        .unwrap();
    let m = invalid(
        plugin
            .issue(request(api_workload(), json!({}), in_minutes(-1)))
            .await,
    );
    assert!(m.contains("is not in the future"), "{m}");
}

#[tokio::test]
async fn unknown_params_are_refused() {
    let (plugin, _) = standard("p256").await;
    let m = invalid(issue(plugin.as_ref(), json!({ "ttl": "1h" })).await);
    assert_eq!(
        m,
        "unknown parameter `ttl`; the pki plugin takes `names` or `csr`"
    );
}

#[tokio::test]
async fn renew_is_unsupported() {
    let (plugin, _) = standard("p256").await;
    assert!(!plugin.capabilities().can_renew && plugin.capabilities().can_revoke());
    // Revocation is published on the CRL; relying parties see it within a
    // CRL validity plus the refresh.
    match plugin.capabilities().revocation {
        lessor_plugin::Revocation::Published { via, max_delay_seconds: Some(s) } => {
            assert_eq!(via, "CRL");
            assert!((3600..=3600 + 600).contains(&s), "{s}");
        }
        other => panic!("pki revocation should be published on the CRL: {other:?}"),
    }
    let lease = LeaseRef {
        lease_id: lease_id(),
        role: ROLE.into(),
        handle: None,
        expires_at: in_minutes(5),
        root_version: None,
    };
    let r = plugin
        .renew(RenewRequest {
            lease,
            expires_at: in_minutes(10),
        })
        .await;
    assert!(matches!(&r, Err(PluginError::Unsupported(w)) if w == "renew"), "{r:?}");
}
