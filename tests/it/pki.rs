//! The pki plugin through the daemon: the CRL and CA URLs a leaf certificate
//! carries are served, and the CRL lists early revocations only.

use std::path::Path;

use serde_json::json;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::support::{config_text, copy_dir, Daemon, Issuer};

/// A daemon whose `public_url` is the address it really listens on.
async fn daemon_at_public_url(iss: &Issuer, tmp: &Path) -> Daemon {
    let policies = tmp.join("policies");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &policies);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let text = config_text(tmp, &policies, &iss.url, "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\npublic_url = \"http://{addr}\""),
    );
    let cfg = lessor::config::Config::from_toml(&text).unwrap();
    let running = lessor::server::start(cfg, listener).await.unwrap();
    let admin = std::fs::read_to_string(tmp.join("admin.token")).unwrap().trim().to_owned();
    Daemon {
        url: format!("http://{addr}"),
        addr,
        running: Some(running),
        dir: tmp.to_path_buf(),
        policies,
        admin,
        http: reqwest::Client::new(),
        _tmp: None,
    }
}

/// (CRL distribution point URIs, AIA caIssuers URIs) of a certificate.
fn urls(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let (mut crl, mut ca) = (Vec::new(), Vec::new());
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => {
                for p in points.iter() {
                    if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                        for n in names {
                            if let GeneralName::URI(u) = n {
                                crl.push(u.to_string());
                            }
                        }
                    }
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for d in aia.iter() {
                    assert_eq!(d.access_method.to_id_string(), "1.3.6.1.5.5.7.48.2", "caIssuers");
                    if let GeneralName::URI(u) = &d.access_location {
                        ca.push(u.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    (crl, ca)
}

async fn fetch(url: &str) -> (String, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, r.bytes().await.unwrap().to_vec())
}

fn crl_serials(der: &[u8], ca: &X509Certificate<'_>) -> Vec<String> {
    let (rest, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    assert!(rest.is_empty());
    crl.verify_signature(ca.public_key()).expect("CRL signed by the issuing CA");
    crl.iter_revoked_certificates().map(|r| hex::encode(r.raw_serial())).collect()
}

#[tokio::test]
async fn a_leaf_names_a_crl_and_issuer_that_are_served_and_the_crl_lists_an_early_revoke() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon_at_public_url(&iss, tmp.path()).await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web", "ttl": "10m"})).await;
    assert_eq!(s, 201, "{v}");
    let pem_text = v["credential"]["certificate"].as_str().unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    let der = pem.contents;
    let (_, cert) = X509Certificate::from_der(&der).unwrap();

    let (crl_urls, ca_urls) = urls(&cert);
    assert_eq!(crl_urls, [format!("{}/v1/pki/pki/web/crl", d.url)]);
    assert_eq!(ca_urls, [format!("{}/v1/pki/pki/web/ca.der", d.url)]);

    // The issuer URL serves the CA certificate that signed the leaf, in DER.
    let (ct, ca_der) = fetch(&ca_urls[0]).await;
    assert_eq!(ct, "application/pkix-cert");
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).expect("leaf signed by the CA at the AIA URL");

    // The CRL URL serves a CRL signed by that CA; revoking early lists it.
    let serial = hex::encode(cert.raw_serial());
    let (ct, crl) = fetch(&crl_urls[0]).await;
    assert_eq!(ct, "application/pkix-crl");
    assert!(!crl_serials(&crl, &ca).contains(&serial));
    let (s, r) = d.delete(&format!("/v1/leases/{}", v["lease_id"].as_str().unwrap()), &jwt).await;
    assert_eq!(s, 200, "{r}");
    let (_, crl) = fetch(&crl_urls[0]).await;
    assert_eq!(crl_serials(&crl, &ca), [serial]);
}
