//! Failed revocations are retried with backoff, visible meanwhile, and end
//! revoked once the vendor recovers; a plugin that cannot revoke ends leases
//! `expired`, not failed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lessor::config::{LeaseSettings, RoleConfig};
use lessor::lease::{expiry, LeaseService};
use lessor::plugins::{Catalog, Role};
use lessor::policy::{PolicyEngine, RoleInfo};
use lessor::store::{Lease, LeaseState, Store};
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseRef, Plugin, PluginError, RenewRequest, Revocation, Validation,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::Daemon;

/// A vendor that fails the first `fail` revocations, then recovers.
struct Flaky {
    fail: usize,
    calls: AtomicUsize,
    can_revoke: bool,
}

#[async_trait]
impl Plugin for Flaky {
    fn kind(&self) -> &str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: false, revocation: if self.can_revoke { Revocation::Immediate } else { Revocation::AtExpiry } }
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        Ok(Validation { identity: "flaky".into(), details: BTreeMap::new(), warnings: vec![] })
    }
    async fn issue(&self, _: IssueRequest) -> Result<Issued, PluginError> {
        Err(PluginError::Unsupported("issue".into()))
    }
    async fn renew(&self, _: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
    }
    async fn revoke(&self, _: &LeaseRef) -> Result<(), PluginError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail {
            Err(PluginError::Retryable("connection refused".into()))
        } else {
            Ok(())
        }
    }
}

async fn service<P: Plugin + 'static>(plugin: Arc<P>) -> (LeaseService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = lessor::store::open(&format!("sqlite://{}", dir.path().join("l.db").display())).await.unwrap();
    let info = RoleInfo {
        name: "flaky/r".into(),
        connection: "flaky".into(),
        plugin: "flaky".into(),
        environment: "staging".into(),
        scopes: vec![],
        max_ttl_seconds: 3600,
    };
    let cfg: RoleConfig = toml::from_str("max_ttl = \"1h\"").unwrap();
    let role = Role {
        name: "flaky/r".into(),
        connection: "flaky".into(),
        short: "r".into(),
        kind: "flaky".into(),
        plugin: plugin.clone(),
        cfg,
        info: info.clone(),
    };
    let catalog = Catalog {
        roles: BTreeMap::from([("flaky/r".to_string(), Arc::new(role))]),
        connections: BTreeMap::from([("flaky".to_string(), plugin as Arc<dyn Plugin>)]),
        scopes: BTreeMap::new(),
    };
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let engine = PolicyEngine::load(&policies, vec![info]).unwrap();
    let settings = LeaseSettings {
        tick: Duration::from_millis(50),
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(1),
        ..LeaseSettings::default()
    };
    (LeaseService::new(store, Arc::new(catalog), Arc::new(engine), settings), dir)
}

async fn expired_lease(store: &Arc<dyn Store>, id: &str) {
    let now = OffsetDateTime::now_utc();
    let l = Lease {
        id: lessor_plugin::LeaseId::new(id),
        role: "flaky/r".into(),
        plugin: "flaky".into(),
        issuer: "i".into(),
        subject: "s".into(),
        claims: json!({}),
        scopes: vec![],
        policies: vec![],
        state: LeaseState::Pending,
        issued_at: now,
        expires_at: now - time::Duration::seconds(1),
        max_expires_at: now + time::Duration::hours(1),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    };
    store.insert_pending(&l).await.unwrap();
    store.activate(&l.id, &json!({}), l.expires_at).await.unwrap();
}

#[tokio::test]
async fn a_failing_vendor_is_retried_visibly_until_it_recovers() {
    let plugin = Arc::new(Flaky { fail: 3, calls: AtomicUsize::new(0), can_revoke: true });
    let (svc, _dir) = service(plugin.clone()).await;
    expired_lease(&svc.store, "l1").await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(expiry::run(svc.clone(), rx));
    let id = lessor_plugin::LeaseId::new("l1");

    let failed = Daemon::eventually(Duration::from_secs(5), || async {
        let l = svc.store.get(&id).await.unwrap().unwrap();
        (l.state == LeaseState::RevokeFailed).then_some(l)
    })
    .await
    .expect("the failure is visible");
    assert!(failed.attempts >= 1);
    assert_eq!(failed.last_error.as_deref(), Some("connection refused"));
    assert!(failed.next_attempt_at.is_some());

    let done = Daemon::eventually(Duration::from_secs(10), || async {
        let l = svc.store.get(&id).await.unwrap().unwrap();
        (l.state == LeaseState::Expired).then_some(l)
    })
    .await
    .expect("revoked once the vendor recovered");
    assert_eq!(done.attempts, 3, "three failures recorded");
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 4, "one call per attempt, no hot loop");
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), worker).await.expect("worker stops on shutdown").unwrap();
}

#[tokio::test]
async fn a_plugin_that_cannot_revoke_ends_leases_expired() {
    let plugin = Arc::new(Flaky { fail: 100, calls: AtomicUsize::new(0), can_revoke: false });
    let (svc, _dir) = service(plugin.clone()).await;
    expired_lease(&svc.store, "l2").await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(expiry::run(svc.clone(), rx));
    let id = lessor_plugin::LeaseId::new("l2");
    let l = Daemon::eventually(Duration::from_secs(5), || async {
        let l = svc.store.get(&id).await.unwrap().unwrap();
        (l.state != LeaseState::Active).then_some(l)
    })
    .await
    .unwrap();
    assert_eq!(l.state, LeaseState::Expired);
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 0);
    tx.send(true).unwrap();
    worker.await.unwrap();
}

/// A vendor whose first revocation call never returns.
struct Hangs {
    calls: AtomicUsize,
}

#[async_trait]
impl Plugin for Hangs {
    fn kind(&self) -> &str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: false, revocation: Revocation::Immediate }
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        Ok(Validation { identity: "hangs".into(), details: BTreeMap::new(), warnings: vec![] })
    }
    async fn issue(&self, _: IssueRequest) -> Result<Issued, PluginError> {
        Err(PluginError::Unsupported("issue".into()))
    }
    async fn renew(&self, _: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
    }
    async fn revoke(&self, _: &LeaseRef) -> Result<(), PluginError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// A vendor call that hangs does not hold the worker: past
/// `revoke_timeout` the attempt fails visibly and is retried.
#[tokio::test]
async fn a_hanging_revocation_times_out_and_is_retried() {
    let plugin = Arc::new(Hangs { calls: AtomicUsize::new(0) });
    let (mut svc, _dir) = service(plugin.clone()).await;
    svc.settings.revoke_timeout = Duration::from_millis(300);
    expired_lease(&svc.store, "l3").await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(expiry::run(svc.clone(), rx));
    let id = lessor_plugin::LeaseId::new("l3");
    let failed = Daemon::eventually(Duration::from_secs(5), || async {
        let l = svc.store.get(&id).await.unwrap().unwrap();
        (l.state == LeaseState::RevokeFailed).then_some(l)
    })
    .await
    .expect("the timed-out attempt is visible");
    assert_eq!(failed.last_error.as_deref(), Some("revocation did not finish within 300ms"));
    let done = Daemon::eventually(Duration::from_secs(10), || async {
        let l = svc.store.get(&id).await.unwrap().unwrap();
        (l.state == LeaseState::Expired).then_some(l)
    })
    .await;
    assert!(done.is_some(), "the retry succeeds");
    assert_eq!(plugin.calls.load(Ordering::SeqCst), 2);
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), worker).await.expect("worker stops on shutdown").unwrap();
}
