//! The reconciler: proves that nothing lessor created at a vendor outlives
//! its lease. Each pass asks every connection's plugin for the objects it
//! made there ([`Plugin::list_objects`], by the name shape it derives from
//! lease ids) and compares them with the store:
//!
//! - an object whose lease is live (pending, active, revoke_failed) is fine;
//!   a pending one is an issue in flight (or the expiry worker's orphan) and
//!   is never touched here;
//! - an object whose lease ended, or whose lease row does not exist, is a
//!   **stray**: revoked through the plugin (by its lease id, like a pending
//!   lease) once it has been a stray for `grace` (its lease ended `grace`
//!   ago; with no row, a pass first saw it `grace` ago: that time is kept in
//!   the store ([`crate::store::ClusterStore::stray_first_seen`]), so a
//!   restart or another replica does not start the grace over), audited
//!   (`reconcile.revoke`, connection and object name) and counted
//!   (`lessor_reconcile_strays_total{connection,outcome}`);
//! - an active lease whose object is not there is **missing**: reported
//!   (ids in the report, `lessor_reconcile_missing{connection}`), never
//!   revoked: the credential is already gone, and its lease ends on time.
//!
//! Passes run every `reconcile.interval` and on `POST /v1/admin/reconcile`
//! (`lessor reconcile`), one at a time in a process and, on a shared
//! PostgreSQL store, across replicas ([`crate::store::ClusterStore::try_lock`]). Work per pass
//! is bounded: [`MAX_OBJECTS`] listed, [`MAX_LEASES`] loaded per role,
//! [`MAX_LOOKUPS`] single reads and `max_revocations` revocations per
//! connection; what is left waits for the next pass (`truncated`).
//!
//! Must not import: http, sqlx.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lessor_plugin::{LeaseId, LeaseRef, Plugin, PluginError, VendorObject};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::audit::{ActorInfo, Audit, Event};
use crate::config::ReconcileSettings;
use crate::plugins::Catalog;
use crate::store::{connection_of, Lease, LeaseFilter, LeaseState, Store, StoreError};
use crate::telemetry::metrics;

/// Objects listed per plugin call.
pub const PAGE: u32 = 1_000;
/// Most objects listed per connection per pass.
pub const MAX_OBJECTS: usize = 100_000;
/// [`MAX_OBJECTS`] as the store's limit type.
const MAX_OBJECTS_U32: u32 = MAX_OBJECTS as u32;
/// Most active leases loaded per role per pass (for the missing check).
pub const MAX_LEASES: u32 = 10_000;
/// Most single lease reads per connection per pass (objects whose lease is
/// not among the active ones loaded, and missing leases re-checked).
pub const MAX_LOOKUPS: usize = 2_000;
/// Missing lease ids listed per connection in a report (all are counted).
pub const MAX_MISSING_LISTED: usize = 100;
/// The store lock that keeps passes one at a time across replicas.
const LOCK: &str = "reconcile";
/// `outcome` label values of `lessor_reconcile_strays_total`.
pub const STRAY_OUTCOMES: [&str; 2] = ["revoked", "failed"];

/// Why an object is a stray.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrayKind {
    /// No lease row has its id (deleted by hand, lost, or never lessor's).
    NoLease,
    /// Its lease ended (revoked, expired) and it is still there.
    LeaseEnded,
    /// The name has lessor's shape but no lease id can be read from it.
    Unmapped,
}

impl StrayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrayKind::NoLease => "no_lease",
            StrayKind::LeaseEnded => "lease_ended",
            StrayKind::Unmapped => "unmapped",
        }
    }
}

/// What happened to a stray in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrayOutcome {
    Revoked,
    /// Revocation failed; tried again next pass.
    Failed(String),
    /// Still within the grace period; revoked from this instant on.
    Waiting(OffsetDateTime),
    /// Over this pass's revocation budget; next pass.
    Deferred,
    /// Cannot be revoked by lease id (no id in its name): reported only.
    Reported,
}

impl StrayOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            StrayOutcome::Revoked => "revoked",
            StrayOutcome::Failed(_) => "failed",
            StrayOutcome::Waiting(_) => "waiting",
            StrayOutcome::Deferred => "deferred",
            StrayOutcome::Reported => "reported",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stray {
    pub name: String,
    pub lease_id: Option<LeaseId>,
    pub kind: StrayKind,
    pub outcome: StrayOutcome,
}

/// One connection's part of a pass.
#[derive(Debug, Clone, Default)]
pub struct ConnectionReport {
    pub connection: String,
    pub plugin: String,
    /// `checked`, `unsupported` (the plugin keeps no objects at a vendor)
    /// or `error` (see `error`).
    pub status: &'static str,
    pub error: Option<String>,
    /// Objects listed.
    pub objects: usize,
    pub strays: Vec<Stray>,
    /// Active leases whose object is missing (all of them counted)...
    pub missing_count: usize,
    /// ...and the first [`MAX_MISSING_LISTED`] of their ids.
    pub missing: Vec<LeaseId>,
    /// A bound was hit: not everything was compared; the next pass goes on.
    pub truncated: bool,
}

/// The result of one pass.
#[derive(Debug, Clone)]
pub struct Report {
    pub started_at: OffsetDateTime,
    pub finished_at: OffsetDateTime,
    pub grace: Duration,
    pub connections: Vec<ConnectionReport>,
}

impl Report {
    /// Nothing stray left and nothing missing on any checked connection.
    pub fn clean(&self) -> bool {
        self.connections.iter().all(|c| c.status != "error" && c.missing_count == 0 && c.strays.iter().all(|s| s.outcome == StrayOutcome::Revoked))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("another replica is running a reconcile pass; try again when it is done")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who started a pass (the audit entries' actor).
#[derive(Debug, Clone)]
pub enum Trigger {
    Schedule,
    Admin(ActorInfo),
}

pub struct Reconciler {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    audit: Audit,
    settings: ReconcileSettings,
    /// Longest one vendor call (list page, revocation) may take.
    call_timeout: Duration,
    /// One pass at a time in this process.
    running: tokio::sync::Mutex<()>,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        audit: Audit,
        settings: ReconcileSettings,
        call_timeout: Duration,
    ) -> Reconciler {
        // Label sets at zero from the start, so the first stray shows in
        // `increase()`. Connections whose plugin keeps no vendor objects
        // keep their zeros: nothing there can be stray.
        let m = metrics();
        for name in catalog.connections.keys() {
            for o in STRAY_OUTCOMES {
                m.reconcile_strays.with_label_values(&[name.as_str(), o]);
            }
            m.reconcile_missing.with_label_values(&[name.as_str()]);
        }
        Reconciler {
            store,
            catalog,
            audit,
            settings,
            call_timeout,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs a pass every `interval` until `shutdown` turns true (a pass in
    /// hand is dropped: revocation is idempotent, the lock is released).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = self.settings.interval;
        if every.is_zero() {
            tracing::debug!("scheduled reconcile passes are off");
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
            tokio::select! {
                r = self.pass(Trigger::Schedule) => match r {
                    Ok(rep) => log_report(&rep),
                    Err(ReconcileError::Busy) => tracing::debug!("another replica is reconciling; skipping this pass"),
                    Err(e) => tracing::warn!(error = %e, "reconcile pass failed; will retry next interval"),
                },
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
        }
        tracing::debug!("reconciler stopped");
    }

    /// One pass over every connection. `Busy` when another replica holds
    /// the pass; a pass already running in this process is waited for.
    pub async fn pass(&self, trigger: Trigger) -> Result<Report, ReconcileError> {
        let _one = self.running.lock().await;
        let lock = self.store.try_lock(LOCK).await?.ok_or(ReconcileError::Busy)?;
        let started_at = OffsetDateTime::now_utc();
        let mut connections = Vec::new();
        for (name, plugin) in &self.catalog.connections {
            connections.push(self.connection(name, plugin.as_ref(), &trigger).await);
        }
        lock.release().await;
        Ok(Report { started_at, finished_at: OffsetDateTime::now_utc(), grace: self.settings.grace, connections })
    }

    async fn list_all(&self, plugin: &dyn Plugin) -> Result<(Vec<VendorObject>, bool), PluginError> {
        let mut out: Vec<VendorObject> = Vec::new();
        loop {
            let after = out.last().map(|o| o.name.clone());
            let page = match lessor_plugin::call::bounded("list_objects", self.call_timeout, plugin.list_objects(after.as_deref(), PAGE)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(PluginError::Retryable(format!(
                        "listing did not finish within {}",
                        crate::fmt_duration(self.call_timeout)
                    )))
                }
            };
            let n = page.len();
            // A plugin that ignores `after` must not loop forever.
            let advanced = page.first().is_none_or(|f| after.as_deref().is_none_or(|a| f.name.as_str() > a));
            out.extend(page);
            if n < PAGE as usize || !advanced {
                return Ok((out, false));
            }
            if out.len() >= MAX_OBJECTS {
                return Ok((out, true));
            }
        }
    }

    async fn connection(&self, name: &str, plugin: &dyn Plugin, trigger: &Trigger) -> ConnectionReport {
        let mut rep = ConnectionReport {
            connection: name.to_owned(),
            plugin: plugin.kind().to_owned(),
            status: "checked",
            ..Default::default()
        };
        let t0 = OffsetDateTime::now_utc();
        let (objects, truncated) = match self.list_all(plugin).await {
            Ok(x) => x,
            Err(PluginError::Unsupported(_)) => {
                rep.status = "unsupported";
                return rep;
            }
            Err(e) => {
                tracing::warn!(connection = %name, error = %e, "reconcile: listing vendor objects failed");
                rep.status = "error";
                rep.error = Some(e.to_string());
                return rep;
            }
        };
        let m = metrics();
        rep.objects = objects.len();
        rep.truncated = truncated;
        match self.compare(name, plugin, objects, t0, trigger, &mut rep).await {
            Ok(()) => {
                m.reconcile_missing.with_label_values(&[name]).set(i64::try_from(rep.missing_count).unwrap_or(i64::MAX));
            }
            Err(e) => {
                tracing::warn!(connection = %name, error = %e, "reconcile: reading leases failed");
                rep.status = "error";
                rep.error = Some(e.to_string());
            }
        }
        rep
    }

    async fn compare(
        &self,
        name: &str,
        plugin: &dyn Plugin,
        objects: Vec<VendorObject>,
        t0: OffsetDateTime,
        trigger: &Trigger,
        rep: &mut ConnectionReport,
    ) -> Result<(), StoreError> {
        let grace = time::Duration::try_from(self.settings.grace).unwrap_or(time::Duration::MAX);
        // Whether every object at the vendor was listed: only then is one
        // not listed known to be gone.
        let listing_complete = !rep.truncated;
        // Strays without a lease row whose first-seen time is kept; those
        // that are no such stray any more are forgotten after the loop.
        let recorded: HashSet<String> = self.store.stray_objects(name, MAX_OBJECTS_U32).await?.into_iter().collect();
        let mut still: HashSet<String> = HashSet::new();
        // The connection's active leases, after the listing: a lease that
        // ended meanwhile is not among them, and its object is then judged
        // by its end time (within grace: left alone).
        let mut active: HashMap<LeaseId, Lease> = HashMap::new();
        for role in self.catalog.roles.values().filter(|r| r.connection == name) {
            let f = LeaseFilter { role: Some(role.name.clone()), state: Some(LeaseState::Active), limit: MAX_LEASES, ..Default::default() };
            let got = self.store.list(&f).await?;
            rep.truncated |= got.len() >= MAX_LEASES as usize;
            active.extend(got.into_iter().map(|l| (l.id.clone(), l)));
        }
        let mut lookups = 0usize;
        let mut seen: HashSet<LeaseId> = HashSet::new();
        let mut present: HashSet<String> = HashSet::new();
        let mut budget = self.settings.max_revocations;
        let now = OffsetDateTime::now_utc();
        for o in objects {
            present.insert(o.name.clone());
            let Some(id) = o.lease_id.clone() else {
                rep.strays.push(Stray { name: o.name, lease_id: None, kind: StrayKind::Unmapped, outcome: StrayOutcome::Reported });
                continue;
            };
            seen.insert(id.clone());
            if active.contains_key(&id) {
                continue;
            }
            if lookups >= MAX_LOOKUPS {
                rep.truncated = true;
                still.insert(o.name.clone());
                continue;
            }
            lookups += 1;
            let lease = self.store.get(&id).await?;
            let (kind, since) = match &lease {
                // Another connection's lease (same vendor, overlapping
                // prefix): that connection's pass judges it.
                Some(l) if connection_of(&l.role) != name => continue,
                // Live: an issue in flight (pending), in use, or being
                // revoked by the worker. Never touched here.
                Some(l) if l.state.is_live() => continue,
                Some(l) => (StrayKind::LeaseEnded, l.ended_at.unwrap_or(l.issued_at)),
                None => {
                    let at = self.store.stray_first_seen(name, &o.name, crate::store::to_ms(now)).await?;
                    // A time that does not read back: count from now
                    // rather than revoke early.
                    (StrayKind::NoLease, crate::store::from_ms(at).unwrap_or(now).min(now))
                }
            };
            let due = since.checked_add(grace).unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
            let outcome = if now < due {
                StrayOutcome::Waiting(due)
            } else if budget == 0 {
                rep.truncated = true;
                StrayOutcome::Deferred
            } else {
                budget -= 1;
                self.revoke(name, plugin, &o, &id, kind, lease.as_ref(), trigger).await?
            };
            if kind == StrayKind::NoLease && outcome != StrayOutcome::Revoked {
                still.insert(o.name.clone());
            }
            rep.strays.push(Stray { name: o.name, lease_id: Some(id), kind, outcome });
        }
        // Revoked, gone since, or with a lease row now: no first-seen time
        // to keep. One not listed by a truncated listing may still be there.
        let forget: Vec<String> = recorded
            .into_iter()
            .filter(|n| !still.contains(n) && (present.contains(n) || listing_complete))
            .collect();
        self.store.stray_forget(name, &forget).await?;

        // Missing: active leases issued `grace` before the listing (so their
        // object was made before it), not scheduled for revocation, and
        // still active and unexpired when read again now.
        if truncated_listing(rep) {
            return Ok(());
        }
        let mut candidates: Vec<&Lease> = active
            .values()
            .filter(|l| !seen.contains(&l.id))
            .filter(|l| l.issued_at.checked_add(grace).is_some_and(|t| t <= t0))
            .filter(|l| l.expires_at > now && l.end_reason.is_none() && l.next_attempt_at.is_none())
            .collect();
        candidates.sort_by(|a, b| a.issued_at.cmp(&b.issued_at).then_with(|| a.id.cmp(&b.id)));
        for l in candidates {
            if lookups >= MAX_LOOKUPS {
                rep.truncated = true;
                break;
            }
            lookups += 1;
            let again = self.store.get(&l.id).await?;
            let still = again.is_some_and(|a| {
                a.state == LeaseState::Active && a.expires_at > OffsetDateTime::now_utc() && a.end_reason.is_none()
            });
            if still {
                rep.missing_count += 1;
                if rep.missing.len() < MAX_MISSING_LISTED {
                    rep.missing.push(l.id.clone());
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn revoke(
        &self,
        connection: &str,
        plugin: &dyn Plugin,
        o: &VendorObject,
        id: &LeaseId,
        kind: StrayKind,
        lease: Option<&Lease>,
        trigger: &Trigger,
    ) -> Result<StrayOutcome, StoreError> {
        // Read once more just before: a row that appeared (or came back to
        // life) since is not a stray.
        let now_row = self.store.get(id).await?;
        if now_row.as_ref().is_some_and(|l| l.state.is_live()) || (lease.is_none() && now_row.is_some()) {
            return Ok(StrayOutcome::Waiting(OffsetDateTime::now_utc()));
        }
        let lref = match lease {
            Some(l) => LeaseRef {
                lease_id: id.clone(),
                role: short_role(&l.role).to_owned(),
                handle: l.handle.clone(),
                expires_at: l.expires_at,
                root_version: l.root_version,
            },
            // No row: what a pending lease from a crash gives the plugin,
            // its id alone.
            None => LeaseRef {
                lease_id: id.clone(),
                role: String::new(),
                handle: None,
                expires_at: OffsetDateTime::now_utc(),
                root_version: None,
            },
        };
        let result = match lessor_plugin::call::bounded("revoke", self.call_timeout, plugin.revoke(&lref)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("revocation did not finish within {}", crate::fmt_duration(self.call_timeout))),
        };
        let (outcome, label) = match result {
            Ok(()) => (StrayOutcome::Revoked, "revoked"),
            Err(e) => (StrayOutcome::Failed(e), "failed"),
        };
        metrics().reconcile_strays.with_label_values(&[connection, label]).inc();
        let actor = match trigger {
            Trigger::Schedule => ActorInfo::system("reconciler"),
            Trigger::Admin(a) => a.clone(),
        };
        let mut ev = Event::new("reconcile.revoke", if label == "revoked" { "ok" } else { "failed" })
            .actor(actor)
            .detail("connection", connection)
            .detail("object", o.name.clone())
            .detail("stray", kind.as_str());
        ev.lease_id = Some(id.to_string());
        if let Some(l) = lease {
            ev.role = Some(l.role.clone());
        }
        if let StrayOutcome::Failed(e) = &outcome {
            ev = ev.error("vendor", e.clone());
            tracing::warn!(connection, object = %o.name, lease_id = %id, error = %e, "reconcile: revoking a stray failed; next pass retries");
        } else {
            tracing::warn!(connection, object = %o.name, lease_id = %id, stray = kind.as_str(), "reconcile: stray vendor object revoked");
        }
        // Revocation only removes access: never held back by the audit log.
        self.audit.note(ev);
        Ok(outcome)
    }
}

fn truncated_listing(rep: &ConnectionReport) -> bool {
    // A partial listing cannot prove an object missing.
    rep.objects >= MAX_OBJECTS
}

fn short_role(role: &str) -> &str {
    role.split_once('/').map_or(role, |(_, r)| r)
}

fn log_report(r: &Report) {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &r.connections {
        for s in &c.strays {
            *by.entry(s.outcome.as_str()).or_default() += 1;
        }
    }
    let missing: usize = r.connections.iter().map(|c| c.missing_count).sum();
    if by.is_empty() && missing == 0 {
        tracing::debug!(connections = r.connections.len(), "reconcile pass: clean");
    } else {
        tracing::warn!(strays = ?by, missing, "reconcile pass found strays or missing objects");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_split_at_the_first_slash() {
        assert_eq!(connection_of("pg/app"), "pg");
        assert_eq!(short_role("pg/app"), "app");
        assert_eq!(connection_of("odd"), "odd");
    }
}
