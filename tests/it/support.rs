//! Test support: a real daemon on an ephemeral port (the same `server::start`
//! as `main`), a test OIDC issuer whose JWKS is served over real HTTP, and
//! helpers to call the API.

#![allow(dead_code)]

pub mod daemon;
pub mod logs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use lessor::config::Config;
use lessor::server::{self, Running};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const AUD: &str = "lessor";

/// One P-256 signing key of the test issuer.
pub struct Key {
    pub kid: String,
    pub pem: String,
    pub jwk: Value,
    pub public_pem: String,
}

impl Key {
    pub fn generate() -> Key {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = hex::encode(&Sha256::digest(&raw)[..8]);
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                         "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
        Key { kid, pem: kp.serialize_pem(), jwk, public_pem: kp.public_key_pem() }
    }
}

/// A test OIDC issuer: serves discovery + JWKS on loopback and counts fetches.
pub struct Issuer {
    pub url: String,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub fetches: Arc<AtomicUsize>,
    /// Requests to any path other than discovery/JWKS (e.g. a `jku` lure).
    pub other_hits: Arc<AtomicUsize>,
    pub key: Key,
}

impl Issuer {
    pub async fn start() -> Issuer {
        let key = Key::generate();
        let keys = Arc::new(Mutex::new(vec![key.jwk.clone()]));
        let fetches = Arc::new(AtomicUsize::new(0));
        let other_hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let (k, f, o, u) = (keys.clone(), fetches.clone(), other_hits.clone(), url.clone());
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let u = u.clone();
                    async move { axum::Json(json!({"issuer": u, "jwks_uri": format!("{u}/jwks")})) }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let (k, f) = (k.clone(), f.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({"keys": k.lock().unwrap().clone()}))
                    }
                }),
            )
            .fallback(move || {
                let o = o.clone();
                async move {
                    o.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"keys": []}))
                }
            });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Issuer { url, keys, fetches, other_hits, key }
    }

    /// GitHub-Actions-shaped claims for `repo` on `git_ref`, valid for 5 min.
    pub fn gh_claims(&self, repo: &str, git_ref: &str) -> serde_json::Map<String, Value> {
        let now = now();
        let owner = repo.split('/').next().unwrap();
        json!({
            "iss": self.url, "aud": AUD, "sub": format!("repo:{repo}:ref:{git_ref}"),
            "iat": now, "nbf": now, "exp": now + 300,
            "repository": repo, "repository_owner": owner, "ref": git_ref, "event_name": "push",
        })
        .as_object()
        .unwrap()
        .clone()
    }

    pub fn sign_with(&self, key: &Key, claims: &serde_json::Map<String, Value>) -> String {
        let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap()).unwrap()
    }

    pub fn sign(&self, claims: &serde_json::Map<String, Value>) -> String {
        self.sign_with(&self.key, claims)
    }

    /// A JWT for acme/api on main.
    pub fn token(&self) -> String {
        self.sign(&self.gh_claims("acme/api", "refs/heads/main"))
    }
}

/// Tests that load the machine (floods, mass expiry, Schemathesis, three
/// replicas) or measure a latency (under a load of their own, or a
/// restart's first answer) take this lock, so that on a 2-core machine one's
/// figures are not another's noise. Other tests still run beside them.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Options for a test daemon.
#[derive(Default, Clone)]
pub struct Opts {
    pub issuer_url: String,
    pub extra_toml: String,
    pub leases_toml: String,
    /// An extra policy file (`policies/test-extra.cedar`).
    pub policy: String,
    /// Store URL instead of the temp dir's SQLite file.
    pub store: Option<String>,
    /// The clock customer tokens read (`server::start_with_clock`).
    pub clock: Option<lessor_plugin::Clock>,
}

/// A daemon on a temp dir. Keep `dir` alive as long as the daemon.
pub struct Daemon {
    pub url: String,
    pub addr: SocketAddr,
    pub running: Option<Running>,
    pub dir: PathBuf,
    pub policies: PathBuf,
    pub admin: String,
    pub http: reqwest::Client,
    pub _tmp: Option<tempfile::TempDir>,
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// `lessor dev`'s issuer, which the example policies admit beside the real
/// ones (`principal.issuer` is pinned in every example permit).
pub const DEV_ISSUER: &str = "https://dev-issuer.lessor.localhost";

/// Lets the test issuer stand in for the dev issuer in the example policies
/// copied to `policies` (every `*.cedar` file under it).
pub fn admit_test_issuer(policies: &Path, issuer_url: &str) {
    let Ok(entries) = std::fs::read_dir(policies) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            admit_test_issuer(&p, issuer_url);
        } else if p.extension().is_some_and(|x| x == "cedar") {
            let text = std::fs::read_to_string(&p).unwrap();
            if text.contains(DEV_ISSUER) {
                std::fs::write(&p, text.replace(DEV_ISSUER, issuer_url)).unwrap();
            }
        }
    }
}

/// A daemon config on `dir` for the test issuer; the policies already in
/// `policies` admit that issuer from here on ([`admit_test_issuer`]).
pub fn config_text(dir: &Path, policies: &Path, issuer_url: &str, extra: &str, leases: &str) -> String {
    admit_test_issuer(policies, issuer_url);
    format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
data_dir = "{dir}"
policies = "{pol}"
policy_poll = "100ms"

[leases]
tick = "100ms"
retry_base = "200ms"
{leases}

[issuers.test]
issuer = "{issuer_url}"
discovery = true
audiences = ["{AUD}"]
algorithms = ["ES256", "RS256"]
preset = "github-actions"
min_refetch_interval = "1s"
max_token_age = "1h"
[issuers.test.claims]
namespace = "kubernetes.io.namespace"
service_account = "kubernetes.io.serviceaccount.name"

[scopes."orders.read"]
allows = "Read orders."
denies = "Cannot change orders."
[scopes."orders.write"]
allows = "Change orders."
[scopes."invoices.send"]
allows = "Send invoices."

[connections.pki]
plugin = "pki"
environment = "staging"
[connections.pki.roles.web]
max_ttl = "1h"
default_ttl = "5m"
[connections.pki.roles.web.config]
allowed_names = ["spiffe://lessor.test/gh/{{repository}}", "{{repository_owner}}.svc.lessor.test"]

[connections.token]
plugin = "token"
environment = "staging"
[connections.token.roles.orders]
max_ttl = "1h"
default_ttl = "5m"
scopes = ["orders.read", "orders.write", "invoices.send"]
default_scopes = ["orders.read"]
{extra}
"#,
        db = dir.join("lessor.db").display(),
        dir = dir.display(),
        pol = policies.display(),
    )
}

impl Daemon {
    pub async fn start(issuer: &Issuer) -> Daemon {
        Daemon::start_with(Opts { issuer_url: issuer.url.clone(), ..Default::default() }).await
    }

    pub async fn start_with(opts: Opts) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let policies = dir.join("policies");
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &policies);
        if !opts.policy.is_empty() {
            std::fs::write(policies.join("test-extra.cedar"), &opts.policy).unwrap();
        }
        let mut d = Daemon::start_in(&dir, &opts).await;
        d._tmp = Some(tmp);
        d
    }

    /// Starts (or restarts) a daemon on an existing directory.
    pub async fn start_in(dir: &Path, opts: &Opts) -> Daemon {
        let policies = dir.join("policies");
        let mut text = config_text(dir, &policies, &opts.issuer_url, &opts.extra_toml, &opts.leases_toml);
        if let Some(store) = &opts.store {
            let sqlite = format!("store = \"sqlite://{}\"", dir.join("lessor.db").display());
            text = text.replace(&sqlite, &format!("store = \"{store}\""));
        }
        let cfg = Config::from_toml(&text).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = match &opts.clock {
            Some(c) => server::start_with_clock(cfg, listener, c.clone()).await.unwrap(),
            None => server::start(cfg, listener).await.unwrap(),
        };
        let addr = running.addr;
        let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        Daemon {
            url: format!("http://{addr}"),
            addr,
            running: Some(running),
            dir: dir.to_path_buf(),
            policies,
            admin,
            http: reqwest::Client::new(),
            _tmp: None,
        }
    }

    /// Stops the daemon, keeping its directory.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub async fn issue(&self, jwt: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}/v1/leases", self.url)).bearer_auth(jwt).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.url)).bearer_auth(token).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self.http.delete(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn bytes(&self, path: &str) -> Vec<u8> {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.bytes().await.unwrap().to_vec()
    }

    pub async fn introspect(&self, token: &str) -> Value {
        self.http
            .post(format!("{}/v1/token/introspect", self.url))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// All leases (admin view).
    pub async fn leases(&self) -> Vec<Value> {
        let (s, v) = self.get("/v1/admin/leases?limit=10000", &self.admin).await;
        assert_eq!(s, 200, "{v}");
        v["leases"].as_array().unwrap().clone()
    }

    /// Polls `f` until it returns Some, for at most `limit`.
    pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(v) = f().await {
                return Some(v);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn lease_state(&self, id: &str) -> String {
        let (_, v) = self.get(&format!("/v1/leases/{id}"), &self.admin).await;
        v["state"].as_str().unwrap_or("").to_owned()
    }

    /// Serials (lowercase hex) on a pki role's CRL.
    pub async fn crl_serials(&self, role: &str) -> Vec<String> {
        let der = self.bytes(&format!("/v1/pki/{role}/crl")).await;
        use x509_parser::prelude::FromDer;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        crl.iter_revoked_certificates().map(|r| hex::encode(r.raw_serial())).collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let (Some(r), Ok(h)) = (self.running.take(), tokio::runtime::Handle::try_current()) {
            // Best effort: tests that end without stop() still stop the tasks.
            h.spawn(r.shutdown());
        }
    }
}
