//! The issue path and the disk (SQLite): a credential leaves only once its
//! pending lease row is on disk, although both lease writes are answered
//! at their commits ([`crate::store::OnDisk`]); the issue's stage times
//! ([`super::IssueStages`]) say where the wait was.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lessor_plugin::{Capabilities, IssueRequest, Issued, LeaseRef, Plugin, PluginError, RenewRequest, Revocation, Validation};
use time::OffsetDateTime;

use super::{IssueInput, LeaseService};
use crate::config::LeaseSettings;
use crate::identity::VerifiedWorkload;
use crate::plugins::{Catalog, Role};
use crate::policy::{PolicyEngine, RoleInfo};
use crate::principal::RequestMeta;
use crate::store::sqlite::{SqliteStore, SyncFn};
use crate::store::{LeaseFilter, LeaseState, Store};

/// A vendor that creates at once.
struct AtOnce;

#[async_trait]
impl Plugin for AtOnce {
    fn kind(&self) -> &str {
        "instant"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: false, revocation: Revocation::Immediate }
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        Ok(Validation { identity: "instant".into(), details: BTreeMap::new(), warnings: vec![] })
    }
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        Ok(Issued {
            handle: serde_json::json!({ "name": req.lease_id.as_str() }),
            public: serde_json::Map::new(),
            secret: BTreeMap::new(),
            expires_at: req.expires_at,
            root_version: None,
        })
    }
    async fn renew(&self, _: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
    }
    async fn revoke(&self, _: &LeaseRef) -> Result<(), PluginError> {
        Ok(())
    }
}

/// The store's disk, held on demand: while `hold` is set, a sync waits for
/// a token on `go`; `held` is set once one waited; `started` holds when
/// each sync began.
struct HeldDisk {
    hold: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    started: Arc<Mutex<Vec<Instant>>>,
    go: std::sync::mpsc::Sender<()>,
}

fn held_disk() -> (HeldDisk, SyncFn) {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let disk = HeldDisk { hold: Arc::default(), held: Arc::default(), started: Arc::default(), go };
    let (hold, held, started) = (disk.hold.clone(), disk.held.clone(), disk.started.clone());
    let sync: SyncFn = Arc::new(move |f: &File| {
        started.lock().unwrap().push(Instant::now());
        if hold.load(Ordering::SeqCst) {
            held.store(true, Ordering::SeqCst);
            let _ = wait.lock().unwrap().recv();
        }
        f.sync_data()
    });
    (disk, sync)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_leaves_before_its_pending_row_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    // The disk, held on demand: while `hold` is set, a sync waits for `go`.
    let (HeldDisk { hold, held, go, .. }, sync) = held_disk();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with(dir.path().join("l.db").to_str().unwrap(), sync).await.unwrap());
    let (svc, w) = service(store.clone(), Arc::new(AtOnce));
    let input = || IssueInput { role: "token/orders".into(), ttl: Some("5m".into()), scopes: None, params: serde_json::Map::new() };

    // With the disk free, an issue goes through.
    svc.issue(&w, input(), &RequestMeta::internal()).await.expect("issued");

    hold.store(true, Ordering::SeqCst);
    let (s2, w2) = (svc.clone(), w.clone());
    let spawned = Instant::now();
    let mut issue = tokio::spawn(async move { s2.issue(&w2, input(), &RequestMeta::internal()).await });
    // The vendor has created it and the activation is committed: all that
    // is left is the pending row's sync, which the disk holds.
    let active = async {
        loop {
            let live = store.list(&LeaseFilter { limit: 100, ..Default::default() }).await.unwrap();
            if held.load(Ordering::SeqCst) && live.iter().filter(|l| l.state == LeaseState::Active).count() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), active).await.expect("created and activated with the disk held");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut issue).await.is_err(),
        "the credential must not leave while its pending row is not on disk"
    );
    hold.store(false, Ordering::SeqCst);
    let released = Instant::now();
    go.send(()).unwrap();
    let issued = tokio::time::timeout(Duration::from_secs(10), issue).await.expect("returned once on disk").unwrap().expect("issued");
    let returned = spawned.elapsed();
    assert_eq!(issued.lease.state, LeaseState::Active);
    // The wait on the disk is the `durable` stage: it ended after the
    // release, and the stages before it ran one after the other.
    assert_stages_fit(&issued.stages, released - spawned, returned);
    store.close().await;
}

/// What the stages of an issue leave out: the steps between them (role
/// lookup, the hand-off to the issue's task, wake-ups). Microseconds; this
/// much so that a loaded machine cannot fail [`assert_stages_fit`].
const GLUE: Duration = Duration::from_millis(100);

/// `stages` of an issue spawned at 0 that returned at `returned` and whose
/// pending row's sync was released at `released`: they follow one another,
/// so together they fit in `returned`; the issue waited on the disk until
/// the release, so all but `durable` and the glue between them end before
/// it, and `durable` covers the rest.
fn assert_stages_fit(stages: &super::IssueStages, released: Duration, returned: Duration) {
    let s = stages;
    assert!(s.total() <= returned, "the stages ({s:?}) take longer than the issue ({returned:?})");
    let before = s.checks + s.record + s.vendor + s.activate;
    assert!(
        s.durable + before + GLUE >= released,
        "the durable stage ({s:?}) must last until the disk is released ({released:?} after the spawn)"
    );
    for (stage, d) in s.each() {
        assert!(d > Duration::ZERO, "stage `{stage}` not measured: {s:?}");
    }
}

/// A lease service over `store` with one role, `token/orders`, made by
/// `plugin`, and a workload the shipped policy allows it to.
fn service(store: Arc<dyn Store>, plugin: Arc<dyn Plugin>) -> (LeaseService, VerifiedWorkload) {
    let info = RoleInfo {
        name: "token/orders".into(),
        connection: "token".into(),
        plugin: "instant".into(),
        environment: "staging".into(),
        scopes: vec![],
        max_ttl_seconds: 3600,
    };
    let role = Role {
        name: "token/orders".into(),
        connection: "token".into(),
        short: "orders".into(),
        kind: "instant".into(),
        plugin: plugin.clone(),
        cfg: toml::from_str("max_ttl = \"1h\"").unwrap(),
        info: info.clone(),
    };
    let catalog = Catalog {
        roles: BTreeMap::from([("token/orders".to_string(), Arc::new(role))]),
        connections: BTreeMap::from([("token".to_string(), plugin)]),
        scopes: BTreeMap::new(),
    };
    // The shipped policy `gh-acme-orders-tokens` allows this workload.
    let engine = PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), vec![info]).unwrap();
    let svc = LeaseService::new(store, Arc::new(catalog), Arc::new(engine), LeaseSettings::default());
    let w = VerifiedWorkload {
        issuer_name: "dev".into(),
        issuer: "https://dev-issuer.lessor.localhost".into(),
        subject: "repo:acme/api:ref:refs/heads/main".into(),
        attributes: BTreeMap::from([("repository_owner".to_string(), "acme".to_string())]),
        expires_at: OffsetDateTime::now_utc() + time::Duration::minutes(5),
    };
    (svc, w)
}

/// A vendor that takes `SLOW` to create.
struct Slow;

const SLOW: Duration = Duration::from_millis(200);

#[async_trait]
impl Plugin for Slow {
    fn kind(&self) -> &str {
        "instant"
    }
    fn capabilities(&self) -> Capabilities {
        AtOnce.capabilities()
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        AtOnce.validate().await
    }
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        tokio::time::sleep(SLOW).await;
        AtOnce.issue(req).await
    }
    async fn renew(&self, r: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        AtOnce.renew(r).await
    }
    async fn revoke(&self, l: &LeaseRef) -> Result<(), PluginError> {
        AtOnce.revoke(l).await
    }
}

/// For a vendor that takes a while, the pending row's sync is put off
/// (nine tenths of the vendor's usual time, learnt from its calls, here capped at
/// `LAZY_SYNC`, 20 ms) so that other writes can share it; the credential
/// still leaves only once the row is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_vendors_pending_row_puts_its_sync_off_and_is_on_disk_before_the_credential_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (HeldDisk { hold, started, go, .. }, sync) = held_disk();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with(dir.path().join("l.db").to_str().unwrap(), sync).await.unwrap());
    let (svc, w) = service(store.clone(), Arc::new(Slow));
    let input = || IssueInput { role: "token/orders".into(), ttl: Some("5m".into()), scopes: None, params: serde_json::Map::new() };
    // The first issue teaches lessor how long the vendor takes; its
    // activation's sync (nobody waits for it) is done 20 ms later.
    svc.issue(&w, input(), &RequestMeta::internal()).await.expect("issued");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let issued = svc.issue(&w, input(), &RequestMeta::internal()).await.expect("issued");
    // The vendor's time is the `vendor` stage.
    assert!(issued.stages.vendor >= SLOW, "{:?}", issued.stages);
    assert!(issued.stages.total() <= t0.elapsed(), "{:?}", issued.stages);
    let first = started.lock().unwrap().iter().copied().find(|t| *t >= t0).expect("a sync for the second issue");
    // No other write asks for a sync: the pending row's starts at its
    // deadline, 20 ms after its commit, never sooner.
    assert!(first - t0 >= Duration::from_millis(20), "the pending row's sync started {:?} after the issue began", first - t0);

    // Put off or not, no credential leaves before its row is on disk.
    tokio::time::sleep(Duration::from_millis(100)).await;
    hold.store(true, Ordering::SeqCst);
    let (svc2, w2) = (svc.clone(), w.clone());
    let spawned = Instant::now();
    let mut issue = tokio::spawn(async move { svc2.issue(&w2, input(), &RequestMeta::internal()).await });
    assert!(tokio::time::timeout(SLOW * 3, &mut issue).await.is_err(), "the credential must not leave while the disk is held");
    hold.store(false, Ordering::SeqCst);
    let released = Instant::now();
    go.send(()).unwrap();
    let issued = tokio::time::timeout(Duration::from_secs(10), issue).await.expect("returned once on disk").unwrap().expect("issued");
    assert_eq!(issued.lease.state, LeaseState::Active);
    assert!(issued.stages.vendor >= SLOW, "{:?}", issued.stages);
    assert_stages_fit(&issued.stages, released - spawned, spawned.elapsed());
    store.close().await;
}
