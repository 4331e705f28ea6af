//! Managed root credentials through the real server with an in-process fake
//! plugin: set -> verify -> approve (a second person, production only) ->
//! activate switches issuance; rollback; rotate; warnings; a wrong KEK stops
//! the start; the plaintext appears nowhere after the save; replicas on one
//! PostgreSQL store switch together. Approvals come only from distinct
//! people (made here as `Actor::Person` through the service: signing in is
//! the people module's) or the admin token as break-glass; a workload JWT
//! is refused.
//!
//! Why one file (about 840 lines): every test drives the same fake root
//! plugin (`FakeRoot`), daemon start-up (`start_with`) and admin API helper
//! (`Api`) through one lifecycle; split, each part would repeat them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lessor::config::Config;
use lessor::connections::ConnError;
use lessor::principal::{Actor, Person, RequestMeta};
use lessor::store::SecretVersion;
use lessor::plugins::{role_infos, Catalog, Role};
use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseRef, Plugin, PluginError, RenewRequest, Revocation, RootCredentials,
    RootSecretSpec, Validation,
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::support::{config_text, copy_dir, Daemon, Issuer};

/// A vendor whose root secret is `identity:database:password`; a password
/// starting with `bad` is rejected.
#[derive(Default)]
pub(crate) struct FakeRoot {
    installed: Mutex<BTreeMap<i64, String>>,
    active: Mutex<Option<i64>>,
    /// (lease id, root version) of each revocation.
    revoked: Mutex<Vec<(String, Option<i64>)>>,
    rotations: Mutex<u32>,
    /// When set, `rotate_root` takes this long (a vendor that hangs).
    rotate_delay: Mutex<Option<std::time::Duration>>,
    /// What the plugin saw of its call scope: (call, time left at its start).
    scopes: Mutex<Vec<(&'static str, Option<std::time::Duration>)>>,
    /// Set when a slow rotation saw its call cancelled.
    rotate_cancelled: Arc<std::sync::atomic::AtomicBool>,
    /// How many of the next `install_root` calls fail (a vendor hiccup).
    failing_installs: Mutex<u32>,
}

impl FakeRoot {
    fn saw(&self, op: &'static str) {
        self.scopes.lock().unwrap().push((op, lessor_plugin::call::remaining()));
    }
}

fn parse(secret: &str) -> Result<Validation, PluginError> {
    let mut it = secret.splitn(3, ':');
    let (user, db, pw) = (it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""));
    if pw.starts_with("bad") {
        return Err(PluginError::Permanent(format!("password rejected for user `{user}`")));
    }
    Ok(Validation {
        identity: user.into(),
        details: BTreeMap::from([("database".to_string(), db.to_string())]),
        warnings: vec!["certificate expires in 3 days".into()],
    })
}

#[async_trait]
impl Plugin for FakeRoot {
    fn kind(&self) -> &str {
        "fake"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: false, revocation: Revocation::Immediate }
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        let active = *self.active.lock().unwrap();
        let secret = active.and_then(|v| self.installed.lock().unwrap().get(&v).cloned());
        parse(&secret.ok_or_else(|| PluginError::Misconfigured("no root credential".into()))?)
    }
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        self.saw("issue");
        let v = self.active.lock().unwrap().ok_or_else(|| PluginError::Misconfigured("no root credential installed".into()))?;
        Ok(Issued {
            handle: json!({"id": req.lease_id.to_string()}),
            public: serde_json::Map::new(),
            secret: BTreeMap::from([("token".to_string(), SecretString::from(format!("tok-{}", req.lease_id)))]),
            expires_at: req.expires_at,
            root_version: Some(v),
        })
    }
    async fn renew(&self, _: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
    }
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let version = lease.root_version.filter(|v| self.installed.lock().unwrap().contains_key(v));
        self.revoked.lock().unwrap().push((lease.lease_id.to_string(), version));
        Ok(())
    }
    fn root_credentials(&self) -> Option<&dyn RootCredentials> {
        Some(self)
    }
}

#[async_trait]
impl RootCredentials for FakeRoot {
    fn spec(&self) -> RootSecretSpec {
        RootSecretSpec { describes: "identity:database:password".into(), can_rotate: true }
    }
    async fn validate_root(&self, candidate: &SecretString) -> Result<Validation, PluginError> {
        parse(candidate.expose_secret())
    }
    async fn install_root(&self, version: i64, secret: SecretString, active: bool) -> Result<(), PluginError> {
        {
            let mut failing = self.failing_installs.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(PluginError::Retryable("vendor hiccup".into()));
            }
        }
        self.installed.lock().unwrap().insert(version, secret.expose_secret().to_owned());
        if active {
            *self.active.lock().unwrap() = Some(version);
        }
        Ok(())
    }
    async fn remove_root(&self, version: i64) -> Result<(), PluginError> {
        self.installed.lock().unwrap().remove(&version);
        Ok(())
    }
    async fn rotate_root(&self) -> Result<SecretString, PluginError> {
        self.saw("rotate_root");
        let delay = *self.rotate_delay.lock().unwrap();
        if let Some(delay) = delay {
            // A multi-step plugin: watches its call's cancellation (as a
            // task it spawned would) and stops between steps.
            let token = lessor_plugin::call::cancellation().expect("rotate_root runs inside a call scope");
            let flag = self.rotate_cancelled.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            tokio::time::sleep(delay).await;
            lessor_plugin::call::check("changing the password")?;
        }
        *self.rotations.lock().unwrap() += 1;
        Ok(SecretString::from(format!("lessor_admin:app:ROTATED-{}", hex::encode(rand::random::<[u8; 8]>()))))
    }
}

const CANARY: &str = "CANARY-root-7f3a9c";

pub(crate) const POLICY: &str = r#"
@id("test-fake-issue")
permit(principal, action == Lessor::Action::"issue", resource is Lessor::Role)
when { resource.plugin == "fake" && principal has repository && principal.repository == "acme/api" };
// The example policies never let a workload approve; this one does, for
// alice, so lessor's own refusal of every workload approval is exercised.
@id("test-alice-may-also-approve")
permit(principal, action == Lessor::Action::"connection_approve", resource is Lessor::Connection)
when { principal.subject == "alice" };
// And this one lets the person alice (platform) approve, so lessor's own
// refusal of self-approval by people is exercised.
@id("test-alice-person-may-also-approve")
permit(principal is Lessor::Person, action == Lessor::Action::"connection_approve", resource is Lessor::Connection)
when { principal.provider == "dev" && principal.subject == "alice" };
"#;

pub(crate) fn fake_toml(rotate_after: &str, review_by: &str) -> String {
    format!(
        r#"
[connections.prod]
plugin = "fake"
environment = "production"
owner = "payments"
review_by = "{review_by}"
rotate_after = "{rotate_after}"
overlap = "1h"
[connections.prod.expected_identity]
identity = "lessor_admin"
database = "app"
[connections.prod.roles.app]
max_ttl = "1h"

[connections.stg]
plugin = "fake"
environment = "staging"
[connections.stg.roles.app]
max_ttl = "1h"
"#
    )
}

pub(crate) struct Fakes {
    prod: Arc<FakeRoot>,
    stg: Arc<FakeRoot>,
}

impl Fakes {
    pub(crate) fn new() -> Fakes {
        Fakes { prod: Arc::new(FakeRoot::default()), stg: Arc::new(FakeRoot::default()) }
    }
}

/// Starts the real server on `dir` with the fake plugins as the catalogue.
pub(crate) async fn start(dir: &Path, iss: &str, extra: &str, store: Option<&str>, fakes: &Fakes) -> anyhow::Result<Daemon> {
    start_with(dir, iss, extra, "", store, fakes).await
}

/// [`start`] with extra `[leases]` settings.
async fn start_with(dir: &Path, iss: &str, extra: &str, leases: &str, store: Option<&str>, fakes: &Fakes) -> anyhow::Result<Daemon> {
    let policies = dir.join("policies");
    if !policies.exists() {
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &policies);
        std::fs::write(policies.join("test-extra.cedar"), POLICY).unwrap();
    }
    let mut text = config_text(dir, &policies, iss, extra, leases);
    if let Some(s) = store {
        text = text.replace(&format!("store = \"sqlite://{}\"", dir.join("lessor.db").display()), &format!("store = \"{s}\""));
    }
    let cfg = Config::from_toml(&text)?;
    let infos: BTreeMap<String, _> = role_infos(&cfg).into_iter().map(|r| (r.name.clone(), r)).collect();
    let mut roles = BTreeMap::new();
    let mut connections: BTreeMap<String, Arc<dyn Plugin>> = BTreeMap::new();
    for (cname, plugin) in [("prod", fakes.prod.clone()), ("stg", fakes.stg.clone())] {
        let name = format!("{cname}/app");
        roles.insert(
            name.clone(),
            Arc::new(Role {
                name: name.clone(),
                connection: cname.into(),
                short: "app".into(),
                kind: "fake".into(),
                plugin: plugin.clone(),
                cfg: cfg.connections[cname].roles["app"].clone(),
                info: infos[&name].clone(),
            }),
        );
        connections.insert(cname.into(), plugin);
    }
    let catalog = Arc::new(Catalog { roles, connections, scopes: BTreeMap::new() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = lessor::server::start_with_catalog(cfg, listener, Some(catalog)).await?;
    let addr = running.addr;
    let admin = std::fs::read_to_string(dir.join("admin.token"))?.trim().to_owned();
    Ok(Daemon {
        url: format!("http://{addr}"),
        addr,
        running: Some(running),
        dir: dir.to_path_buf(),
        policies,
        admin,
        http: reqwest::Client::new(),
        _tmp: None,
    })
}

/// An operator's JWT (acme/lessor-ops main, named by `who`).
pub(crate) fn operator(iss: &Issuer, who: &str) -> String {
    let mut c = iss.gh_claims("acme/lessor-ops", "refs/heads/main");
    c.insert("sub".into(), json!(who));
    iss.sign(&c)
}

/// A person of `lessor dev`'s provider (or another), as the sign-in would
/// make them.
pub(crate) fn person(provider: &str, subject: &str, email: &str, groups: &[&str]) -> Actor {
    Actor::Person(Person {
        provider: provider.into(),
        issuer: "http://127.0.0.1:8201".into(),
        subject: subject.into(),
        email: email.into(),
        name: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    })
}

/// bob, in finance: people.cedar lets him approve.
pub(crate) fn bob() -> Actor {
    person("dev", "bob", "bob@example.com", &["finance"])
}

/// alice, in platform: people.cedar lets her set, verify and activate.
pub(crate) fn alice() -> Actor {
    person("dev", "alice", "alice@example.com", &["platform"])
}

pub(crate) fn roots(d: &Daemon) -> &lessor::connections::RootCredentials {
    d.running().leases.roots.as_deref().unwrap()
}

/// Approves the newest candidate as `who` through the service.
pub(crate) async fn approve_as(d: &Daemon, who: &Actor, conn: &str) -> Result<SecretVersion, ConnError> {
    roots(d).approve(who, conn, None, &RequestMeta::internal()).await
}

/// Calls the API and keeps every response body for the canary scan.
pub(crate) struct Api<'a> {
    pub(crate) d: &'a Daemon,
    pub(crate) seen: Mutex<Vec<String>>,
}

impl Api<'_> {
    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.d.http.request(method, format!("{}{path}", self.d.url)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }
    pub(crate) async fn set(&self, conn: &str, token: &str, secret: &str) -> (u16, Value) {
        let body = json!({"secret": secret, "reason": "quarterly change"});
        self.call(reqwest::Method::PUT, &format!("/v1/admin/connections/{conn}/secret"), token, Some(body)).await
    }
    pub(crate) async fn issue_version(&self, role: &str, jwt: &str) -> (String, Option<i64>) {
        let (s, v) = self.post("/v1/leases", jwt, json!({"role": role, "ttl": "10m"})).await;
        assert_eq!(s, 201, "{v}");
        let id = v["lease"]["lease_id"].as_str().or(v["lease_id"].as_str()).unwrap().to_owned();
        let l = self.d.running().store.get(&lessor_plugin::LeaseId::new(&id)).await.unwrap().unwrap();
        (id, l.root_version)
    }
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn installed_root_note() {
    tracing::info!("log capture: a callsite first hit elsewhere");
}

/// The capture sees an event whose callsite another thread hit first (with
/// no subscriber of its own there): with a per-test `set_default` that first
/// hit cached the callsite as off for the process whenever the capturing
/// test's subscriber was the only one, and the test lost the event. Events
/// of other threads are not in this test's capture.
#[test]
fn log_capture_sees_a_callsite_first_hit_on_another_thread() {
    let logs = crate::support::logs::capture();
    std::thread::spawn(installed_root_note).join().unwrap();
    assert!(logs.text().is_empty(), "another thread's event was captured: {}", logs.text());
    installed_root_note();
    tracing::debug!(level = "debug", "log capture: debug too");
    let text = logs.text();
    assert!(text.contains("a callsite first hit elsewhere") && text.contains("debug too"), "{text}");
}

#[tokio::test]
async fn production_needs_a_verified_secret_and_a_second_person_and_switches_issuance() {
    let logs = crate::support::logs::capture();

    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let review_by = (OffsetDateTime::now_utc() + time::Duration::days(3)).date().to_string();
    let fakes = Fakes::new();
    let d = start(tmp.path(), &iss.url, &fake_toml("1ms", &review_by), None, &fakes).await.unwrap();
    let api = Api { d: &d, seen: Mutex::new(Vec::new()) };
    let alice = operator(&iss, "alice");
    let alice_name = format!("{}#alice", iss.url);
    let workload = iss.token();
    let good1 = format!("lessor_admin:app:{CANARY}-one");

    // v1: set by alice, verified; activation needs someone else's approval.
    let (s, v) = api.set("prod", &alice, &good1).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!((v["version"].as_i64(), v["secret"].as_str()), (Some(1), Some("set")), "{v}");
    // The fingerprint is a keyed hash prefix: 8 hex digits, no 4 characters
    // of the secret (its last 4 were shown before).
    let fp = v["fingerprint"].as_str().unwrap().to_owned();
    assert!(fp.len() == 8 && fp.chars().all(|c| c.is_ascii_hexdigit()), "{fp}");
    let chars: Vec<char> = good1.chars().collect();
    for w in chars.windows(4) {
        assert!(!fp.contains(&w.iter().collect::<String>()), "fingerprint {fp} holds part of the secret");
    }
    assert_eq!(v["set_by"], alice_name.as_str());
    let (s, v) = api.post("/v1/admin/connections/prod/verify", &alice, json!({})).await;
    assert_eq!((s, v["result"]["ok"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["result"]["warnings"][0], "certificate expires in 3 days");
    let (s, v) = api.post("/v1/admin/connections/prod/activate", &alice, json!({})).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("needs approval by someone other than"), "{v}");
    // alice's JWT may not approve (a workload never does, though a test
    // policy permits it); bob, a person, does.
    let (s, v) = api.post("/v1/admin/connections/prod/approve", &alice, json!({})).await;
    assert_eq!(s, 403, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("`{alice_name}` is a workload: approvals come only from people")), "{msg}");
    let approved = approve_as(&d, &bob(), "prod").await.unwrap();
    assert_eq!(approved.approved_by.as_deref(), Some("dev#bob <bob@example.com>"));
    let (s, v) = api.post("/v1/admin/connections/prod/activate", &alice, json!({})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("active")), "{v}");
    let (lease1, ver) = api.issue_version("prod/app", &workload).await;
    assert_eq!(ver, Some(1));

    // Wrong password, wrong role, wrong database: each said precisely, none
    // activatable, production keeps issuing with v1.
    for (secret, expect) in [
        (format!("lessor_admin:app:bad-{CANARY}"), "password rejected for user `lessor_admin`"),
        (format!("app_ro:app:{CANARY}-ro"), "connected as `app_ro`, expected `lessor_admin`"),
        (format!("lessor_admin:app_staging:{CANARY}-stg"), "database `app_staging`, expected `app`"),
    ] {
        let (s, v) = api.set("prod", &alice, &secret).await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = api.post("/v1/admin/connections/prod/verify", &alice, json!({})).await;
        assert_eq!((s, v["result"]["ok"].as_bool()), (200, Some(false)), "{v}");
        assert!(v["result"]["message"].as_str().unwrap().contains(expect), "{v}");
        approve_as(&d, &bob(), "prod").await.unwrap();
        let (s, v) = api.post("/v1/admin/connections/prod/activate", &alice, json!({})).await;
        assert_eq!(s, 409, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("has not passed verification"), "{v}");
        assert_eq!(api.issue_version("prod/app", &workload).await.1, Some(1));
    }

    // v5: right; approved; activated: new issuance uses it; a lease issued
    // under v1 is revoked with v1 (still retiring).
    let (s, v) = api.set("prod", &alice, &format!("lessor_admin:app:{CANARY}-five")).await;
    assert_eq!((s, v["version"].as_i64()), (201, Some(5)), "{v}");
    assert_eq!(api.post("/v1/admin/connections/prod/verify", &alice, json!({})).await.0, 200);
    approve_as(&d, &bob(), "prod").await.unwrap();
    assert_eq!(api.post("/v1/admin/connections/prod/activate", &alice, json!({})).await.0, 200);
    assert_eq!(api.issue_version("prod/app", &workload).await.1, Some(5));
    let (s, v) = api.call(reqwest::Method::DELETE, &format!("/v1/leases/{lease1}"), &workload, None).await;
    assert_eq!(s, 200, "{v}");
    assert!(fakes.prod.revoked.lock().unwrap().contains(&(lease1.clone(), Some(1))));

    // Rollback: back to v1 at once.
    let (s, v) = api.post("/v1/admin/connections/prod/rollback", &alice, json!({})).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(1)), "{v}");
    assert_eq!(api.issue_version("prod/app", &workload).await.1, Some(1));

    // Rotate: the plugin makes one, lessor verifies and activates it.
    let (s, v) = api.post("/v1/admin/connections/prod/rotate", &alice, json!({})).await;
    assert_eq!((s, v["version"].as_i64(), v["state"].as_str()), (200, Some(6), Some("active")), "{v}");
    assert_eq!(*fakes.prod.rotations.lock().unwrap(), 1);
    assert_eq!(api.issue_version("prod/app", &workload).await.1, Some(6));
    let rotated = fakes.prod.installed.lock().unwrap()[&6].clone();

    // Inventory: versions, states, stale + expiring warnings, everywhere.
    let (s, v) = api.call(reqwest::Method::GET, "/v1/admin/connections/prod", &alice, None).await;
    assert_eq!(s, 200, "{v}");
    let states: Vec<&str> = v["versions"].as_array().unwrap().iter().map(|x| x["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["retiring", "candidate", "candidate", "candidate", "retiring", "active"]);
    let (s, v) = api.call(reqwest::Method::GET, "/v1/admin/connections", &d.admin, None).await;
    assert_eq!(s, 200);
    let prod = v["connections"].as_array().unwrap().iter().find(|c| c["name"] == "prod").unwrap().clone();
    assert_eq!((prod["active_version"].as_i64(), prod["owner"].as_str()), (Some(6), Some("payments")), "{prod}");
    assert_eq!(prod["roles"], json!(["prod/app"]));
    let warnings = prod["warnings"].to_string();
    assert!(warnings.contains("is stale") && warnings.contains(&format!("review/expiry date {review_by} is in")), "{warnings}");
    let (_, st) = api.call(reqwest::Method::GET, "/v1/admin/status", &d.admin, None).await;
    assert!(st["connection_warnings"].to_string().contains("is stale"), "{st}");
    let text = lessor::cli::render_status(&d.url, &st);
    assert!(text.contains("ROOT CREDENTIALS") && text.contains("review/expiry date"), "{text}");
    let metrics = String::from_utf8(d.bytes("/metrics").await).unwrap();
    assert!(metrics.contains("lessor_connection_credential_expiry_timestamp_seconds{connection=\"prod\"}"), "{metrics}");
    assert!(metrics.contains("lessor_connection_credential_age_seconds{connection=\"prod\"}"));

    // Canary: after the save, the plaintext is nowhere: not in the store,
    // the audit log, the debug logs, nor any API answer.
    let seen = api.seen.lock().unwrap().clone();
    drop(api);
    let mut d = d;
    d.stop().await;
    let logs = logs.text();
    assert!(logs.contains("root credential installed as active"), "debug logs were captured");
    let rotated_pw = rotated.rsplit(':').next().unwrap().to_owned();
    for needle in [CANARY, rotated_pw.as_str()] {
        assert!(!logs.contains(needle), "secret in the logs");
        for body in &seen {
            assert!(!body.contains(needle), "secret in an API response: {body}");
        }
        for f in files_under(tmp.path()) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "secret in {}", f.display());
        }
    }
    let audit = std::fs::read_to_string(tmp.path().join("audit.log")).unwrap();
    for action in ["connection.set_secret", "connection.verify", "connection.approve", "connection.activate", "connection.rollback", "connection.rotate"] {
        assert!(audit.contains(&format!("\"{action}\"")), "{action} not audited");
    }
}

#[tokio::test]
async fn staging_needs_no_approval_and_a_wrong_kek_stops_the_start() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fakes = Fakes::new();
    let toml = fake_toml("90d", "2099-01-01");
    let mut d = start(tmp.path(), &iss.url, &toml, None, &fakes).await.unwrap();
    let api = Api { d: &d, seen: Mutex::new(Vec::new()) };
    let (s, v) = api.set("stg", &d.admin, "lessor_admin:app:stg-secret").await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(api.post("/v1/admin/connections/stg/verify", &d.admin, json!({})).await.0, 200);
    let (s, v) = api.post("/v1/admin/connections/stg/activate", &d.admin, json!({})).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(1)), "{v}");
    assert_eq!(api.issue_version("stg/app", &iss.token()).await.1, Some(1));
    // Secrets set with no expected_identity still verify, and say so.
    let (_, v) = api.post("/v1/admin/connections/stg/verify", &d.admin, json!({"version": 1})).await;
    assert!(v["result"]["message"].as_str().unwrap().contains("no expected_identity configured"), "{v}");
    let kek_id = lessor::seal::Seal::load_or_create(&tmp.path().join("seal.key"), false).unwrap().key_id();
    drop(api);
    d.stop().await;

    // Restarted with another key-encryption key: refuses, naming the id
    // the store's credentials were written under; nothing is served.
    let other = tmp.path().join("other.key");
    std::fs::write(&other, base64_key()).unwrap();
    let fresh = Fakes::new();
    let err = start(tmp.path(), &iss.url, &format!("{toml}\n[kek]\nfile = \"{}\"\n", other.display()), None, &fresh)
        .await
        .err()
        .expect("a wrong KEK must stop the start");
    let msg = format!("{err:#}");
    assert!(msg.contains(&format!("key-encryption key id `{kek_id}`")), "{msg}");
    assert!(fresh.stg.installed.lock().unwrap().is_empty(), "nothing was installed");
    // With the right key (the seal key, the default) it starts and installs.
    let d = start(tmp.path(), &iss.url, &toml, None, &fresh).await.unwrap();
    assert_eq!(*fresh.stg.active.lock().unwrap(), Some(1));
    drop(d);
}

/// On SQLite (one process owns the store) an issue does not ask the store
/// for the active root version while no switch began since the last
/// install; but a switch whose install failed is still installed by the
/// next issue, which then uses the new version.
#[tokio::test]
async fn a_switch_whose_install_failed_is_installed_by_the_next_issue() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fakes = Fakes::new();
    let d = start(tmp.path(), &iss.url, &fake_toml("90d", "2099-01-01"), None, &fakes).await.unwrap();
    let api = Api { d: &d, seen: Mutex::new(Vec::new()) };
    for (version, secret) in [(1, "lessor_admin:app:one"), (2, "lessor_admin:app:two")] {
        assert_eq!(api.set("stg", &d.admin, secret).await.0, 201);
        assert_eq!(api.post("/v1/admin/connections/stg/verify", &d.admin, json!({})).await.0, 200);
        if version == 2 {
            // The switch is stored, its install fails.
            *fakes.stg.failing_installs.lock().unwrap() = 1;
        }
        let (s, v) = api.post("/v1/admin/connections/stg/activate", &d.admin, json!({})).await;
        assert_eq!((s, v["version"].as_i64()), (200, Some(version)), "{v}");
        if version == 2 {
            assert_eq!(*fakes.stg.active.lock().unwrap(), Some(1), "the failed install left version 1 in the plugin");
        }
        assert_eq!(api.issue_version("stg/app", &iss.token()).await.1, Some(version), "issued under the store's active version");
        assert_eq!(*fakes.stg.active.lock().unwrap(), Some(version));
    }
}

/// A rotation that outlives `leases.root_timeout` fails naming the setting,
/// is cancelled (the plugin sees it and stops before its vendor step), and
/// changes nothing: no new version, the active one stays active and in use.
/// Plugins see the core's deadline inside their calls.
#[tokio::test]
async fn a_hung_rotation_times_out_precisely_and_changes_nothing() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fakes = Fakes::new();
    let toml = fake_toml("90d", "2099-01-01");
    let d = start_with(tmp.path(), &iss.url, &toml, "call_timeout = \"7s\"\nroot_timeout = \"1s\"", None, &fakes).await.unwrap();
    let api = Api { d: &d, seen: Mutex::new(Vec::new()) };
    assert_eq!(api.set("stg", &d.admin, "lessor_admin:app:stg-secret").await.0, 201);
    assert_eq!(api.post("/v1/admin/connections/stg/verify", &d.admin, json!({})).await.0, 200);
    assert_eq!(api.post("/v1/admin/connections/stg/activate", &d.admin, json!({})).await.0, 200);
    assert_eq!(api.issue_version("stg/app", &iss.token()).await.1, Some(1));
    // The issue ran under `leases.call_timeout`.
    let (op, left) = fakes.stg.scopes.lock().unwrap()[0];
    assert_eq!(op, "issue");
    let left = left.expect("issue sees its deadline");
    assert!(left <= std::time::Duration::from_secs(7) && left > std::time::Duration::from_secs(5), "{left:?}");
    let before = d.running().store.secret_versions(Some("stg")).await.unwrap();

    *fakes.stg.rotate_delay.lock().unwrap() = Some(std::time::Duration::from_secs(5));
    let t0 = std::time::Instant::now();
    let (s, v) = api.post("/v1/admin/connections/stg/rotate", &d.admin, json!({})).await;
    let took = t0.elapsed();
    assert_eq!(s, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("connection `stg`: `rotate_root` did not finish within 1s (leases.root_timeout); the plugin was told to stop"),
        "{msg}"
    );
    assert!(took < std::time::Duration::from_secs(4), "the core waited {took:?}, not the 1s bound");
    // The plugin saw the 1s deadline and then its cancellation.
    let (op, left) = *fakes.stg.scopes.lock().unwrap().last().unwrap();
    assert_eq!(op, "rotate_root");
    assert!(left.is_some_and(|l| l <= std::time::Duration::from_secs(1)), "{left:?}");
    for _ in 0..50 {
        if fakes.stg.rotate_cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(fakes.stg.rotate_cancelled.load(std::sync::atomic::Ordering::SeqCst), "the rotation was not cancelled");
    // Nothing changed: the same versions in the same states, no rotation
    // finished at the vendor, issuance still on version 1.
    let after = d.running().store.secret_versions(Some("stg")).await.unwrap();
    let states = |vs: &[lessor::store::SecretVersion]| vs.iter().map(|v| (v.version, v.state)).collect::<Vec<_>>();
    assert_eq!(states(&after), states(&before));
    assert_eq!(states(&after), vec![(1, lessor::store::SecretState::Active)]);
    assert_eq!(*fakes.stg.rotations.lock().unwrap(), 0);
    assert_eq!(api.issue_version("stg/app", &iss.token()).await.1, Some(1));

    // Without the hang the same rotation goes through.
    *fakes.stg.rotate_delay.lock().unwrap() = None;
    let (s, v) = api.post("/v1/admin/connections/stg/rotate", &d.admin, json!({})).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
}

fn base64_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// Two replicas on one PostgreSQL store: an activation through one is what
/// the other issues with on its very next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_store_switch_together() {
    let (_pg, dsn) = crate::store::pg_store_db();
    let iss = Issuer::start().await;
    let toml = fake_toml("90d", "2099-01-01");
    let (t1, t2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (f1, f2) = (Fakes::new(), Fakes::new());
    let d1 = start(t1.path(), &iss.url, &toml, Some(&dsn), &f1).await.unwrap();
    std::fs::copy(t1.path().join("seal.key"), t2.path().join("seal.key")).unwrap();
    // Replicas share the admin token file too (each file replaces `bootstrap`).
    std::fs::copy(t1.path().join("admin.token"), t2.path().join("admin.token")).unwrap();
    let d2 = start(t2.path(), &iss.url, &toml, Some(&dsn), &f2).await.unwrap();
    let a1 = Api { d: &d1, seen: Mutex::new(Vec::new()) };
    let a2 = Api { d: &d2, seen: Mutex::new(Vec::new()) };
    let jwt = iss.token();
    for (n, secret) in [(1, "lessor_admin:app:first"), (2, "lessor_admin:app:second")] {
        assert_eq!(a1.set("stg", &d1.admin, secret).await.0, 201);
        assert_eq!(a1.post("/v1/admin/connections/stg/verify", &d1.admin, json!({})).await.0, 200);
        assert_eq!(a1.post("/v1/admin/connections/stg/activate", &d1.admin, json!({})).await.0, 200);
        // No waiting: d2's next issue uses the new version.
        assert_eq!(a2.issue_version("stg/app", &jwt).await.1, Some(n));
        assert_eq!(a1.issue_version("stg/app", &jwt).await.1, Some(n));
    }
    let (s, v) = a2.post("/v1/admin/connections/stg/rollback", &d2.admin, json!({})).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(1)), "{v}");
    assert_eq!(a1.issue_version("stg/app", &jwt).await.1, Some(1));
    // d2 holds v1 and v2 (retiring, for revocation).
    assert!(f2.stg.installed.lock().unwrap().contains_key(&2));
}

/// End to end against a real PostgreSQL, through the real postgres plugin
/// with a managed admin DSN: a wrong password and a right password for the
/// wrong role are named precisely while production keeps issuing; a right
/// one needs a second person's approval, then new roles are made with it;
/// rollback; rotate changes the admin's password at the server, and nobody
/// ever sees the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_root_credentials_end_to_end() {
    use crate::postgres::{start_pg, PG_POLICY};
    let pg = start_pg();
    let pw = format!("{CANARY}-admin");
    pg.psql("postgres", &format!("CREATE ROLE lessor_admin LOGIN CREATEROLE PASSWORD '{pw}'")).unwrap();
    pg.psql("app", "ALTER TABLE orders OWNER TO lessor_admin").unwrap();
    // Another role that could do the job, but is not the one expected.
    pg.psql("postgres", &format!("CREATE ROLE app_ro LOGIN CREATEROLE PASSWORD '{CANARY}-ro'")).unwrap();

    let iss = Issuer::start().await;
    let extra = r#"
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0

[connections.pg]
plugin = "postgres"
environment = "production"
owner = "platform"
[connections.pg.expected_identity]
identity = "lessor_admin"
database = "app"
[connections.pg.config]
pool_size = 2
[connections.pg.roles.app]
max_ttl = "1h"
default_ttl = "10m"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
[connections.pg.roles.app.config.grants]
"orders.read" = ["GRANT SELECT ON orders TO {{name}}"]
"#;
    let mut d = Daemon::start_with(crate::support::Opts {
        issuer_url: iss.url.clone(),
        extra_toml: extra.into(),
        policy: PG_POLICY.into(),
        ..Default::default()
    })
    .await;
    let api = Api { d: &d, seen: Mutex::new(Vec::new()) };
    let alice = operator(&iss, "alice");
    let workload = iss.token();
    let ok = |v: &Value| v["result"]["ok"].as_bool();

    // Nothing installed yet: issuing says what to do.
    let (s, v) = api.post("/v1/leases", &workload, json!({"role": "pg/app"})).await;
    assert_ne!(s, 201, "{v}");
    assert!(v.to_string().contains("set-secret"), "{v}");

    // v1: the right DSN; verified; approved by bob; activated.
    let right = pg.dsn("lessor_admin", &pw, "app");
    assert_eq!(api.set("pg", &alice, &right).await.0, 201);
    let (s, v) = api.post("/v1/admin/connections/pg/verify", &alice, json!({})).await;
    assert_eq!((s, ok(&v)), (200, Some(true)), "{v}");
    assert_eq!(api.post("/v1/admin/connections/pg/approve", &alice, json!({})).await.0, 403, "no workload approval");
    approve_as(&d, &bob(), "pg").await.unwrap();
    assert_eq!(api.post("/v1/admin/connections/pg/activate", &alice, json!({})).await.0, 200);
    let (lease1, ver) = api.issue_version("pg/app", &workload).await;
    assert_eq!(ver, Some(1));

    // A wrong password, then the right password of the wrong role: named
    // precisely, never activatable, production keeps issuing with v1.
    for (dsn, expect) in [
        (pg.dsn("lessor_admin", "not-the-password", "app"), "password rejected"),
        (pg.dsn("app_ro", &format!("{CANARY}-ro"), "app"), "connected as `app_ro`, expected `lessor_admin`"),
    ] {
        assert_eq!(api.set("pg", &alice, &dsn).await.0, 201);
        let (s, v) = api.post("/v1/admin/connections/pg/verify", &alice, json!({})).await;
        assert_eq!((s, ok(&v)), (200, Some(false)), "{v}");
        assert!(v["result"]["message"].as_str().unwrap_or_default().contains(expect), "{v}");
        approve_as(&d, &bob(), "pg").await.unwrap();
        assert_eq!(api.post("/v1/admin/connections/pg/activate", &alice, json!({})).await.0, 409);
        assert_eq!(api.issue_version("pg/app", &workload).await.1, Some(1));
    }

    // v4: right again; approved; activated: new roles come from it, and the
    // lease issued under v1 is still revoked (its role dropped).
    assert_eq!(api.set("pg", &alice, &right).await.0, 201);
    assert_eq!(api.post("/v1/admin/connections/pg/verify", &alice, json!({})).await.0, 200);
    approve_as(&d, &bob(), "pg").await.unwrap();
    assert_eq!(api.post("/v1/admin/connections/pg/activate", &alice, json!({})).await.0, 200);
    assert_eq!(api.issue_version("pg/app", &workload).await.1, Some(4));
    let (s, v) = api.call(reqwest::Method::DELETE, &format!("/v1/leases/{lease1}"), &workload, None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("revoked")), "{v}");
    let hex = &lease1[lease1.len() - 32..];
    let left = pg.psql("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname LIKE '%{hex}'")).unwrap();
    assert_eq!(left, "0", "the v1 lease's role is dropped");

    // Rollback to v1.
    let (s, v) = api.post("/v1/admin/connections/pg/rollback", &alice, json!({})).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(1)), "{v}");
    assert_eq!(api.issue_version("pg/app", &workload).await.1, Some(1));

    // Rotate: lessor sets a new password at the server and uses it; the old
    // one stops working; the answer shows no secret.
    let (s, v) = api.post("/v1/admin/connections/pg/rotate", &alice, json!({})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("active")), "{v}");
    let rotated = v["version"].as_i64().unwrap();
    assert_eq!(api.issue_version("pg/app", &workload).await.1, Some(rotated));
    assert!(sqlx::PgPool::connect(&right).await.is_err(), "the old admin password still works after rotate");
    let (_, v) = api.call(reqwest::Method::GET, "/v1/admin/connections/pg", &alice, None).await;
    assert!(v.to_string().contains("\"set\""), "{v}");

    // The admin password never left the save: not in the store, the audit
    // log or any answer.
    let seen = api.seen.lock().unwrap().clone();
    drop(api);
    d.stop().await;
    for body in &seen {
        assert!(!body.contains(CANARY), "a secret in an API response: {body}");
    }
    for f in files_under(&d.dir) {
        // SQLite may remove its -wal/-shm files as the last connection closes.
        let Ok(bytes) = std::fs::read(&f) else { continue };
        assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()), "a secret in {}", f.display());
    }
    assert!(files_under(&d.dir).iter().any(|f| f.ends_with("lessor.db")), "the store was scanned");
}

/// `lessor rekey` moves every version's data key to a KMS hook (here a
/// script; a real one calls the KMS): the store's credentials then open
/// only with the hook, and the old key no longer starts the daemon.
#[cfg(unix)]
#[tokio::test]
async fn rekey_moves_the_credentials_to_a_kms_hook() {
    use std::os::unix::fs::PermissionsExt;
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fakes = Fakes::new();
    let toml = fake_toml("90d", "2099-01-01");
    let mut d = start(tmp.path(), &iss.url, &toml, None, &fakes).await.unwrap();
    let api = Api { d: &d, seen: Mutex::new(Vec::new()) };
    assert_eq!(api.set("stg", &d.admin, &format!("lessor_admin:app:{CANARY}-kms")).await.0, 201);
    assert_eq!(api.post("/v1/admin/connections/stg/verify", &d.admin, json!({})).await.0, 200);
    assert_eq!(api.post("/v1/admin/connections/stg/activate", &d.admin, json!({})).await.0, 200);
    drop(api);
    d.stop().await;

    // A stand-in KMS (coreutils only): "wraps" by prefixing a tag, and
    // unwraps only what carries it.
    let hook = tmp.path().join("kms-hook");
    std::fs::write(
        &hook,
        "#!/bin/sh\nset -e\ncase \"$1\" in\n  wrap) (printf KMS1; base64 -d) | base64 -w0 ;;\n  \
         unwrap) base64 -d > \"$0.in\"; [ \"$(head -c 4 \"$0.in\")\" = KMS1 ]; tail -c +5 \"$0.in\" | base64 -w0; rm -f \"$0.in\" ;;\n  \
         *) exit 2 ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = Config::from_toml(&config_text(tmp.path(), &tmp.path().join("policies"), &iss.url, &toml, "")).unwrap();
    let new = lessor::config::KekConfig {
        command: Some(vec![hook.display().to_string()]),
        key_id: Some("kms:test-key".into()),
        ..Default::default()
    };
    lessor::cli::connection::rekey(&cfg, &new).await.unwrap();

    // With the hook: starts, installs v1 (unwrapped through the hook).
    let with_hook = format!("{toml}\n[kek]\ncommand = [\"{}\"]\nkey_id = \"kms:test-key\"\n", hook.display());
    let fresh = Fakes::new();
    let d = start(tmp.path(), &iss.url, &with_hook, None, &fresh).await.unwrap();
    assert_eq!(*fresh.stg.active.lock().unwrap(), Some(1));
    assert!(fresh.stg.installed.lock().unwrap()[&1].ends_with(&format!("{CANARY}-kms")), "the hook unwrapped the real secret");
    let mut d = d;
    d.stop().await;
    // With the old key (the seal key, the default): refuses, naming the hook's key id.
    let err = start(tmp.path(), &iss.url, &toml, None, &Fakes::new()).await.err().expect("the old KEK must not start");
    assert!(format!("{err:#}").contains("kms:test-key"), "{err:#}");
}
