use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, PKCS_ED25519,
};
use serde_json::json;

use crate::support::*;

fn dns(n: &str) -> SanType {
    SanType::DnsName(Ia5String::try_from(n).unwrap())
}

fn uri(n: &str) -> SanType {
    SanType::URI(Ia5String::try_from(n).unwrap())
}

fn csr_params(sans: Vec<SanType>, cn: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.subject_alt_names = sans;
    params
}

fn csr(key: &KeyPair, sans: Vec<SanType>, cn: Option<&str>) -> String {
    csr_params(sans, cn)
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

fn rsa2048_key() -> KeyPair {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    KeyPair::try_from(key.to_pkcs8_der().unwrap().as_bytes()).unwrap()
}

#[tokio::test]
async fn a_valid_csr_is_signed_with_only_allowed_names() {
    let (plugin, _) = standard("p256").await;
    let key = KeyPair::generate().unwrap();
    // Extensions the CSR asks for besides names are not trusted.
    let mut params = csr_params(vec![dns("API.svc.internal")], Some(API_DNS));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let pem_csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let issued = issue(plugin.as_ref(), json!({ "csr": pem_csr }))
        .await
        .unwrap();
    assert!(issued.secret.is_empty(), "no private key in CSR mode");
    let der = pem_der(public_str(&issued, "certificate"));
    let cert = parse_cert(&der);
    let ca = ca_der(plugin.as_ref(), ROLE).await;
    cert.verify_signature(Some(parse_cert(&ca).public_key()))
        .unwrap();
    assert_eq!(sans(&cert), [format!("DNS:{API_DNS}")]);
    assert_eq!(cn(&cert), API_DNS);
    assert_eq!(cert.public_key().raw, key.subject_public_key_info());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    assert!(!cert.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[tokio::test]
async fn a_csr_without_names_gets_every_allowed_name() {
    let (plugin, _) = standard("ed25519").await;
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let issued = issue(plugin.as_ref(), json!({ "csr": csr(&key, vec![], None) }))
        .await
        .unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    assert_eq!(
        sans(&parse_cert(&der)),
        [format!("URI:{API_URI}"), format!("DNS:{API_DNS}")]
    );
}

#[tokio::test]
async fn a_csr_with_an_rsa_key_is_signed_for_an_rsa_role() {
    let (plugin, _) = standard("rsa2048").await;
    let key = rsa2048_key();
    let issued = issue(
        plugin.as_ref(),
        json!({ "csr": csr(&key, vec![uri(API_URI)], None) }),
    )
    .await
    .unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    let cert = parse_cert(&der);
    assert_eq!(sans(&cert), [format!("URI:{API_URI}")]);
    assert_eq!(cert.public_key().raw, key.subject_public_key_info());
    assert!(cert.key_usage().unwrap().unwrap().value.key_encipherment());
}

#[tokio::test]
async fn a_csr_asking_for_a_disallowed_name_is_refused() {
    let (plugin, _) = standard("p256").await;
    let key = KeyPair::generate().unwrap();
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "csr": csr(&key, vec![dns(API_DNS), dns("evil.example")], None) }),
        )
        .await,
    );
    assert_eq!(
        m,
        format!(
            "name `evil.example` is not allowed for role `web` (allowed: {API_URI}, {API_DNS})"
        )
    );
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "csr": csr(&key, vec![dns(API_DNS)], Some("evil.example")) }),
        )
        .await,
    );
    assert!(
        m.starts_with("CSR subject CN `evil.example` is not allowed for role `web`"),
        "{m}"
    );
    let ip = csr_params(vec![SanType::IpAddress("10.0.0.1".parse().unwrap())], None);
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "csr": ip.serialize_request(&key).unwrap().pem().unwrap() }),
        )
        .await,
    );
    assert_eq!(
        m,
        "CSR requests an IP address SAN; role `web` issues only DNS and URI names"
    );
}

#[tokio::test]
async fn a_csr_with_the_wrong_key_type_is_refused() {
    let (plugin, _) = standard("p256").await;
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "csr": csr(&ed, vec![dns(API_DNS)], None) }),
        )
        .await,
    );
    assert_eq!(m, "CSR key is Ed25519, role `web` requires P-256");
    let rsa = rsa2048_key();
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "csr": csr(&rsa, vec![dns(API_DNS)], None) }),
        )
        .await,
    );
    assert_eq!(m, "CSR key is RSA-2048, role `web` requires P-256");

    let (plugin, _) = standard("rsa2048").await;
    let p256 = KeyPair::generate().unwrap();
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "csr": csr(&p256, vec![dns(API_DNS)], None) }),
        )
        .await,
    );
    assert_eq!(m, "CSR key is P-256, role `web` requires RSA-2048");
}

#[tokio::test]
async fn a_csr_with_a_tampered_signature_is_refused() {
    let (plugin, _) = standard("p256").await;
    let key = KeyPair::generate().unwrap();
    let mut der = pem_der(&csr(&key, vec![dns(API_DNS)], None));
    // The signature is the last element of the CSR: flip a byte in it.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let m = invalid(issue(plugin.as_ref(), json!({ "csr": tampered })).await);
    assert_eq!(m, "CSR signature does not verify");
}

#[tokio::test]
async fn garbage_csrs_are_refused() {
    let (plugin, _) = standard("p256").await;
    let m = invalid(issue(plugin.as_ref(), json!({ "csr": "hello" })).await);
    assert!(
        m.starts_with("`csr` is not a PEM certificate request"),
        "{m}"
    );
    let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
    let m = invalid(issue(plugin.as_ref(), json!({ "csr": cert_pem })).await);
    assert_eq!(
        m,
        "`csr` is a PEM `CERTIFICATE` block, expected `CERTIFICATE REQUEST`"
    );
    let junk = pem::encode(&pem::Pem::new(
        "CERTIFICATE REQUEST",
        vec![0x30, 0x03, 1, 2, 3],
    ));
    let m = invalid(issue(plugin.as_ref(), json!({ "csr": junk })).await);
    assert!(m.starts_with("CSR cannot be parsed"), "{m}");
}
