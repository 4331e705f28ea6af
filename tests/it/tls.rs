//! TLS on the listener: clients connect over TLS and plain HTTP is refused;
//! a rotated certificate is served without a restart (a broken one is not);
//! a client certificate from the configured CA is an admin credential; a
//! non-loopback address without TLS is refused unless explicitly allowed.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

use crate::binary::{spawn_until, stop};
use crate::support::{config_text, copy_dir, Daemon, Issuer as JwtIssuer};

struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    Ca { cert_pem: cert.pem(), issuer: Issuer::new(p, key) }
}

/// A leaf for `names` (server) or with common name `cn` (client): PEM cert
/// and key.
fn leaf(ca: &Ca, cn: &str, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write_server_cert(dir: &Path, ca: &Ca, cn: &str) {
    let (cert, key) = leaf(ca, cn, &["localhost", "127.0.0.1"]);
    // Key first, then cert: a reload between the two writes sees a pair
    // that does not match and keeps the old one until the cert lands.
    std::fs::write(dir.join("tls.key"), key).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
}

fn client(ca: &Ca, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_info(true)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The common name of the certificate the server presented.
fn served_cn(r: &reqwest::Response) -> String {
    let der = r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate()).unwrap().to_vec();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let cn = c.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    cn
}

async fn tls_daemon(dir: &Path, iss: &JwtIssuer, ca: &Ca, extra_tls: &str) -> Daemon {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    write_server_cert(dir, ca, "server-one");
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"100ms\"\n{extra_tls}",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    let text = config_text(dir, &dir.join("policies"), &iss.url, "", "");
    let cfg = lessor::config::Config::from_toml(&format!("{text}\n{tls}")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = lessor::server::start(cfg, listener).await.unwrap();
    let addr = running.addr;
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    Daemon {
        url: format!("https://localhost:{}", addr.port()),
        addr,
        running: Some(running),
        dir: dir.to_path_buf(),
        policies: dir.join("policies"),
        admin,
        http: client(ca, None),
        _tmp: None,
    }
}

#[tokio::test]
async fn tls_clients_connect_plain_http_is_refused_and_a_rotated_certificate_is_served() {
    let iss = JwtIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca("test CA");
    let mut d = tls_daemon(tmp.path(), &iss, &ca, "").await;

    let r = client(&ca, None).get(format!("{}/v1/health", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_cn(&r), "server-one");
    // A workload's whole flow works over TLS.
    let (s, v) = d.issue(&iss.token(), serde_json::json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{}/v1/health", d.addr.port())).send().await;
    assert!(plain.is_err(), "plain HTTP must not be served: {plain:?}");

    // Rotate: the next connection gets the new certificate, no restart.
    write_server_cert(tmp.path(), &ca, "server-two");
    let rotated = Daemon::eventually(Duration::from_secs(10), || async {
        let r = client(&ca, None).get(format!("{}/v1/health", d.url)).send().await.ok()?;
        (served_cn(&r) == "server-two").then_some(())
    })
    .await;
    assert!(rotated.is_some(), "the rotated certificate was not served");

    // A broken file is refused and the last good certificate stays.
    std::fs::write(tmp.path().join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = client(&ca, None).get(format!("{}/v1/health", d.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), served_cn(&r)), (200, "server-two".to_owned()));
    d.stop().await;
}

/// A CRL of `ca` listing `serials`.
fn crl(ca: &Ca, serials: &[u64]) -> String {
    let now = time::OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.issuer).unwrap().pem().unwrap()
}

/// A client leaf with common name `cn`, serial `serial` and SANs `names`.
fn client_leaf(ca: &Ca, cn: &str, serial: u64, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(rcgen::SerialNumber::from(serial));
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn status_of(c: reqwest::Client, method: reqwest::Method, url: String, token: Option<String>) -> Result<(u16, Value), String> {
    let mut req = c.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.map_err(|e| format!("{e:?}"))?;
    let s = r.status().as_u16();
    Ok((s, r.json::<Value>().await.unwrap_or_default()))
}

/// A client certificate is an admin credential only when it chains to the
/// client CA, is not on its CRL and names an allowed subject; with
/// `admin_requires_client_cert`, the admin token is refused everywhere,
/// `/v1/leases/{id}` included.
#[tokio::test]
async fn a_client_certificate_from_the_client_ca_is_an_admin_credential() {
    let iss = JwtIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca("server CA");
    let admins = new_ca("admin CA");
    std::fs::write(tmp.path().join("admins.pem"), &admins.cert_pem).unwrap();
    std::fs::write(tmp.path().join("admins.crl"), crl(&admins, &[66])).unwrap();
    let extra = format!(
        "client_ca_file = \"{}\"\nadmin_subjects = [\"alice-sre\", \"carol@sre.example\"]\nclient_crl_files = [\"{}\"]\nadmin_requires_client_cert = true\n",
        tmp.path().join("admins.pem").display(),
        tmp.path().join("admins.crl").display()
    );
    let mut d = tls_daemon(tmp.path(), &iss, &ca, &extra).await;
    let get = reqwest::Method::GET;
    let list = format!("{}/v1/admin/leases", d.url);
    // The admin token alone is not enough here.
    let (s, v) = status_of(client(&ca, None), get.clone(), list.clone(), Some(d.admin.clone())).await.unwrap();
    assert_eq!(s, 401, "{v}");
    assert!(v.to_string().contains("client certificate"), "{v}");
    // An allowed admin's certificate is, by CN or by SAN.
    let alice = client_leaf(&admins, "alice-sre", 10, &[]);
    let (s, v) = status_of(client(&ca, Some(alice.clone())), get.clone(), list.clone(), None).await.unwrap();
    assert_eq!(s, 200, "{v}");
    let carol = {
        // An email SAN (rcgen reads "x@y" in `new` as a DNS name).
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "carol");
        p.subject_alt_names = vec![rcgen::SanType::Rfc822Name("carol@sre.example".try_into().unwrap())];
        p.serial_number = Some(rcgen::SerialNumber::from(11u64));
        (p.signed_by(&key, &admins.issuer).unwrap().pem(), key.serialize_pem())
    };
    let (s, v) = status_of(client(&ca, Some(carol)), get.clone(), list.clone(), None).await.unwrap();
    assert_eq!(s, 200, "{v}");
    // A certificate from the same CA with another subject is not.
    let bob = client_leaf(&admins, "bob-dev", 12, &["bob.dev.example"]);
    let (s, v) = status_of(client(&ca, Some(bob)), get.clone(), list.clone(), None).await.unwrap();
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("`bob-dev` is not an admin"), "{v}");
    // A revoked one (on the CRL) fails the handshake, allowed name or not.
    let revoked = client_leaf(&admins, "alice-sre", 66, &[]);
    let r = status_of(client(&ca, Some(revoked)), get.clone(), list.clone(), None).await;
    assert!(!matches!(r, Ok((200, _))), "a revoked client certificate must not pass: {r:?}");
    // A certificate from another CA fails the handshake.
    let stranger = leaf(&ca, "alice-sre", &[]);
    let r = status_of(client(&ca, Some(stranger)), get.clone(), list.clone(), None).await;
    assert!(!matches!(r, Ok((200, _))), "a foreign client certificate must not pass: {r:?}");

    // Workloads still come with their JWT and no certificate, and own their
    // leases; the admin token cannot read, renew or revoke them.
    let (s, v) = d.issue(&iss.token(), serde_json::json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");
    let lease = format!("{}/v1/leases/{}", d.url, v["lease_id"].as_str().unwrap());
    for (method, url) in [
        (reqwest::Method::GET, lease.clone()),
        (reqwest::Method::POST, format!("{lease}/renew")),
        (reqwest::Method::DELETE, lease.clone()),
    ] {
        let (s, v) = status_of(client(&ca, None), method.clone(), url, Some(d.admin.clone())).await.unwrap();
        assert_eq!(s, 401, "{method} with the admin token: {v}");
        assert_eq!(v["error"]["code"], "client_certificate_required", "{v}");
    }
    let (s, v) = status_of(client(&ca, None), get.clone(), lease.clone(), Some(iss.token())).await.unwrap();
    assert_eq!((s, v["state"].as_str()), (200, Some("active")), "the owner: {v}");
    // The admin's certificate reads and revokes it.
    let (s, v) = status_of(client(&ca, Some(alice.clone())), get.clone(), lease.clone(), None).await.unwrap();
    assert_eq!(s, 200, "{v}");
    let (s, v) = status_of(client(&ca, Some(alice)), reqwest::Method::DELETE, lease, None).await.unwrap();
    assert_eq!(s, 200, "{v}");
    d.stop().await;
}

/// A client CA that is one of lessor's own pki CAs (whose certificates
/// every workload with a pki role can get, with clientAuth) is refused at
/// start and on reload.
#[tokio::test]
async fn lessors_own_pki_ca_is_refused_as_the_client_ca() {
    let iss = JwtIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca("server CA");
    let admins = new_ca("admin CA");
    std::fs::write(tmp.path().join("admins.pem"), &admins.cert_pem).unwrap();
    let extra = format!("client_ca_file = \"{}\"\nadmin_subjects = [\"alice-sre\"]\n", tmp.path().join("admins.pem").display());
    let mut d = tls_daemon(tmp.path(), &iss, &ca, &extra).await;
    let pki_ca = d.http.get(format!("{}/v1/pki/pki/web/ca", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(pki_ca.contains("BEGIN CERTIFICATE"), "{pki_ca}");
    // A workload's certificate from the pki role, CN = an allowed admin name
    // would be the attack; the CA swap is refused and it stays a stranger.
    std::fs::write(tmp.path().join("admins.pem"), &pki_ca).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let alice = client_leaf(&admins, "alice-sre", 10, &[]);
    let (s, v) = status_of(client(&ca, Some(alice)), reqwest::Method::GET, format!("{}/v1/admin/leases", d.url), None).await.unwrap();
    assert_eq!(s, 200, "the old client CA stays in use: {v}");
    d.stop().await;

    // At start: refused, naming the role.
    let text = config_text(tmp.path(), &tmp.path().join("policies"), &iss.url, "", "");
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
        tmp.path().join("tls.crt").display(),
        tmp.path().join("tls.key").display()
    );
    let cfg = lessor::config::Config::from_toml(&format!("{text}\n{tls}")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = lessor::server::start(cfg, listener).await.err().expect("start must fail").to_string();
    assert!(err.contains("pki role `pki/web`") && err.contains("admins.pem"), "{err}");
}

#[tokio::test]
async fn plain_http_on_a_public_address_is_refused_unless_allowed() {
    let iss = JwtIssuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    let cfg = config_text(dir, &dir.join("policies"), &iss.url, "", "").replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    std::fs::write(dir.join("lessor.toml"), cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["serve", "--config", "lessor.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve plain HTTP on 0.0.0.0:0") && err.contains("[tls]"), "{err}");
    assert!(!dir.join("lessor.db").exists(), "nothing was started");

    let (child, url) = spawn_until(
        &["serve", "--config", "lessor.toml", "--allow-plaintext"],
        dir,
        &[],
        &dir.join("lessor.log"),
        "lessor listening on ",
    );
    assert!(url.starts_with("http://0.0.0.0:"), "{url}");
    stop(child);
    let log = std::fs::read_to_string(dir.join("lessor.log")).unwrap();
    assert!(log.contains("serving plain HTTP on a non-loopback address"), "{log}");
}
