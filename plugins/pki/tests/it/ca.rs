use std::path::Path;
use std::sync::Arc;

use lessor_plugin::secrecy::SecretBox;
use lessor_plugin::{MemoryState, StateStore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use x509_parser::oid_registry::OID_SIG_ED25519;

use crate::support::*;

fn ca_params(cn: &str, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(days);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn build_on(
    state: Arc<MemoryState>,
    config: serde_json::Value,
) -> Arc<dyn lessor_plugin::Plugin> {
    lessor_pki::build(ctx(state), json!(null), vec![role(ROLE, config)])
        .await
        .unwrap()
}

#[tokio::test]
async fn a_generated_ca_is_kept_in_state_and_reused() {
    let state = Arc::new(MemoryState::new());
    let config = json!({ "allowed_names": ALLOWED });
    let first = build_on(state.clone(), config.clone()).await;
    let second = build_on(state.clone(), config.clone()).await;
    let ca = ca_der(first.as_ref(), ROLE).await;
    assert_eq!(ca, ca_der(second.as_ref(), ROLE).await);

    // A certificate from one instance verifies against the other's CA.
    let issued = issue(first.as_ref(), json!({})).await.unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    let other_ca = ca_der(second.as_ref(), ROLE).await;
    parse_cert(&der)
        .verify_signature(Some(parse_cert(&other_ca).public_key()))
        .unwrap();

    // What is stored: the key as a secret, the certificate in plain state.
    assert!(state.get_secret("ca/web/key").await.unwrap().is_some());
    assert!(state.get("ca/web/key").await.unwrap().is_none());
    let stored = state.get("ca/web/cert").await.unwrap().unwrap();
    assert_eq!(pem_der(std::str::from_utf8(&stored).unwrap()), ca);

    // A fresh state makes a different CA.
    let (third, _) = plugin(config).await;
    assert_ne!(ca, ca_der(third.as_ref(), ROLE).await);

    // The CA itself: CA:TRUE, cert + CRL signing, ~10 years, default CN.
    let cert = parse_cert(&ca);
    assert!(cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let left = cert.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (3649 * 86400..=3650 * 86400).contains(&left),
        "10 years, {left}s left"
    );
    assert_eq!(cn(&cert), "lessor corp/web CA");
}

#[tokio::test]
async fn the_winners_key_and_cert_are_used_after_a_lost_race() {
    // Another replica stored both first.
    let state = Arc::new(MemoryState::new());
    let winner = KeyPair::generate().unwrap();
    let winner_cert = ca_params("winner CA", 100).self_signed(&winner).unwrap();
    let secret = SecretBox::new(Box::new(winner.serialize_der()));
    assert!(state
        .put_secret_if_absent("ca/web/key", &secret)
        .await
        .unwrap());
    assert!(state
        .put_if_absent("ca/web/cert", winner_cert.pem().as_bytes())
        .await
        .unwrap());
    let plugin = build_on(state.clone(), json!({ "allowed_names": ALLOWED })).await;
    assert_eq!(
        ca_der(plugin.as_ref(), ROLE).await,
        winner_cert.der().to_vec()
    );

    // Another replica stored its key but had not stored a certificate yet.
    let state = Arc::new(MemoryState::new());
    let winner = KeyPair::generate().unwrap();
    let secret = SecretBox::new(Box::new(winner.serialize_der()));
    assert!(state
        .put_secret_if_absent("ca/web/key", &secret)
        .await
        .unwrap());
    let plugin = build_on(state.clone(), json!({ "allowed_names": ALLOWED })).await;
    let ca = ca_der(plugin.as_ref(), ROLE).await;
    assert_eq!(
        parse_cert(&ca).public_key().raw,
        winner.subject_public_key_info()
    );
    assert_eq!(
        state
            .get("ca/web/cert")
            .await
            .unwrap()
            .map(|c| pem_der(std::str::from_utf8(&c).unwrap())),
        Some(ca)
    );
}

#[tokio::test]
async fn a_stored_cert_that_does_not_match_the_key_is_an_error() {
    let state = Arc::new(MemoryState::new());
    let key = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    let cert = ca_params("mismatch", 100).self_signed(&other).unwrap();
    state
        .put_secret_if_absent("ca/web/key", &SecretBox::new(Box::new(key.serialize_der())))
        .await
        .unwrap();
    state
        .put_if_absent("ca/web/cert", cert.pem().as_bytes())
        .await
        .unwrap();
    let r = lessor_pki::build(
        ctx(state),
        json!({}),
        vec![role(ROLE, json!({ "allowed_names": ALLOWED }))],
    )
    .await;
    match r {
        Err(lessor_plugin::PluginError::State(e)) => {
            assert!(
                e.to_string()
                    .contains("the private key does not belong to the certificate"),
                "{e}"
            )
        }
        Err(e) => panic!("expected a state error, got {e:?}"),
        Ok(_) => panic!("expected a state error, got Ok"),
    }
}

#[tokio::test]
async fn a_generated_ca_can_be_ed25519_with_its_own_name() {
    let (plugin, _) = plugin(json!({
        "allowed_names": ALLOWED,
        "ca": { "generate": { "common_name": "Acme Issuing CA", "key_type": "ed25519" } },
    }))
    .await;
    let ca = ca_der(plugin.as_ref(), ROLE).await;
    let ca = parse_cert(&ca);
    assert_eq!(cn(&ca), "Acme Issuing CA");
    assert_eq!(ca.public_key().algorithm.algorithm, OID_SIG_ED25519);
    let issued = issue(plugin.as_ref(), json!({})).await.unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    parse_cert(&der)
        .verify_signature(Some(ca.public_key()))
        .unwrap();
    let v = plugin.validate().await.unwrap();
    assert_eq!(v.identity, "CA Acme Issuing CA");
}

#[tokio::test]
async fn a_ca_from_files_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = ca_params("Files CA", 365).self_signed(&key).unwrap();
    let cert_file = write(dir.path(), "ca.pem", &cert.pem());
    let key_file = write(dir.path(), "ca.key", &key.serialize_pem());

    let state = Arc::new(MemoryState::new());
    let plugin = build_on(
        state.clone(),
        json!({ "allowed_names": ALLOWED, "ca": { "cert_file": cert_file, "key_file": key_file } }),
    )
    .await;
    assert_eq!(ca_der(plugin.as_ref(), ROLE).await, cert.der().to_vec());
    assert!(
        state.get_secret("ca/web/key").await.unwrap().is_none(),
        "nothing generated"
    );

    let issued = issue(plugin.as_ref(), json!({})).await.unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    let leaf = parse_cert(&der);
    let ca = parse_cert(cert.der());
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(leaf.issuer(), ca.subject());
    crl_serials(plugin.as_ref(), ROLE).await;

    let v = plugin.validate().await.unwrap();
    assert_eq!(v.identity, "CA Files CA");
    assert_eq!(v.details["role.web.ca_source"], "file");
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[tokio::test]
async fn an_rsa_ca_in_pkcs1_from_files_is_used() {
    use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
    use rsa::pkcs8::EncodePrivateKey;
    let dir = tempfile::tempdir().unwrap();
    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let key = KeyPair::try_from(rsa_key.to_pkcs8_der().unwrap().as_bytes()).unwrap();
    let cert = ca_params("RSA CA", 365).self_signed(&key).unwrap();
    let cert_file = write(dir.path(), "ca.pem", &cert.pem());
    let key_file = write(
        dir.path(),
        "ca.key",
        &rsa_key.to_pkcs1_pem(LineEnding::LF).unwrap(),
    );

    let (plugin, _) = plugin(
        json!({ "allowed_names": ALLOWED, "ca": { "cert_file": cert_file, "key_file": key_file } }),
    )
    .await;
    let issued = issue(plugin.as_ref(), json!({})).await.unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    parse_cert(&der)
        .verify_signature(Some(parse_cert(cert.der()).public_key()))
        .unwrap();
    crl_serials(plugin.as_ref(), ROLE).await;
}

#[tokio::test]
async fn bad_ca_files_are_misconfigured() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    let cert = ca_params("Files CA", 365).self_signed(&key).unwrap();
    let cert_file = write(dir.path(), "ca.pem", &cert.pem());
    let other_file = write(dir.path(), "other.key", &other.serialize_pem());
    let missing = dir.path().join("missing.key").to_str().unwrap().to_owned();
    let mut leaf_params = ca_params("not a CA", 365);
    leaf_params.is_ca = IsCa::NoCa;
    let leaf_file = write(
        dir.path(),
        "leaf.pem",
        &leaf_params.self_signed(&key).unwrap().pem(),
    );
    let key_file = write(dir.path(), "ca.key", &key.serialize_pem());

    let build = |cert: &str, key: &str| {
        let config =
            json!({ "allowed_names": ALLOWED, "ca": { "cert_file": cert, "key_file": key } });
        lessor_pki::build(
            ctx(Arc::new(MemoryState::new())),
            json!({}),
            vec![role(ROLE, config)],
        )
    };
    let m = misconfigured(build(&cert_file, &other_file).await);
    assert!(
        m.starts_with("role `web`: `ca.cert_file`")
            && m.contains("the private key does not belong"),
        "{m}"
    );
    assert!(!m.contains("PRIVATE"), "{m}");
    let m = misconfigured(build(&cert_file, &missing).await);
    assert!(
        m.starts_with("role `web`: cannot read `ca.key_file`"),
        "{m}"
    );
    let m = misconfigured(build(&leaf_file, &key_file).await);
    assert!(m.contains("not a CA"), "{m}");
    let m = misconfigured(build(&key_file, &key_file).await);
    assert!(m.contains("no `CERTIFICATE` PEM block"), "{m}");
    let m = misconfigured(build(&cert_file, &cert_file).await);
    assert!(m.contains("no `PRIVATE KEY` PEM block"), "{m}");
}

#[tokio::test]
async fn validate_warns_about_a_ca_near_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = ca_params("Short CA", 10).self_signed(&key).unwrap();
    let cert_file = write(dir.path(), "ca.pem", &cert.pem());
    let key_file = write(dir.path(), "ca.key", &key.serialize_pem());
    let mut spec = role(
        ROLE,
        json!({ "allowed_names": ALLOWED, "ca": { "cert_file": cert_file, "key_file": key_file } }),
    );
    spec.max_ttl = std::time::Duration::from_secs(30 * 86400);
    let plugin = lessor_pki::build(ctx(Arc::new(MemoryState::new())), json!({}), vec![spec])
        .await
        .unwrap();
    let v = plugin.validate().await.unwrap();
    assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
    // The core's root-credential metric reads the CA's notAfter.
    let expiry = plugin.credential_expiry().await.unwrap().unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
    assert_eq!(expiry.unix_timestamp(), x509.validity().not_after.timestamp());
    assert!(
        v.warnings[0].starts_with("the CA of role `web` (Short CA) expires in 9 days"),
        "{}",
        v.warnings[0]
    );

    // Certificates cannot outlive their CA.
    plugin
        .issue(request(api_workload(), json!({}), in_minutes(5)))
        .await
        .unwrap();
    let r = plugin
        .issue(request(api_workload(), json!({}), in_minutes(20 * 24 * 60)))
        .await;
    match r {
        Err(lessor_plugin::PluginError::Permanent(m)) => {
            assert!(m.contains("but the CA of role `web` ends at"), "{m}")
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
}

#[tokio::test]
async fn validate_names_every_ca() {
    let state = Arc::new(MemoryState::new());
    let roles = vec![
        role("web", json!({ "allowed_names": ALLOWED })),
        role("db", json!({ "allowed_names": ["db.internal"] })),
    ];
    let plugin = lessor_pki::build(ctx(state), json!({}), roles)
        .await
        .unwrap();
    let v = plugin.validate().await.unwrap();
    assert_eq!(v.identity, "CA lessor corp/web CA, CA lessor corp/db CA");
    // Two generated CAs: the root-credential expiry is the earlier notAfter.
    let not_after = |role: &str| {
        let t = &v.details[&format!("role.{role}.ca_not_after")];
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let expiry = plugin.credential_expiry().await.unwrap().unwrap();
    assert_eq!(expiry, not_after("web").min(not_after("db")));
    assert!(expiry > OffsetDateTime::now_utc() + Duration::days(300), "{expiry}");
    assert!(
        v.details.contains_key("role.web.ca_not_after")
            && v.details.contains_key("role.db.ca_not_after")
    );
    assert!(v.warnings.is_empty());
    // Each role has its own CA.
    assert_ne!(
        ca_der(plugin.as_ref(), "web").await,
        ca_der(plugin.as_ref(), "db").await
    );
}
