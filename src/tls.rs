//! TLS for the listener (rustls): certificate and key from PEM files,
//! reloaded without a restart when the files change (a renewed certificate
//! is picked up by the next connection; a broken one is refused and the old
//! one kept); an optional client CA whose certificates identify admins: only
//! those not revoked by the configured CRLs (checked at the handshake) and
//! whose subject CN or a SAN is in `admin_subjects`. A client CA that is (or
//! shares its key with) a CA of lessor's own pki connections is refused at
//! start and on reload: pki certificates carry clientAuth, so every workload
//! that can get one would be an admin.
//!
//! Owns the accept loop for TLS (axum's `serve` is plain TCP): each
//! connection is handshaken with the current config, then served by hyper
//! with the client's address and verified client certificate in the
//! request's extensions. Must not import: store, policy, lease.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::extract::ConnectInfo;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::TlsSettings;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("tls: {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("tls: {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("tls: {0}")]
    Config(String),
    #[error(
        "tls: client_ca_file {path}: certificate `{subject}` is (or has the key of) the CA of lessor's pki role `{role}`; \
         every workload that can get a certificate from that role would be an admin. Use a CA lessor does not issue from"
    )]
    OwnCa { path: PathBuf, subject: String, role: String },
}

/// A client certificate the listener verified against `tls.client_ca_file`.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The certificate subject's common name (or the whole subject if none).
    pub subject: String,
    /// Its subject CN or one of its SANs is in `tls.admin_subjects`.
    pub allowed: bool,
}

/// The listener's TLS config, swapped in place on reload.
pub struct Tls {
    settings: TlsSettings,
    /// (pki role, SubjectPublicKeyInfo DER) of lessor's own CAs, which the
    /// client CA must not be.
    own_cas: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    current: ArcSwap<ServerConfig>,
    /// (modified time, length) of each file at the last load.
    stamp: std::sync::Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Tls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let cfg = build(settings, &[])?;
        Ok(Arc::new(Tls {
            own_cas: std::sync::Mutex::new(Vec::new()),
            stamp: std::sync::Mutex::new(stamps(settings)),
            settings: settings.clone(),
            current: ArcSwap::from(cfg),
        }))
    }

    fn files(settings: &TlsSettings) -> Vec<&Path> {
        let mut v = vec![settings.cert_file.as_path(), settings.key_file.as_path()];
        if let Some(ca) = &settings.client_ca_file {
            v.push(ca.as_path());
        }
        v.extend(settings.client_crl_files.iter().map(PathBuf::as_path));
        v
    }

    /// Refuses, now and on every reload, a client CA that is one of
    /// lessor's own pki CAs (`own`: pki role and its CA chain, PEM).
    pub fn refuse_own_cas(&self, own: &[(String, String)]) -> Result<(), TlsError> {
        let keys = own_keys(own);
        check_client_cas(&self.settings, &keys)?;
        let mut g = self.own_cas.lock().map_err(|_| TlsError::Config("own CA list poisoned".into()))?;
        *g = keys;
        Ok(())
    }

    /// Whether a verified client certificate names an admin.
    fn allowed(&self, names: &[String]) -> bool {
        names.iter().any(|n| self.settings.admin_subjects.iter().any(|a| a == n))
    }

    /// Reloads when a file changed since the last load. `Ok(true)`: a new
    /// config is in use; an error leaves the old one in place.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.settings);
        {
            let last = self.stamp.lock().map_err(|_| TlsError::Config("reload state poisoned".into()))?;
            if *last == now {
                return Ok(false);
            }
        }
        let own = self.own_cas.lock().map(|g| g.clone()).unwrap_or_default();
        let cfg = build(&self.settings, &own);
        // Remember the stamp even on failure: one error per change, not one
        // per poll. A later fix changes the stamp again.
        if let Ok(mut last) = self.stamp.lock() {
            *last = now;
        }
        self.current.store(cfg?);
        Ok(true)
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    Tls::files(settings)
        .into_iter()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read { path: path.to_owned(), error: e.to_string() })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read { path: path.to_owned(), error: format!("bad PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The SubjectPublicKeyInfo of a certificate (a CA re-issued with the same
/// key verifies the same leaves, so keys are compared, not certificates).
fn spki_of(der: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.public_key().raw.to_vec())
}

fn own_keys(own: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    let mut keys = Vec::new();
    for (role, pem) in own {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            if let Some(spki) = spki_of(&der) {
                keys.push((role.clone(), spki));
            }
        }
    }
    keys
}

/// `lessor check`: refuses a client CA file that holds one of `own` (pki
/// role, CA chain PEM), without loading the listener's certificate.
pub fn check_client_ca(settings: &TlsSettings, own: &[(String, String)]) -> Result<(), TlsError> {
    check_client_cas(settings, &own_keys(own))
}

/// Refuses a client CA file holding one of `own` (lessor's pki CAs).
fn check_client_cas(s: &TlsSettings, own: &[(String, Vec<u8>)]) -> Result<(), TlsError> {
    let Some(ca) = &s.client_ca_file else { return Ok(()) };
    for c in certs(ca)? {
        let Some(spki) = spki_of(&c) else { continue };
        if let Some((role, _)) = own.iter().find(|(_, k)| *k == spki) {
            let subject = subject_of(&c).unwrap_or_default();
            return Err(TlsError::OwnCa { path: ca.clone(), subject, role: role.clone() });
        }
    }
    Ok(())
}

/// CRLs from `files`: each PEM (one or more) or DER.
fn crls(files: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for f in files {
        let raw = read(f)?;
        let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&raw)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Read { path: f.clone(), error: format!("bad PEM: {e}") })?;
        if !pem.is_empty() {
            out.extend(pem);
        } else if raw.first() == Some(&0x30) {
            out.push(CertificateRevocationListDer::from(raw));
        } else {
            return Err(TlsError::Read { path: f.clone(), error: "holds no CRL (PEM `X509 CRL` or DER)".into() });
        }
    }
    Ok(out)
}

fn build(s: &TlsSettings, own: &[(String, Vec<u8>)]) -> Result<Arc<ServerConfig>, TlsError> {
    check_client_cas(s, own)?;
    let chain = certs(&s.cert_file)?;
    let key_pem = zeroize::Zeroizing::new(read(&s.key_file)?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey { path: s.key_file.clone() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            }
            // Workloads present no certificate (they use their JWT); a
            // certificate, when sent, must chain to the client CA.
            // With CRLs, a revoked certificate fails the handshake, and so does
            // one whose issuer has no CRL (unknown status is not "good").
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls(&s.client_crl_files)?)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Config(format!("{} and {} do not make a usable pair: {e}", s.cert_file.display(), s.key_file.display()))
    })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn subject_of(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
    Some(cn.unwrap_or_else(|| subject.to_string()))
}

/// The names `admin_subjects` is matched against: every subject CN and the
/// DNS, email and URI SANs.
fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return Vec::new() };
    let mut out: Vec<String> =
        cert.subject().iter_common_name().filter_map(|c| c.as_str().ok()).map(str::to_owned).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(v) | GeneralName::RFC822Name(v) | GeneralName::URI(v) => out.push((*v).to_owned()),
                _ => {}
            }
        }
    }
    out
}

/// Polls the files every `every` and reloads on change, until shutdown.
pub async fn watch(tls: Arc<Tls>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!(cert = %tls.settings.cert_file.display(), "TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate"),
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown`, then lets in-flight
/// requests finish (up to 30 s).
pub async fn serve(listener: TcpListener, app: Router, tls: Arc<Tls>, mut shutdown: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break } else { continue },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current.load_full());
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let client = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|der| {
                let subject = subject_of(der)?;
                Some(ClientCert { allowed: tls.allowed(&names_of(der)), subject })
            });
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                if let Some(c) = &client {
                    req.extensions_mut().insert(c.clone());
                }
                let mut app = app.clone();
                async move { tower::Service::call(&mut app, req.map(axum::body::Body::new)).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight TLS connections did not finish within 30s; closing them");
    }
}

/// `true` when `addr` is only reachable from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
