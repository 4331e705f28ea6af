//! The lease engine's promises with an in-process plugin in the real
//! server: nothing issued outlives its lease (a lease revoked mid-issue
//! takes its credential back; a dead replica's pending lease is cleaned up
//! after `claim_timeout`), unrevocable credentials are reported as such,
//! and ended leases are pruned after the retention period.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lessor::config::Config;
use lessor::plugins::{role_infos, Catalog, Role};
use lessor::store::{EndReason, LeaseState};
use lessor_plugin::secrecy::SecretString;
use lessor_plugin::{Capabilities, Revocation, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginError, RenewRequest, Validation};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::support::{config_text, copy_dir, Daemon, Issuer};

/// A vendor that can be held mid-issue and records every revocation.
struct Slow {
    can_revoke: bool,
    /// Issues wait for a permit while set.
    hold: AtomicBool,
    gate: tokio::sync::Semaphore,
    /// Lease ids whose issue has started.
    started: tokio::sync::mpsc::UnboundedSender<String>,
    /// (lease id, handle) of each successful revocation.
    revoked: Mutex<Vec<(String, Option<Value>)>>,
    /// Revocations to fail (vendor down) before they work again.
    fail_revokes: std::sync::atomic::AtomicUsize,
}

impl Slow {
    fn new(can_revoke: bool, hold: bool) -> (Arc<Slow>, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let s = Slow {
            can_revoke,
            hold: AtomicBool::new(hold),
            gate: tokio::sync::Semaphore::new(0),
            started: tx,
            revoked: Mutex::new(Vec::new()),
            fail_revokes: std::sync::atomic::AtomicUsize::new(0),
        };
        (Arc::new(s), rx)
    }

    fn revoked(&self) -> Vec<(String, Option<Value>)> {
        self.revoked.lock().unwrap().clone()
    }
}

#[async_trait]
impl Plugin for Slow {
    fn kind(&self) -> &str {
        "slow"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: false, revocation: if self.can_revoke { Revocation::Immediate } else { Revocation::AtExpiry } }
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        Ok(Validation { identity: "slow".into(), details: BTreeMap::new(), warnings: vec![] })
    }
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let _ = self.started.send(req.lease_id.to_string());
        if self.hold.load(Ordering::SeqCst) {
            self.gate.acquire().await.map_err(|e| PluginError::Retryable(e.to_string()))?.forget();
        }
        Ok(Issued {
            handle: json!({"user": format!("u-{}", req.lease_id)}),
            public: serde_json::Map::new(),
            secret: BTreeMap::from([("token".to_string(), SecretString::from(format!("tok-{}", req.lease_id)))]),
            expires_at: req.expires_at,
            root_version: None,
        })
    }
    async fn renew(&self, _: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
    }
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let fail = self.fail_revokes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if fail {
            return Err(PluginError::Retryable("connection refused".into()));
        }
        self.revoked.lock().unwrap().push((lease.lease_id.to_string(), lease.handle.clone()));
        Ok(())
    }
}

const POLICY: &str = r#"
@id("test-slow-issue")
permit(principal, action == Lessor::Action::"issue", resource is Lessor::Role)
when { resource.plugin == "slow" && principal has repository && principal.repository == "acme/api" };
"#;

const SLOW_TOML: &str = r#"
[connections.slow]
plugin = "slow"
environment = "staging"
[connections.slow.roles.app]
max_ttl = "1h"
default_ttl = "10m"
"#;

/// Starts the real server on a new temp dir with `plugin` as the only
/// connection's plugin. `leases`: extra `[leases]` lines; `store`: a store URL.
async fn start(iss: &Issuer, plugin: Arc<Slow>, leases: &str, store: Option<&str>) -> Daemon {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let policies = dir.join("policies");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &policies);
    std::fs::write(policies.join("test-extra.cedar"), POLICY).unwrap();
    let mut text = config_text(&dir, &policies, &iss.url, SLOW_TOML, leases);
    if let Some(s) = store {
        text = text.replace(&format!("store = \"sqlite://{}\"", dir.join("lessor.db").display()), &format!("store = \"{s}\""));
    }
    let cfg = Config::from_toml(&text).unwrap();
    let infos: BTreeMap<String, _> = role_infos(&cfg).into_iter().map(|r| (r.name.clone(), r)).collect();
    let role = Role {
        name: "slow/app".into(),
        connection: "slow".into(),
        short: "app".into(),
        kind: "slow".into(),
        plugin: plugin.clone(),
        cfg: cfg.connections["slow"].roles["app"].clone(),
        info: infos["slow/app"].clone(),
    };
    let catalog = Catalog {
        roles: BTreeMap::from([("slow/app".to_string(), Arc::new(role))]),
        connections: BTreeMap::from([("slow".to_string(), plugin as Arc<dyn Plugin>)]),
        scopes: BTreeMap::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = lessor::server::start_with_catalog(cfg, listener, Some(Arc::new(catalog))).await.unwrap();
    let addr = running.addr;
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    Daemon {
        url: format!("http://{addr}"),
        addr,
        running: Some(running),
        dir: dir.clone(),
        policies,
        admin,
        http: reqwest::Client::new(),
        _tmp: Some(tmp),
    }
}

/// Audit lines that mention `needle`, once at least one does.
async fn audit_lines(d: &Daemon, needle: &str) -> Vec<Value> {
    let path = d.dir.join("audit.log");
    Daemon::eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> =
            text.lines().filter(|l| l.contains(needle)).filter_map(|l| serde_json::from_str(l).ok()).collect();
        (!lines.is_empty()).then_some(lines)
    })
    .await
    .unwrap_or_default()
}

/// An admin revokes a lease while its plugin is still creating the
/// credential: the issue answers 409 and the credential the plugin then
/// created is revoked (its handle reaches the plugin), and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_mid_issue_takes_its_new_credential_back() {
    let iss = Issuer::start().await;
    let (plugin, mut started) = Slow::new(true, true);
    let d = start(&iss, plugin.clone(), "", None).await;
    let jwt = iss.token();
    let (url, http, j) = (d.url.clone(), d.http.clone(), jwt.clone());
    let issuing = tokio::spawn(async move {
        let r = http.post(format!("{url}/v1/leases")).bearer_auth(j).json(&json!({"role": "slow/app"})).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
    });
    let id = started.recv().await.unwrap();
    // The plugin is creating the credential; an admin revokes the lease.
    let (s, v) = d.delete(&format!("/v1/leases/{id}"), &d.admin).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("revoked")), "{v}");
    assert_eq!(plugin.revoked(), [(id.clone(), None)], "the admin's revocation ran before the credential existed");
    plugin.gate.add_permits(1);
    let (s, v) = issuing.await.unwrap();
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("was taken back"), "{v}");
    let handle = json!({"user": format!("u-{id}")});
    assert!(plugin.revoked().contains(&(id.clone(), Some(handle))), "the new credential was not revoked: {:?}", plugin.revoked());
    let l = d.running().store.get(&LeaseId::new(&id)).await.unwrap().unwrap();
    assert_eq!(l.state, LeaseState::Revoked);
    let lines = audit_lines(&d, "lease ended while its credential was being created").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((lines[0]["action"].as_str(), lines[0]["outcome"].as_str()), (Some("revoke"), Some("ok")), "{}", lines[0]);
    assert_eq!(lines[0]["lease_id"].as_str(), Some(id.as_str()));
}

/// The same, with the vendor failing the first attempt to take the new
/// credential back: the lease becomes live again (`revoke_failed`, with the
/// credential's handle) and the worker retries until it is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_take_back_after_a_mid_issue_revoke_is_retried() {
    let iss = Issuer::start().await;
    let (plugin, mut started) = Slow::new(true, true);
    let d = start(&iss, plugin.clone(), "", None).await;
    let (url, http, j) = (d.url.clone(), d.http.clone(), iss.token());
    let issuing = tokio::spawn(async move {
        let r = http.post(format!("{url}/v1/leases")).bearer_auth(j).json(&json!({"role": "slow/app"})).send().await.unwrap();
        r.status().as_u16()
    });
    let id = started.recv().await.unwrap();
    let (s, v) = d.delete(&format!("/v1/leases/{id}"), &d.admin).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("revoked")), "{v}");
    plugin.fail_revokes.store(1, Ordering::SeqCst);
    plugin.gate.add_permits(1);
    assert_eq!(issuing.await.unwrap(), 409);
    let handle = json!({"user": format!("u-{id}")});
    let l = Daemon::eventually(Duration::from_secs(10), || async {
        let l = d.running().store.get(&LeaseId::new(&id)).await.unwrap().unwrap();
        (l.state == LeaseState::Revoked && l.handle.is_some()).then_some(l)
    })
    .await
    .expect("the credential is revoked on retry");
    assert_eq!((l.end_reason, l.attempts), (Some(EndReason::Orphaned), 1), "{l:?}");
    assert!(plugin.revoked().contains(&(id.clone(), Some(handle))), "{:?}", plugin.revoked());
}

/// A plugin that cannot revoke: an explicit revocation and a bulk job do
/// not claim success. The API shows `revoke_unsupported` and until when the
/// credential stays valid; the job counts them apart; the audit says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrevocable_credentials_are_reported_as_living_until_they_expire() {
    let iss = Issuer::start().await;
    let (plugin, _started) = Slow::new(false, false);
    let d = start(&iss, plugin.clone(), "", None).await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "slow/app"})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["lease_id"].as_str().unwrap().to_owned();
    // As stored (milliseconds), which is what later answers show.
    let expires_at = d.get(&format!("/v1/leases/{id}"), &jwt).await.1["expires_at"].as_str().unwrap().to_owned();
    let (s, v) = d.delete(&format!("/v1/leases/{id}"), &jwt).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("revoke_unsupported")), "{v}");
    assert_eq!(v["end_reason"].as_str(), Some("revoked"), "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("stays valid until {expires_at}")), "{v}");
    assert_eq!(d.get(&format!("/v1/leases/{id}"), &jwt).await.1["state"], "revoke_unsupported");
    let lines = audit_lines(&d, "revoke_unsupported").await;
    assert!(
        lines.iter().any(|l| l["lease_id"] == id.as_str() && l["action"] == "revoke"
            && l["outcome"] == "revoke_unsupported" && l["details"]["valid_until"] == expires_at.as_str()),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l["lease_id"] == id.as_str() && l["outcome"] == "ok"), "{lines:?}");

    // Bulk: two more, revoked by a job.
    for _ in 0..2 {
        let (s, v) = d.issue(&jwt, json!({"role": "slow/app"})).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = d.post("/v1/admin/revoke", &d.admin, json!({"role": "slow/app"})).await;
    assert_eq!((s, v["scheduled"].as_i64()), (202, Some(2)), "{v}");
    let status = v["status"].as_str().unwrap().to_owned();
    let j = Daemon::eventually(Duration::from_secs(10), || async {
        let (_, j) = d.get(&status, &d.admin).await;
        (j["pending"] == 0 && j["failing"] == 0).then_some(j)
    })
    .await
    .expect("the job finishes");
    assert_eq!(j["state"], "done_with_unrevocable", "{j}");
    assert_eq!((j["done"].as_i64(), j["unrevocable"]["count"].as_i64()), (Some(0), Some(2)), "{j}");
    assert!(j["unrevocable"]["message"].as_str().unwrap().contains("stay valid until"), "{j}");
    assert!(plugin.revoked().is_empty(), "nothing to call: the plugin cannot revoke");
}

/// Three replicas' worth of store: a replica (store `a`) records a pending
/// lease and dies before activating it. The daemon on the same PostgreSQL
/// store revokes it once `a`'s claim lapses (`claim_timeout` = 1s here),
/// long before `pending_grace` (2 minutes, the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_pending_lease_is_revoked_after_claim_timeout() {
    use lessor::store::postgres::PgStore;
    use lessor::store::Store;
    let (_pg, dsn) = crate::store::pg_store_db();
    let iss = Issuer::start().await;
    let (plugin, _started) = Slow::new(true, false);
    let d = start(&iss, plugin.clone(), "claim_timeout = \"1s\"", Some(&dsn)).await;
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(Duration::from_secs(1)));
    let now = OffsetDateTime::now_utc();
    let id = LeaseId::new("lse_00000000000000000000000000dead01");
    let lease = lessor::store::Lease {
        id: id.clone(),
        role: "slow/app".into(),
        plugin: "slow".into(),
        issuer: iss.url.clone(),
        subject: "repo:acme/api:ref:refs/heads/main".into(),
        claims: json!({}),
        scopes: vec![],
        policies: vec![],
        state: LeaseState::Pending,
        issued_at: now,
        expires_at: now + Duration::from_secs(600),
        max_expires_at: now + Duration::from_secs(3600),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    };
    a.insert_pending(&lease).await.unwrap();
    drop(a); // killed between creating the vendor credential and activating it
    let started = std::time::Instant::now();
    let l = Daemon::eventually(Duration::from_secs(15), || async {
        let l = d.running().store.get(&id).await.unwrap().unwrap();
        (l.state != LeaseState::Pending).then_some(l)
    })
    .await
    .expect("the orphan is cleaned up well before pending_grace");
    assert_eq!((l.state, l.end_reason), (LeaseState::Revoked, Some(EndReason::Orphaned)));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(plugin.revoked().iter().any(|(i, _)| i == id.as_str()), "the plugin was asked to revoke it");
}

/// Retention: with a short period, ended leases disappear from the store
/// while live ones stay (both backends).
async fn ended_leases_are_pruned(store: Option<&str>) {
    let iss = Issuer::start().await;
    let (plugin, _started) = Slow::new(true, false);
    let d = start(&iss, plugin, "retention = \"1s\"", store).await;
    let jwt = iss.token();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (s, v) = d.issue(&jwt, json!({"role": "slow/app"})).await;
        assert_eq!(s, 201, "{v}");
        ids.push(LeaseId::new(v["lease_id"].as_str().unwrap()));
    }
    for id in &ids[..2] {
        let (s, v) = d.delete(&format!("/v1/leases/{id}"), &jwt).await;
        assert_eq!((s, v["state"].as_str()), (200, Some("revoked")), "{v}");
    }
    let store = d.running().store.clone();
    let gone = Daemon::eventually(Duration::from_secs(15), || async {
        let mut left = 0;
        for id in &ids[..2] {
            left += usize::from(store.get(id).await.unwrap().is_some());
        }
        (left == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "revoked leases outlived a 1s retention");
    let live = store.get(&ids[2]).await.unwrap().expect("the live lease was pruned");
    assert_eq!(live.state, LeaseState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_leases_are_pruned_after_retention_on_sqlite() {
    ended_leases_are_pruned(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_leases_are_pruned_after_retention_on_postgres() {
    let (_pg, dsn) = crate::store::pg_store_db();
    ended_leases_are_pruned(Some(&dsn)).await;
}

/// Every plugin call is bounded by the core: an issue that outlives
/// `leases.call_timeout` is cancelled, answered 503 naming the timeout, and
/// its pending lease is revoked through the plugin (from its id alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_past_the_call_timeout_is_cancelled_and_its_lease_revoked() {
    let iss = Issuer::start().await;
    let (plugin, mut started) = Slow::new(true, true);
    let d = start(&iss, plugin.clone(), "call_timeout = \"300ms\"", None).await;
    let t0 = std::time::Instant::now();
    let (s, v) = d.issue(&iss.token(), json!({"role": "slow/app"})).await;
    let took = t0.elapsed();
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("did not finish issuing within 300ms"), "{v}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "took {took:?}");
    let id = started.recv().await.unwrap();
    assert_eq!(plugin.revoked(), [(id.clone(), None)], "the cancelled issue's lease was not revoked");
    let l = d.running().store.get(&LeaseId::new(&id)).await.unwrap().unwrap();
    assert_eq!(l.state, LeaseState::Revoked);
}
