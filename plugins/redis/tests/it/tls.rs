//! The admin connection over TLS (`rediss://`) with a private CA
//! (`tls_ca_file`), and a refusal naming the node when the CA is wrong.

use std::io::Write;

use lessor_plugin::Plugin;
use lessor_redis::testkit::TempRedis;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::json;

use crate::support::{ctx, issue, lease, lease_id, roles, username};

/// A CA (PEM) and a server certificate for IP 127.0.0.1 signed by it.
fn ca_and_leaf() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "test redis CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = p.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut l = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    l.distinguished_name.push(DnType::CommonName, "redis");
    let cert = l.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[tokio::test]
async fn the_admin_connection_speaks_tls_with_a_private_ca() {
    let (ca, cert, key) = ca_and_leaf();
    let r = TempRedis::start_tls(&cert, &key).unwrap();
    assert!(r.url().starts_with("rediss://"));
    let (ca_file, pw_file) = (file(&ca), file(r.admin_password()));
    let p = lessor_redis::RedisPlugin::new(
        ctx(),
        json!({"nodes": [r.url()], "password_file": pw_file.path(), "tls_ca_file": ca_file.path(), "timeout": "2s"}),
        roles(),
    )
    .unwrap();
    let v = p.validate().await.unwrap();
    assert_eq!(v.identity, "default");
    let id = lease_id();
    let issued = issue(&p, &id, &["cache.read"]).await.unwrap();
    assert_eq!(issued.public["tls"], true);
    let url = lessor_plugin::secrecy::ExposeSecret::expose_secret(&issued.secret["url"]).to_owned();
    assert!(url.starts_with("rediss://") && url.contains(&username(&issued)));
    p.revoke(&lease(&id, None)).await.unwrap();
    assert!(p.list_users().await.unwrap().iter().all(|(_, u)| u.is_empty()));

    // Another CA: the server's certificate is refused, naming the node.
    let (other_ca, _, _) = ca_and_leaf();
    let other = file(&other_ca);
    let q = lessor_redis::RedisPlugin::new(
        ctx(),
        json!({"nodes": [r.url()], "password_file": pw_file.path(), "tls_ca_file": other.path(), "timeout": "2s"}),
        roles(),
    )
    .unwrap();
    let e = q.validate().await.unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{}", r.port())), "{e}");
}
