//! Shared helpers: building the plugin on a `MemoryState`, issuing, and
//! reading certificates and CRLs back with x509-parser.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::conformance::Probe;
use lessor_plugin::secrecy::{SecretBox, SecretString};
use lessor_plugin::{
    Handle, IssueRequest, Issued, LeaseId, MemoryState, Plugin, PluginContext, PluginError,
    RoleSpec, StateError, StateStore, Workload,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const ROLE: &str = "web";
pub const ALLOWED: [&str; 2] = [
    "spiffe://example.org/gh/{repository}",
    "{repo_name}.svc.internal",
];
pub const API_URI: &str = "spiffe://example.org/gh/acme/api";
pub const API_DNS: &str = "api.svc.internal";

pub fn ctx(state: Arc<MemoryState>) -> PluginContext {
    PluginContext {
        state,
        ..PluginContext::for_tests("corp", "http://127.0.0.1:8200")
    }
}

pub fn role(name: &str, config: Value) -> RoleSpec {
    RoleSpec {
        name: name.into(),
        scopes: vec![],
        max_ttl: Duration::from_secs(3600),
        config,
    }
}

/// The plugin with one role `web` configured by `config`, on a fresh state.
pub async fn plugin(config: Value) -> (Arc<dyn Plugin>, Arc<MemoryState>) {
    let state = Arc::new(MemoryState::new());
    let plugin = lessor_pki::build(ctx(state.clone()), json!({}), vec![role(ROLE, config)])
        .await
        .unwrap();
    (plugin, state)
}

/// The standard role: the two templates of the brief.
pub async fn standard(key_type: &str) -> (Arc<dyn Plugin>, Arc<MemoryState>) {
    plugin(json!({ "allowed_names": ALLOWED, "key_type": key_type })).await
}

pub fn workload(attrs: &[(&str, &str)]) -> Workload {
    Workload {
        issuer: "https://token.actions.githubusercontent.com".into(),
        subject: "repo:acme/api:ref:refs/heads/main".into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub fn api_workload() -> Workload {
    workload(&[("repository", "acme/api"), ("repo_name", "api")])
}

pub fn lease_id() -> LeaseId {
    static N: AtomicU64 = AtomicU64::new(0);
    LeaseId::new(format!(
        "test-{}-{}",
        N.fetch_add(1, Ordering::Relaxed),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    ))
}

pub fn request(workload: Workload, params: Value, expires_at: OffsetDateTime) -> IssueRequest {
    IssueRequest {
        lease_id: lease_id(),
        role: ROLE.into(),
        workload,
        scopes: vec![],
        expires_at,
        params: params.as_object().cloned().unwrap_or_default(),
    }
}

pub fn in_minutes(m: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::minutes(m)
}

pub async fn issue(plugin: &dyn Plugin, params: Value) -> Result<Issued, PluginError> {
    plugin
        .issue(request(api_workload(), params, in_minutes(10)))
        .await
}

pub fn invalid<T: std::fmt::Debug>(r: Result<T, PluginError>) -> String {
    match r {
        Err(PluginError::InvalidRequest(m)) => m,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

pub fn misconfigured<T>(r: Result<T, PluginError>) -> String {
    match r {
        Err(PluginError::Misconfigured(m)) => m,
        Err(e) => panic!("expected Misconfigured, got {e:?}"),
        Ok(_) => panic!("expected Misconfigured, got Ok"),
    }
}

pub fn pem_der(text: &str) -> Vec<u8> {
    pem::parse(text).unwrap().into_contents()
}

pub fn public_str<'a>(issued: &'a Issued, field: &str) -> &'a str {
    issued.public[field].as_str().unwrap()
}

pub fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

/// The SANs as `DNS:…` / `URI:…`, in certificate order.
pub fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(ext) = cert.subject_alternative_name().unwrap() else {
        return vec![];
    };
    ext.value
        .general_names
        .iter()
        .map(|gn| match gn {
            GeneralName::DNSName(n) => format!("DNS:{n}"),
            GeneralName::URI(n) => format!("URI:{n}"),
            other => format!("{other:?}"),
        })
        .collect()
}

pub fn cn(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// The role's CA certificate (first of the `ca` document), DER.
pub async fn ca_der(plugin: &dyn Plugin, role: &str) -> Vec<u8> {
    let doc = plugin
        .document(Some(role), "ca")
        .await
        .unwrap()
        .expect("ca document");
    assert_eq!(doc.content_type, "application/pem-certificate-chain");
    pem_der(std::str::from_utf8(&doc.body).unwrap())
}

/// A positive serial without leading zero bytes, as DER integers carry it.
pub fn norm(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

/// The serial the brief prescribes for a lease, computed independently.
pub fn expected_serial(lease: &LeaseId) -> Vec<u8> {
    let digest = Sha256::digest(format!("lessor-pki-serial:{lease}").as_bytes());
    let mut s = digest[..16].to_vec();
    s[0] &= 0x7f;
    s
}

/// Serials on the role's CRL, after checking the CRL is signed by the role's CA.
pub async fn crl_serials(plugin: &dyn Plugin, role: &str) -> Vec<Vec<u8>> {
    let ca = ca_der(plugin, role).await;
    let ca = parse_cert(&ca);
    let doc = plugin
        .document(Some(role), "crl")
        .await
        .unwrap()
        .expect("crl document");
    assert_eq!(doc.content_type, "application/pkix-crl");
    let (rest, crl) = x509_parser::parse_x509_crl(&doc.body).unwrap();
    assert!(rest.is_empty());
    crl.verify_signature(ca.public_key())
        .expect("CRL signed by the role CA");
    assert_eq!(crl.issuer(), ca.subject());
    let next = crl.next_update().expect("nextUpdate").timestamp();
    assert!(next > crl.last_update().timestamp());
    crl.iter_revoked_certificates()
        .map(|r| norm(r.raw_serial()))
        .collect()
}

/// A certificate works iff it is not on its role's CRL and not past not_after.
pub struct CrlProbe {
    pub plugin: Arc<dyn Plugin>,
    pub role: String,
}

#[async_trait]
impl Probe for CrlProbe {
    async fn works(
        &self,
        public: &serde_json::Map<String, Value>,
        _secret: &BTreeMap<String, SecretString>,
        _handle: &Handle,
    ) -> Result<bool, String> {
        let pem_text = public
            .get("certificate")
            .and_then(Value::as_str)
            .ok_or("no `certificate` field")?;
        let der = pem::parse(pem_text)
            .map_err(|e| e.to_string())?
            .into_contents();
        let cert = parse_cert(&der);
        if cert.validity().not_after.timestamp() <= OffsetDateTime::now_utc().unix_timestamp() {
            return Ok(false);
        }
        let serial = norm(cert.raw_serial());
        Ok(!crl_serials(self.plugin.as_ref(), &self.role)
            .await
            .contains(&serial))
    }
}

/// A clock tests move by hand, starting now (on a whole second).
#[derive(Clone)]
pub struct TestClock(Arc<std::sync::Mutex<OffsetDateTime>>);

impl TestClock {
    pub fn new() -> Self {
        let now = OffsetDateTime::now_utc();
        let whole = now - time::Duration::nanoseconds(i64::from(now.nanosecond()));
        TestClock(Arc::new(std::sync::Mutex::new(whole)))
    }

    pub fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }

    pub fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap() = t;
    }

    pub fn advance(&self, d: time::Duration) {
        let t = self.now() + d;
        self.set(t);
    }

    pub fn clock(&self) -> lessor_pki::Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

/// A [`MemoryState`] that counts reads and can be made to fail.
#[derive(Default)]
pub struct CountingState {
    inner: MemoryState,
    reads: AtomicU64,
    lists: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

impl CountingState {
    /// Every `get`, `get_secret` and `list` so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::SeqCst)
    }

    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StateError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StateError("the store is down (test)".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for CountingState {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.get(key).await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.check()?;
        self.inner.put(key, value).await
    }

    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        self.check()?;
        self.inner.put_if_absent(key, value).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn get_secret(&self, key: &str) -> Result<Option<SecretBox<Vec<u8>>>, StateError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.get_secret(key).await
    }

    async fn put_secret_if_absent(&self, key: &str, value: &SecretBox<Vec<u8>>) -> Result<bool, StateError> {
        self.check()?;
        self.inner.put_secret_if_absent(key, value).await
    }
}

/// URIs of the certificate's CRL distribution points.
pub fn crl_urls(cert: &X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, ParsedExtension};
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            assert!(!ext.critical);
            for p in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n {
                            out.push(u.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// URIs of the certificate's AIA `caIssuers` entries (and panics on any
/// other access method: lessor writes none).
pub fn ca_issuers(cert: &X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::ParsedExtension;
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            assert!(!ext.critical);
            for d in aia.iter() {
                assert_eq!(d.access_method.to_id_string(), "1.3.6.1.5.5.7.48.2");
                match &d.access_location {
                    GeneralName::URI(u) => out.push(u.to_string()),
                    other => panic!("caIssuers location {other:?}"),
                }
            }
        }
    }
    out
}
