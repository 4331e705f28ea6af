//! Lease lifecycle: issue, renew, revoke, and the expiry worker.
//!
//! Issue order (the invariant that keeps credentials from being orphaned):
//! policy decides -> the lease row is written `pending` -> the plugin creates
//! the credential, deriving vendor names from the lease id -> the row turns
//! `active`. The plugin call and the activation run in their own task, so a
//! client that disconnects mid-request cannot cancel them half-way; a crash
//! between the steps leaves a `pending` row that the expiry worker revokes.
//!
//! Audit: every decision, issue, renew, revoke and expiry writes an entry
//! ([`crate::audit`]). Issue and renew write theirs *before* anything is
//! created or extended and stop (`LeaseError::Audit`, 503) if it cannot be
//! written; an issue whose outcome entry cannot be written is revoked again.
//! Revocation is never held back by the audit log (it only removes access).
//!
//! One file (over 800 lines) because issue, renew and revoke use the same
//! audit, ownership and metric helpers; the single revocation attempt they
//! and the worker share is in `revoke.rs`, the loops (expiry, heartbeat,
//! retention) in their own files beside it.
//!
//! Must not import: http (wire types), sqlx, server, cli.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor_plugin::{LeaseId, LeaseRef, PluginError, RenewRequest};
use rand::Rng;
use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::audit::{workload_info, ActorInfo, Audit, AuditError, Event};
use crate::config::{LeaseSettings, Quotas};
use crate::fmt_duration;
use crate::identity::VerifiedWorkload;
use crate::plugins::{Catalog, Role};
use crate::policy::{Action, Decision, PolicyEngine, PolicyError, Principal, RequestContext};
use crate::principal::{Actor, RequestMeta};
use crate::store::{EndReason, JobStatus, Lease, LeaseFilter, LeaseState, RevokeFilter, Store, StoreError};
use crate::telemetry::metrics;

pub mod breaker;
pub mod expiry;
pub mod heartbeat;
pub mod reconcile;
pub mod retention;
mod gauges;
mod revoke;
mod issue_times;
mod stages;
pub use stages::IssueStages;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The name is the caller's own text; the configured roles are not
    /// listed (a workload sees those it may request at `GET /v1/roles`).
    #[error("role `{role}` does not exist; GET /v1/roles lists the roles you may request")]
    UnknownRole { role: String },
    #[error("{message}")]
    BadRequest { field: &'static str, message: String },
    #[error("{}", .0.message)]
    Denied(Box<Decision>),
    #[error("lease `{0}` not found")]
    NotFound(String),
    #[error("job `{0}` not found")]
    JobNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Plugin { message: String, error: PluginError },
    /// A quota or rate limit: `quota` names which (owner, role, total, rate).
    #[error("{message}")]
    Quota { quota: &'static str, message: String, retry_after: Option<u64> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit entry that must precede the action could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl LeaseError {
    /// A bounded kind for the audit log, and lessor's own message where it
    /// holds no client-supplied text.
    pub fn audit_kind(&self) -> (String, Option<String>) {
        match self {
            LeaseError::UnknownRole { .. } => ("unknown_role".into(), None),
            LeaseError::BadRequest { field, .. } => (format!("invalid_{field}"), None),
            LeaseError::Denied(_) => ("policy_denied".into(), None),
            LeaseError::NotFound(_) | LeaseError::JobNotFound(_) => ("not_found".into(), None),
            LeaseError::Conflict(m) => ("conflict".into(), Some(m.clone())),
            LeaseError::Plugin { message, error } => match error {
                PluginError::InvalidRequest(_) => ("invalid_params".into(), None),
                PluginError::Permanent(_) => ("vendor_refused".into(), Some(message.clone())),
                PluginError::Retryable(_) | PluginError::State(_) => ("vendor_unavailable".into(), Some(message.clone())),
                PluginError::Unsupported(_) => ("unsupported".into(), Some(message.clone())),
                PluginError::Misconfigured(_) => ("misconfigured".into(), Some(message.clone())),
            },
            LeaseError::Quota { quota, .. } => (format!("quota_{quota}"), None),
            LeaseError::Store(e) => ("store".into(), Some(e.to_string())),
            LeaseError::Policy(e) => ("policy".into(), Some(e.to_string())),
            LeaseError::Audit(e) => ("audit_unavailable".into(), Some(e.to_string())),
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            LeaseError::Denied(_) => "denied",
            LeaseError::BadRequest { .. }
            | LeaseError::UnknownRole { .. }
            | LeaseError::NotFound(_)
            | LeaseError::JobNotFound(_) => "invalid",
            LeaseError::Quota { .. } => "quota",
            _ => "error",
        }
    }
}

/// A decision as an audit entry: the deciding policies and their reasons.
fn decision_event(d: &Decision, action: Action) -> Event {
    let mut e = Event::new("decide", if d.allowed { "allow" } else { "deny" }).detail("policy_action", action.as_str());
    e.policies = Some(d.policy_ids());
    let mut reasons: Vec<String> = d.policies.iter().filter_map(|p| p.reason.clone()).collect();
    if !d.allowed && d.policies.is_empty() {
        reasons.push("no policy permits it".into());
        if !d.candidates.is_empty() {
            e = e.detail("candidates", d.candidates.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
        }
    }
    e.reasons = Some(reasons);
    if !d.errors.is_empty() {
        e = e.detail("policy_errors", d.errors.len());
    }
    e
}

/// Adds a lease's identity to an entry.
fn with_lease(mut e: Event, l: &Lease) -> Event {
    e.lease_id = Some(l.id.to_string());
    e.role = Some(l.role.clone());
    e.scopes = Some(l.scopes.clone());
    e
}

/// Per-owner issue rate limit (per replica): a keyed GCRA limiter
/// (`governor`) with a burst of `per_minute` that refills at `per_minute` a
/// minute, the same semantics as a token bucket of that size.
pub struct RateLimiter {
    limiter: Option<governor::DefaultKeyedRateLimiter<(String, String)>>,
}

/// Keys kept before idle ones (back at a full burst) are dropped.
const RATE_KEYS_SOFT_CAP: usize = 100_000;

impl RateLimiter {
    /// `per_minute` 0 = no limit.
    pub fn new(per_minute: u32) -> RateLimiter {
        let limiter = std::num::NonZeroU32::new(per_minute)
            .map(|n| governor::RateLimiter::keyed(governor::Quota::per_minute(n)));
        RateLimiter { limiter }
    }

    /// Takes one issue; `Err(seconds until one is allowed)` when none is left.
    pub fn take(&self, issuer: &str, subject: &str) -> Result<(), u64> {
        use governor::clock::Clock as _;
        let Some(l) = &self.limiter else { return Ok(()) };
        if l.len() > RATE_KEYS_SOFT_CAP {
            // Workloads whose bucket is full again carry no state worth keeping.
            l.retain_recent();
        }
        match l.check_key(&(issuer.to_owned(), subject.to_owned())) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
        }
    }
}

/// What an issue returns: the lease, the credential (shown once), why,
/// and where the time went.
pub struct Issued {
    pub lease: Lease,
    pub renewable: bool,
    pub public: serde_json::Map<String, serde_json::Value>,
    pub secret: BTreeMap<String, SecretString>,
    pub decision: Decision,
    pub stages: IssueStages,
}

/// What a renewal returns: the lease, whether it runs for less than was
/// asked (cut at the role's or lease's max), and what was asked.
pub struct Renewed {
    pub lease: Lease,
    pub capped: bool,
    pub asked: Duration,
}

/// A renewal's TTL: as the native API takes it (text, refused over the
/// role's max) or as Vault's (seconds, cut at the max).
enum RenewTtl {
    Strict(Option<String>),
    Capped(Option<Duration>),
}

/// An issue request, after the wire format.
#[derive(Debug, Clone, Default)]
pub struct IssueInput {
    pub role: String,
    pub ttl: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone)]
pub struct LeaseService {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    pub policy: Arc<PolicyEngine>,
    pub settings: LeaseSettings,
    pub audit: Audit,
    wake: Arc<Notify>,
    next_wake_ms: Arc<AtomicI64>,
    started_at: OffsetDateTime,
    quotas: Quotas,
    rate: Arc<RateLimiter>,
    /// Managed root credentials: checked before each issue so the plugin
    /// uses the store's active version.
    pub roots: Option<Arc<crate::connections::RootCredentials>>,
    /// Per-connection revocation concurrency and circuit breakers.
    pub breakers: breaker::Breakers,
    /// How long each role's vendor takes to issue.
    issue_times: Arc<issue_times::IssueTimes>,
}

/// What `LeaseService::status` reports.
pub struct Status {
    pub now: OffsetDateTime,
    /// (role, plugin, state, live leases).
    pub counts: crate::store::LeaseCounts,
    pub oldest_overdue: Option<Lease>,
    /// Up to 10 leases whose revocation is failing, newest first.
    pub failing: Vec<Lease>,
    pub quotas: Vec<QuotaUse>,
    pub replicas: Vec<crate::store::Replica>,
}

/// How much of a quota is in use (`limit` 0 = none).
pub struct QuotaUse {
    pub quota: String,
    pub used: i64,
    pub limit: u64,
}

/// The `outcome` label of an issue or renew request (one of
/// [`crate::telemetry::REQUEST_OUTCOMES`]).
fn outcome<T>(result: &Result<T, LeaseError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(LeaseError::Denied(_)) => "denied",
        Err(LeaseError::BadRequest { .. }) => "invalid",
        Err(LeaseError::Quota { .. }) => "quota",
        Err(LeaseError::Conflict(_)) => "conflict",
        Err(_) => "error",
    }
}

/// A new, unguessable lease id (128 random bits).
pub fn new_lease_id() -> LeaseId {
    let bytes: [u8; 16] = rand::rng().random();
    LeaseId::new(format!("lse_{}", hex::encode(bytes)))
}

fn principal_of(w: &VerifiedWorkload) -> Principal {
    Principal { issuer: w.issuer.clone(), subject: w.subject.clone(), attributes: w.attributes.clone() }
}

fn plugin_error(role: &str, e: PluginError) -> LeaseError {
    let message = match &e {
        PluginError::InvalidRequest(m) => format!("role `{role}`: {m}"),
        PluginError::Permanent(m) => format!("role `{role}`: the vendor refused: {m}"),
        PluginError::Retryable(m) => format!("role `{role}`: vendor unavailable, try again: {m}"),
        PluginError::Misconfigured(m) => format!("role `{role}` is misconfigured: {m}"),
        PluginError::Unsupported(what) => format!("role `{role}`: {what} is not supported by its plugin"),
        PluginError::State(m) => format!("role `{role}`: {m}"),
    };
    LeaseError::Plugin { message, error: e }
}

impl LeaseService {
    pub fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>, policy: Arc<PolicyEngine>, settings: LeaseSettings) -> Self {
        let breakers = breaker::Breakers::new(&settings, catalog.connections.keys().map(|c| (c.as_str(), None)));
        LeaseService {
            breakers,
            store,
            catalog,
            policy,
            settings,
            audit: Audit::disabled(),
            wake: Arc::new(Notify::new()),
            next_wake_ms: Arc::new(AtomicI64::new(i64::MAX)),
            started_at: OffsetDateTime::now_utc(),
            rate: Arc::new(RateLimiter::new(Quotas::default().issues_per_minute_per_owner)),
            quotas: Quotas::default(),
            roots: None,
            issue_times: Arc::default(),
        }
    }

    /// Follows managed root credentials (see [`crate::connections`]).
    pub fn with_roots(mut self, roots: Arc<crate::connections::RootCredentials>) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Writes audit entries to `audit` (the default writes none).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// A role name as the audit log may record it: configured names as they
    /// are, anything else (a client's free text) only as its HMAC.
    pub fn audit_role(&self, name: &str) -> String {
        if self.catalog.role(name).is_some() {
            name.to_owned()
        } else {
            self.audit.hash(name.as_bytes())
        }
    }

    /// Sets the quotas and rate limit (the defaults are finite).
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.rate = Arc::new(RateLimiter::new(quotas.issues_per_minute_per_owner));
        self.quotas = quotas;
        self
    }

    /// Refuses an issue that would exceed a quota. Checked before anything
    /// is written. Counts are exact reads of the store's counts
    /// (O(1) in the number of leases). Concurrent issues can overshoot
    /// a limit by the number in flight.
    async fn check_quotas(&self, w: &VerifiedWorkload, role: &Role) -> Result<(), LeaseError> {
        let reject = |quota: &'static str, message: String, retry_after: Option<u64>| {
            metrics().quota_rejections.with_label_values(&[quota]).inc();
            LeaseError::Quota { quota, message, retry_after }
        };
        if let Err(wait) = self.rate.take(&w.issuer, &w.subject) {
            return Err(reject(
                "rate",
                format!(
                    "rate limit: workload `{}` may request {} credentials per minute; try again in {wait}s",
                    w.subject, self.quotas.issues_per_minute_per_owner
                ),
                Some(wait),
            ));
        }
        let owner = self.quotas.max_active_per_owner;
        let per_role = role.cfg.max_active.unwrap_or(self.quotas.max_active_per_role);
        let total = self.quotas.max_active_total;
        if owner == 0 && per_role == 0 && total == 0 {
            return Ok(());
        }
        // The three counts in one read of the store's counts.
        let n = self.store.quota_counts(&w.issuer, &w.subject, &role.name).await?;
        if owner > 0 && n.owner as u64 >= owner {
            return Err(reject(
                "owner",
                format!(
                    "quota: workload `{}` holds {} live leases (limit {owner} per workload); revoke some or let them expire",
                    w.subject, n.owner
                ),
                None,
            ));
        }
        if per_role > 0 && n.role as u64 >= per_role {
            return Err(reject(
                "role",
                format!("quota: role `{}` has {} live leases (limit {per_role} for this role)", role.name, n.role),
                None,
            ));
        }
        if total > 0 && n.total as u64 >= total {
            return Err(reject("total", format!("quota: lessor holds {} live leases (limit {total} in all)", n.total), None));
        }
        Ok(())
    }

    /// A configured role. An unknown name is answered without the list of
    /// roles: `GET /v1/roles` shows a workload the ones it may request.
    fn role(&self, name: &str) -> Result<Arc<Role>, LeaseError> {
        self.catalog.role(name).cloned().ok_or_else(|| LeaseError::UnknownRole { role: name.to_owned() })
    }

    /// Evaluates policy, timing it.
    pub fn decide<'p>(
        &self,
        principal: impl Into<crate::policy::Who<'p>>,
        action: Action,
        role: Option<&Role>,
        ctx: &RequestContext,
    ) -> Result<Decision, LeaseError> {
        let t = Instant::now();
        let d = self.policy.current().decide(principal, action, role.map(|r| &r.info), ctx)?;
        metrics().policy_seconds.with_label_values(&[action.as_str()]).observe(t.elapsed().as_secs_f64());
        if !d.allowed {
            metrics()
                .policy_denials
                .with_label_values(&[action.as_str(), role.map(|r| r.name.as_str()).unwrap_or("lessor")])
                .inc();
        }
        Ok(d)
    }

    /// Issues a credential for `w`.
    pub async fn issue(&self, w: &VerifiedWorkload, input: IssueInput, meta: &RequestMeta) -> Result<Issued, LeaseError> {
        let started = Instant::now();
        let role = match self.role(&input.role) {
            Ok(r) => r,
            Err(e) => {
                let mut ev = Event::new("issue", e.outcome()).request(Some(meta)).actor(workload_info(w));
                ev.role = Some(self.audit_role(&input.role));
                self.audit.note(ev.error("unknown_role", "no such role"));
                return Err(e);
            }
        };
        let result = self.issue_inner(w, &role, input, meta).await;
        if let Err(e) = &result {
            if !matches!(e, LeaseError::Audit(_)) {
                let (kind, text) = e.audit_kind();
                let mut ev = Event::new("issue", e.outcome()).request(Some(meta)).actor(workload_info(w));
                ev.role = Some(role.name.clone());
                ev.error_kind = Some(kind);
                ev.error = text;
                self.audit.note(ev);
            }
        }
        metrics().issued.with_label_values(&[role.kind.as_str(), role.name.as_str(), outcome(&result), meta.api]).inc();
        if let Ok(issued) = &result {
            metrics().issue_seconds.with_label_values(&[role.kind.as_str()]).observe(started.elapsed().as_secs_f64());
            issued.stages.observe(role.kind.as_str());
        }
        result
    }

    async fn issue_inner(
        &self,
        w: &VerifiedWorkload,
        role: &Arc<Role>,
        input: IssueInput,
        meta: &RequestMeta,
    ) -> Result<Issued, LeaseError> {
        let started = Instant::now();
        let ttl = request_ttl(input.ttl.as_deref(), role)?;
        let mut scopes = input.scopes.clone().unwrap_or_else(|| role.cfg.default_scopes.clone());
        scopes.sort();
        scopes.dedup();
        for s in &scopes {
            if !role.cfg.scopes.contains(s) {
                return Err(LeaseError::BadRequest {
                    field: "scopes",
                    message: format!(
                        "scope `{s}` is not offered by role `{}` (offered: {})",
                        role.name,
                        if role.cfg.scopes.is_empty() { "none".to_string() } else { role.cfg.scopes.join(", ") }
                    ),
                });
            }
        }
        let now = OffsetDateTime::now_utc();
        let expires_at = after(now, ttl, "ttl")?;
        let max_expires_at = after(now, role.max_ttl(), "ttl")?;
        let ctx = RequestContext {
            ttl_seconds: crate::duration::secs_i64(ttl),
            scopes: scopes.clone(),
            now: now.unix_timestamp(),
            source_ip: meta.source,
            vault_role: meta.vault_role.clone(),
        };
        let decision = self.decide(&principal_of(w), Action::Issue, Some(role), &ctx)?;
        let decided = decision_event(&decision, Action::Issue);
        if !decision.allowed {
            let mut ev = decided.request(Some(meta)).actor(workload_info(w));
            ev.role = Some(role.name.clone());
            ev.scopes = Some(scopes.clone());
            ev.ttl_seconds = Some(crate::duration::secs_i64(ttl));
            self.audit.note(ev);
            return Err(LeaseError::Denied(Box::new(decision)));
        }
        self.check_quotas(w, role).await?;
        let lease = Lease {
            id: new_lease_id(),
            role: role.name.clone(),
            plugin: role.kind.clone(),
            issuer: w.issuer.clone(),
            subject: w.subject.clone(),
            claims: serde_json::to_value(&w.attributes).unwrap_or_default(),
            scopes,
            policies: decision.policy_ids(),
            state: LeaseState::Pending,
            issued_at: now,
            expires_at,
            max_expires_at,
            handle: None,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            end_reason: None,
            ended_at: None,
            root_version: None,
        };
        // Audit before anything exists: no entry, no credential. The
        // allowing decision (policies, reasons) is part of this entry.
        let mut ev = with_lease(Event::new("issue", "pending"), &lease).request(Some(meta)).actor(workload_info(w));
        ev.ttl_seconds = Some(crate::duration::secs_i64(ttl));
        ev.policies = Some(lease.policies.clone());
        ev.reasons = decided.reasons;
        ev.details.extend(decided.details.into_iter().filter(|(k, _)| k != "policy_action"));
        if !input.params.is_empty() {
            // Free-form client input: correlatable, never readable.
            let params = serde_json::Value::Object(input.params.clone()).to_string();
            ev = ev.detail("params", self.audit.hash(params.as_bytes()));
        }
        self.audit.record(ev).await?;
        let checks = started.elapsed();
        // From here on, finish in a task of our own: dropping the request
        // future (client gone) must not stop half-way between recording the
        // lease, creating the credential, activating the lease and auditing
        // the outcome.
        let svc = self.clone();
        let meta = meta.clone();
        let actor = workload_info(w);
        let role = role.clone();
        let workload = w.to_plugin();
        let params = input.params;
        let requested_ttl = crate::duration::secs_i64(ttl);
        let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let (lease, issued, stages) = svc.create_and_activate(role, lease, workload, params).await?;
            // Who, what and why are in `issue pending` (same request id and
            // lease id): this entry only says that it happened.
            let mut ev = Event::new("issue", "ok").request_brief(&meta);
            ev.lease_id = Some(lease.id.to_string());
            let ttl_seconds = (lease.expires_at - lease.issued_at).whole_seconds();
            if ttl_seconds != requested_ttl {
                // The vendor's credential ends sooner than asked.
                ev.ttl_seconds = Some(ttl_seconds);
            }
            if let Err(e) = svc.audit.record(ev).await {
                // Unaudited access must not stand: take it back.
                tracing::error!(lease_id = %lease.id, error = %e, "issue outcome not audited; revoking the credential");
                let _ = svc.revoke_lease_by(&lease, EndReason::Orphaned, actor, Some(&meta)).await;
                return Err(LeaseError::Audit(e));
            }
            // The one INFO line per credential; the rest of a request logs at DEBUG.
            tracing::info!(lease_id = %lease.id, role = %lease.role, ttl_seconds, "credential issued");
            Ok((lease, issued, stages))
        }));
        // (in_current_span: the request's span, and so its request id, stays
        // on the lines the plugin logs.)
        let (lease, issued, stages) = match task.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(LeaseError::Conflict(format!("issue task failed: {e}; the pending lease will be cleaned up")))
            }
        };
        Ok(Issued {
            renewable: self.role(&lease.role)?.plugin.capabilities().can_renew,
            lease,
            public: issued.public,
            secret: issued.secret,
            decision,
            stages: IssueStages { checks, ..stages },
        })
    }

    async fn create_and_activate(
        &self,
        role: Arc<Role>,
        mut lease: Lease,
        workload: lessor_plugin::Workload,
        params: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Lease, lessor_plugin::Issued, IssueStages), LeaseError> {
        if let Some(roots) = &self.roots {
            // Another replica may have switched the root credential: issue
            // with the store's active version, never a stale one.
            roots.ensure_current(&role.connection).await.map_err(|e| LeaseError::Plugin {
                message: format!("role `{}`: root credential of connection `{}`: {e}", role.name, role.connection),
                error: PluginError::Retryable(e.to_string()),
            })?;
        }
        // Committed; its sync runs while the plugin works, started at once
        // or, for a vendor that takes a while, up to nine tenths of its
        // usual time later so that other writes share it.
        let within = self.issue_times.sync_within(&role.name);
        let recording = Instant::now();
        let on_disk = self.store.insert_pending_within(&lease, within).await?;
        let record = recording.elapsed();
        let req = lessor_plugin::IssueRequest {
            lease_id: lease.id.clone(),
            role: role.short.clone(),
            workload,
            scopes: lease.scopes.clone(),
            expires_at: lease.expires_at,
            params,
        };
        // Bounded: past the call timeout the issue is cancelled and its
        // pending lease revoked below, like any failed issue.
        let limit = self.settings.call_timeout();
        let started = Instant::now();
        let called = lessor_plugin::call::bounded("issue", limit, role.plugin.issue(req)).await;
        let vendor = started.elapsed();
        self.issue_times.record(&role.name, vendor);
        let issued = match called.unwrap_or_else(|_| {
            Err(PluginError::Retryable(format!("the plugin did not finish issuing within {}", crate::fmt_duration(limit))))
        }) {
            Ok(i) => i,
            Err(e) => {
                // Something may exist at the vendor; take it back now (the
                // worker retries if this fails).
                tracing::info!(lease_id = %lease.id, role = %role.name, error = %e, "issue failed; cleaning up");
                let _ = self.revoke_lease_by(&lease, EndReason::Orphaned, ActorInfo::system("issue-cleanup"), None).await;
                return Err(plugin_error(&role.name, e));
            }
        };
        let expires_at = crate::duration::vendor_expiry(issued.expires_at, lease.expires_at, OffsetDateTime::now_utc(), &role.name);
        let activating = Instant::now();
        match self.store.activate_at_version(&lease.id, &issued.handle, expires_at, issued.root_version).await {
            Ok(true) => {}
            Ok(false) => {
                // The lease ended while the plugin was issuing (an admin
                // revoked it, or the orphan sweep took it): that revocation
                // ran before this credential existed. Take it back now.
                lease.handle = Some(issued.handle.clone());
                lease.root_version = issued.root_version;
                lease.expires_at = expires_at;
                self.revoke_created_after_end(&role, &lease).await;
                return Err(LeaseError::Conflict(format!(
                    "lease `{}` was revoked or cleaned up while its credential was being created; the credential \
                     was taken back, request a new one",
                    lease.id
                )));
            }
            Err(e) => {
                tracing::warn!(lease_id = %lease.id, error = %e, "activating lease failed; revoking the credential");
                lease.handle = Some(issued.handle.clone());
                let _ = self.revoke_lease_by(&lease, EndReason::Orphaned, ActorInfo::system("issue-cleanup"), None).await;
                return Err(e.into());
            }
        }
        let activate = activating.elapsed();
        lease.state = LeaseState::Active;
        lease.root_version = issued.root_version;
        lease.handle = Some(issued.handle.clone());
        lease.expires_at = expires_at;
        // No credential leaves before its lease is on disk, at least as
        // pending (the activation is committed and synced next: a power
        // loss before then leaves a pending lease, which recovery revokes).
        let waiting = Instant::now();
        if let Err(e) = on_disk.wait().await {
            tracing::warn!(lease_id = %lease.id, error = %e, "the pending lease did not reach the disk; revoking the credential");
            let _ = self.revoke_lease_by(&lease, EndReason::Orphaned, ActorInfo::system("issue-cleanup"), None).await;
            return Err(e.into());
        }
        let durable = waiting.elapsed();
        self.note_expiry(expires_at);
        Ok((lease, issued, IssueStages { checks: Duration::ZERO, record, vendor, activate, durable }))
    }

    /// Revokes a credential the plugin created for a lease that had already
    /// ended (activation found it no longer pending), and audits it. If the
    /// vendor fails, the lease becomes `revoke_failed` again with the
    /// credential's handle, so the worker retries it like any other.
    async fn revoke_created_after_end(&self, role: &Role, lease: &Lease) {
        let reason = EndReason::Orphaned;
        let audit = |outcome: &'static str| {
            with_lease(Event::new("revoke", outcome), lease)
                .actor(ActorInfo::system("issue-cleanup"))
                .detail("end_reason", reason.as_str())
                .detail("cause", "lease ended while its credential was being created")
        };
        let labels = |outcome: &str| {
            metrics()
                .revocations
                .with_label_values(&[role.kind.as_str(), role.name.as_str(), reason.as_str(), outcome])
                .inc();
        };
        if !role.plugin.capabilities().can_revoke() {
            labels("not_revocable");
            tracing::warn!(lease_id = %lease.id, role = %role.name, valid_until = %lease.expires_at,
                "credential created for an ended lease cannot be revoked by its plugin; it stays valid until it expires");
            self.audit.note(audit("revoke_unsupported").detail("valid_until", rfc3339(lease.expires_at)));
            return;
        }
        let outcome = match self.call_revoke(role, lease).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(timed_out) => Err(timed_out),
        };
        match outcome {
            Ok(()) => {
                labels("ok");
                tracing::info!(lease_id = %lease.id, role = %role.name, "credential of an ended lease revoked");
                self.audit.note(audit("ok").detail("state", lease.state.as_str()));
            }
            Err(msg) => {
                labels("error");
                tracing::warn!(lease_id = %lease.id, role = %role.name, error = %msg,
                    "revoking the credential of an ended lease failed, will retry");
                let at = OffsetDateTime::now_utc() + backoff(self.settings.retry_base, self.settings.retry_max, 0);
                let handle = lease.handle.clone().unwrap_or_default();
                if let Err(e) = self.store.record_late_failure(&lease.id, &handle, reason, &msg, at).await {
                    tracing::error!(lease_id = %lease.id, error = %e, "could not record the failed revocation");
                }
                self.audit.note(audit("failed").error("revoke_failed", msg).detail("attempts", 1));
            }
        }
        self.wake.notify_one();
    }

    /// Wakes the expiry worker if this lease falls due before it planned to
    /// look again.
    fn note_expiry(&self, at: OffsetDateTime) {
        let ms = crate::store::to_ms(at);
        if ms < self.next_wake_ms.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// The lease `id` if the actor owns it (or is an admin). Someone else's
    /// lease is "not found", like one that does not exist.
    async fn owned(&self, actor: &Actor, id: &str) -> Result<Lease, LeaseError> {
        self.store
            .get(&LeaseId::new(id))
            .await?
            .filter(|l| actor.owns(l))
            .ok_or_else(|| LeaseError::NotFound(id.to_owned()))
    }

    /// Reads a lease the actor may see.
    pub async fn get(&self, actor: &Actor, id: &str, meta: &RequestMeta) -> Result<Lease, LeaseError> {
        let lease = self.owned(actor, id).await?;
        self.check_owner_action(actor, &lease, Action::Read, 0, meta)?;
        Ok(lease)
    }

    fn check_owner_action(
        &self,
        actor: &Actor,
        lease: &Lease,
        action: Action,
        ttl: i64,
        meta: &RequestMeta,
    ) -> Result<Option<Decision>, LeaseError> {
        let Actor::Workload(w) = actor else { return Ok(None) };
        let Some(role) = self.catalog.role(&lease.role) else { return Ok(None) };
        let ctx = RequestContext {
            ttl_seconds: ttl,
            scopes: lease.scopes.clone(),
            now: OffsetDateTime::now_utc().unix_timestamp(),
            source_ip: meta.source,
            vault_role: meta.vault_role.clone(),
        };
        let d = self.decide(&principal_of(w), action, Some(role), &ctx)?;
        let mut ev = with_lease(decision_event(&d, action), lease).request(Some(meta)).actor(workload_info(w));
        if ttl > 0 {
            ev.ttl_seconds = Some(ttl);
        }
        self.audit.note(ev);
        if !d.allowed {
            return Err(LeaseError::Denied(Box::new(d)));
        }
        Ok(Some(d))
    }

    /// Extends a lease (never past its max).
    pub async fn renew(&self, actor: &Actor, id: &str, ttl: Option<String>, meta: &RequestMeta) -> Result<Lease, LeaseError> {
        self.renew_with(actor, id, RenewTtl::Strict(ttl), meta).await.map(|r| r.lease)
    }

    /// Vault's renewal: a TTL over the role's max is cut to it, and a lease
    /// already at its max answers its remaining time rather than a
    /// conflict; `capped` says the lease runs for less than was asked (so a
    /// client such as Vault Agent fetches a new credential in time).
    pub async fn renew_capped(&self, actor: &Actor, id: &str, ttl: Option<Duration>, meta: &RequestMeta) -> Result<Renewed, LeaseError> {
        self.renew_with(actor, id, RenewTtl::Capped(ttl), meta).await
    }

    async fn renew_with(&self, actor: &Actor, id: &str, ttl: RenewTtl, meta: &RequestMeta) -> Result<Renewed, LeaseError> {
        let lease = match self.owned(actor, id).await {
            Ok(l) => l,
            Err(e) => {
                let mut ev = Event::new("renew", e.outcome()).request(Some(meta)).actor(actor.audit_info());
                ev.lease_id = Some(self.audit.hash(id.as_bytes()));
                let (kind, text) = e.audit_kind();
                ev.error_kind = Some(kind);
                ev.error = text.filter(|_| !matches!(e, LeaseError::NotFound(_)));
                self.audit.note(ev);
                return Err(e);
            }
        };
        let role = self.role(&lease.role)?;
        let result = self.renew_inner(actor, &lease, &role, ttl, meta).await;
        match &result {
            Ok(Renewed { lease: l, .. }) => {
                let mut ev = with_lease(Event::new("renew", "ok"), l).request(Some(meta)).actor(actor.audit_info());
                ev.ttl_seconds = Some((l.expires_at - OffsetDateTime::now_utc()).whole_seconds().max(0));
                if let Err(e) = self.audit.record(ev).await {
                    metrics().renewed.with_label_values(&[role.kind.as_str(), role.name.as_str(), "error", meta.api]).inc();
                    return Err(e.into());
                }
            }
            Err(LeaseError::Audit(_)) => {}
            Err(e) => {
                let mut ev = with_lease(Event::new("renew", e.outcome()), &lease).request(Some(meta)).actor(actor.audit_info());
                let (kind, text) = e.audit_kind();
                ev.error_kind = Some(kind);
                ev.error = text;
                self.audit.note(ev);
            }
        }
        metrics().renewed.with_label_values(&[role.kind.as_str(), role.name.as_str(), outcome(&result), meta.api]).inc();
        result
    }

    async fn renew_inner(
        &self,
        actor: &Actor,
        lease: &Lease,
        role: &Arc<Role>,
        ttl: RenewTtl,
        meta: &RequestMeta,
    ) -> Result<Renewed, LeaseError> {
        // The request first: bad input is a 400 naming the field whatever
        // the lease's state.
        let (ttl, capped_mode) = match ttl {
            RenewTtl::Strict(t) => (request_ttl(t.as_deref(), role)?, false),
            RenewTtl::Capped(t) => {
                (t.unwrap_or_else(|| role.cfg.default_ttl()).max(Duration::from_secs(1)), true)
            }
        };
        let asked = ttl;
        let ttl = ttl.min(role.max_ttl());
        if let Some(why) = not_renewable(lease) {
            return Err(LeaseError::Conflict(format!("lease `{}` {why}; only active leases can be renewed, request a new credential", lease.id)));
        }
        let now = OffsetDateTime::now_utc();
        if lease.expires_at <= now {
            // Past its expiry, not yet swept by the worker: it is over, and
            // renewing must not bring it back.
            return Err(LeaseError::Conflict(format!(
                "lease `{}` expired {} ago ({}) and is being revoked; request a new credential",
                lease.id,
                fmt_duration(Duration::try_from(now - lease.expires_at).unwrap_or_default()),
                lease.expires_at
            )));
        }
        if !role.plugin.capabilities().can_renew {
            return Err(LeaseError::Conflict(format!(
                "role `{}` cannot be renewed: its plugin ({}) issues credentials with a fixed lifetime; request a new one",
                role.name, role.kind
            )));
        }
        if lease.expires_at >= lease.max_expires_at && capped_mode {
            // At its max: nothing to extend. Vault answers the time left.
            self.check_owner_action(actor, lease, Action::Renew, crate::duration::secs_i64(ttl), meta)?;
            return Ok(Renewed { lease: lease.clone(), capped: true, asked });
        }
        if lease.expires_at >= lease.max_expires_at {
            return Err(LeaseError::Conflict(format!(
                "lease `{}` already runs until its max TTL ({}); request a new credential",
                lease.id, lease.max_expires_at
            )));
        }
        let new_exp = after(now, ttl, "ttl")?.min(lease.max_expires_at).max(lease.expires_at);
        self.check_owner_action(actor, lease, Action::Renew, crate::duration::secs_i64(ttl), meta)?;
        // Audit before the vendor extends anything.
        let mut ev = with_lease(Event::new("renew", "pending"), lease).request(Some(meta)).actor(actor.audit_info());
        ev.ttl_seconds = Some((new_exp - now).whole_seconds());
        self.audit.record(ev).await?;
        let lref = lease_ref(lease, role);
        let limit = self.settings.call_timeout();
        let vendor_exp = lessor_plugin::call::bounded("renew", limit, role.plugin.renew(RenewRequest { lease: lref, expires_at: new_exp }))
            .await
            .unwrap_or_else(|_| {
                Err(PluginError::Retryable(format!("the plugin did not finish renewing within {}", crate::fmt_duration(limit))))
            })
            .map_err(|e| plugin_error(&role.name, e))?;
        let done = OffsetDateTime::now_utc();
        let new_exp = crate::duration::vendor_expiry(vendor_exp, new_exp, done, &role.name);
        // Conditional on the lease not having expired meanwhile: one that
        // ran out during the vendor call stays due (the worker revokes what
        // the vendor just extended).
        if !self.store.renew(&lease.id, done, new_exp).await? {
            return Err(LeaseError::Conflict(format!("lease `{}` ended while it was being renewed", lease.id)));
        }
        let mut l = lease.clone();
        l.expires_at = new_exp;
        let capped = new_exp - done < time::Duration::try_from(asked).unwrap_or(time::Duration::MAX) - time::Duration::seconds(1);
        Ok(Renewed { lease: l, capped, asked })
    }

    /// Revokes a lease now (owner or admin). Revoking an ended lease returns
    /// it unchanged.
    pub async fn revoke(&self, actor: &Actor, id: &str, meta: &RequestMeta) -> Result<Lease, LeaseError> {
        let lease = match self.owned(actor, id).await {
            Ok(l) => l,
            Err(e) => {
                let mut ev = Event::new("revoke", e.outcome()).request(Some(meta)).actor(actor.audit_info());
                ev.lease_id = Some(self.audit.hash(id.as_bytes()));
                ev.error_kind = Some(e.audit_kind().0);
                self.audit.note(ev);
                return Err(e);
            }
        };
        if let Err(e) = self.check_owner_action(actor, &lease, Action::Revoke, 0, meta) {
            let mut ev = with_lease(Event::new("revoke", e.outcome()), &lease).request(Some(meta)).actor(actor.audit_info());
            ev.error_kind = Some(e.audit_kind().0);
            self.audit.note(ev);
            return Err(e);
        }
        if lease.state.is_live() {
            self.revoke_lease_by(&lease, EndReason::Revoked, actor.audit_info(), Some(meta)).await?;
        } else {
            let ev = with_lease(Event::new("revoke", "ok"), &lease).request(Some(meta)).actor(actor.audit_info());
            self.audit.note(ev.detail("already", lease.state.as_str()));
        }
        self.store.get(&lease.id).await?.ok_or_else(|| LeaseError::NotFound(id.to_owned()))
    }

    /// Admin: lists leases.
    pub async fn list(&self, actor: &Actor, filter: &LeaseFilter, meta: &RequestMeta) -> Result<Vec<Lease>, LeaseError> {
        let result = self.store.list(filter).await;
        let mut ev = Event::new("admin.list_leases", if result.is_ok() { "ok" } else { "error" })
            .request(Some(meta))
            .actor(actor.audit_info());
        if let Some(r) = &filter.role {
            ev.role = Some(self.audit_role(r));
        }
        if let Ok(l) = &result {
            ev = ev.detail("count", l.len());
        }
        self.audit.note(ev);
        Ok(result?)
    }

    /// Admin: starts a bulk revocation job: every live lease matching
    /// `filter` is tagged with the job and made due now; the expiry worker
    /// revokes them, so the API never waits on vendors. Returns the job id
    /// and how many leases it took.
    pub async fn start_revoke_job(
        &self,
        filter: &RevokeFilter,
        actor: &Actor,
        meta: &RequestMeta,
    ) -> Result<(String, i64), LeaseError> {
        let by = actor.name();
        for attr in filter.claims.keys() {
            if attr.is_empty() || !attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(LeaseError::BadRequest {
                    field: "claims",
                    message: format!("claim name `{attr}` must be letters, digits and `_`"),
                });
            }
        }
        let bytes: [u8; 16] = rand::rng().random();
        let id = format!("job_{}", hex::encode(bytes));
        // Admin actions are audited before they take effect.
        let mut ev = Event::new("admin.revoke_job", "pending").request(Some(meta)).actor(actor.audit_info());
        ev.role = filter.role.as_deref().map(|r| self.audit_role(r));
        ev = ev.detail("job_id", id.clone()).detail("filter", self.audit_filter(filter));
        self.audit.record(ev.clone()).await?;
        let n = match self.store.start_revoke_job(&id, filter, &by, OffsetDateTime::now_utc()).await {
            Ok(n) => n,
            Err(e) => {
                let mut failed = ev.clone();
                failed.outcome = "error";
                self.audit.note(failed.error("store", e.to_string()).request(Some(meta)));
                return Err(e.into());
            }
        };
        let mut done = ev;
        done.outcome = "ok";
        done.time = crate::audit::now_rfc3339();
        self.audit.note(done.detail("scheduled", n).request(Some(meta)));
        self.wake.notify_one();
        tracing::warn!(job_id = %id, actor = %by, leases = n, "bulk revocation started");
        Ok((id, n))
    }

    /// A revoke filter for the audit log: configured role names and claim
    /// names as they are, values the admin typed only as HMACs.
    fn audit_filter(&self, f: &RevokeFilter) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(r) = &f.role {
            m.insert("role".into(), self.audit_role(r).into());
        }
        if let Some(i) = &f.issuer {
            m.insert("issuer".into(), self.audit.hash(i.as_bytes()).into());
        }
        if let Some(s) = &f.subject {
            m.insert("subject".into(), self.audit.hash(s.as_bytes()).into());
        }
        for (k, v) in &f.claims {
            m.insert(format!("claims.{k}"), self.audit.hash(v.as_bytes()).into());
        }
        if let Some(ms) = f.issued_after_ms {
            m.insert("issued_after_ms".into(), ms.into());
        }
        serde_json::Value::Object(m)
    }

    /// Admin: a bulk revocation job's progress.
    pub async fn job_status(&self, actor: &Actor, id: &str, meta: &RequestMeta) -> Result<JobStatus, LeaseError> {
        let r = self.store.job_status(id).await?.ok_or_else(|| LeaseError::JobNotFound(id.to_owned()));
        let mut ev = Event::new("admin.job_status", if r.is_ok() { "ok" } else { "invalid" })
            .request(Some(meta))
            .actor(actor.audit_info());
        ev = ev.detail("job_id", if r.is_ok() { id.to_owned() } else { self.audit.hash(id.as_bytes()) });
        self.audit.note(ev);
        r
    }

    /// An SRE's one-screen summary: live leases by role and state, the
    /// longest-overdue revocation, failing revocations with their errors,
    /// quota use, and the replicas.
    pub async fn status(&self) -> Result<Status, LeaseError> {
        let now = OffsetDateTime::now_utc();
        let counts = self.store.counts().await?;
        let oldest_overdue = self.store.oldest_overdue(now).await?;
        let failing = self
            .store
            .list(&LeaseFilter { state: Some(LeaseState::RevokeFailed), limit: 10, ..Default::default() })
            .await?;
        let live_total: i64 = counts.iter().map(|c| c.3).sum();
        let mut quotas = vec![QuotaUse { quota: "total".into(), used: live_total, limit: self.quotas.max_active_total }];
        for (name, role) in &self.catalog.roles {
            let used = counts.iter().filter(|c| &c.0 == name).map(|c| c.3).sum();
            let limit = role.cfg.max_active.unwrap_or(self.quotas.max_active_per_role);
            quotas.push(QuotaUse { quota: format!("role {name}"), used, limit });
        }
        Ok(Status { now, counts, oldest_overdue, failing, quotas, replicas: self.replicas().await? })
    }

    /// The replicas alive on the store (heartbeat within `claim_timeout`).
    pub async fn replicas(&self) -> Result<Vec<crate::store::Replica>, LeaseError> {
        Ok(self.store.replicas(self.settings.claim_timeout).await?)
    }

    pub fn started_at(&self) -> OffsetDateTime {
        self.started_at
    }
}

/// The requested TTL (or the role's default), bounded by 1 s and the
/// role's `max_ttl`: a 400 naming `ttl` otherwise.
fn request_ttl(ttl: Option<&str>, role: &Role) -> Result<Duration, LeaseError> {
    let what = format!("role `{}`", role.name);
    let checked = match ttl {
        Some(t) => crate::duration::parse_ttl(t, role.max_ttl(), &what),
        None => {
            let d = role.cfg.default_ttl();
            crate::duration::check_ttl(d, role.max_ttl(), &what).map(|()| d)
        }
    };
    checked.map_err(|message| LeaseError::BadRequest { field: "ttl", message })
}

/// `t + d` for a bounded request value; a 400 naming `field` if it would
/// leave the representable range.
fn after(t: OffsetDateTime, d: Duration, field: &'static str) -> Result<OffsetDateTime, LeaseError> {
    crate::duration::add(t, d).ok_or_else(|| LeaseError::BadRequest {
        field,
        message: format!("{field} {} reaches past the latest time lessor can represent", fmt_duration(d)),
    })
}

/// Why a lease cannot be renewed, from its state; `None` for an active
/// lease not scheduled for revocation.
fn not_renewable(l: &Lease) -> Option<String> {
    match (l.state, l.end_reason) {
        (LeaseState::Active, None) => None,
        (LeaseState::Active, Some(r)) => {
            Some(format!("is scheduled for revocation (state `active`, ending as `{}`)", r.as_str()))
        }
        (LeaseState::Pending, _) => Some("is still `pending` (its credential is not issued yet)".into()),
        (LeaseState::RevokeFailed, r) => Some(format!(
            "is `revoke_failed`: its revocation (as `{}`) is being retried",
            r.map(|r| r.as_str()).unwrap_or("revoked")
        )),
        (state, r) => Some(format!(
            "has ended (state `{}`{})",
            state.as_str(),
            r.map(|r| format!(", reason `{}`", r.as_str())).unwrap_or_default()
        )),
    }
}

/// What a plugin is told about a lease of `role`.
fn lease_ref(lease: &Lease, role: &Role) -> LeaseRef {
    LeaseRef {
        lease_id: lease.id.clone(),
        role: role.short.clone(),
        handle: lease.handle.clone(),
        expires_at: lease.expires_at,
        root_version: lease.root_version,
    }
}

/// A time as audit entries and messages write it.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Exponential backoff with ±20% jitter: base * 2^attempts, capped.
pub fn backoff(base: Duration, max: Duration, attempts: i64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.clamp(0, 20) as u32).min(max);
    let jitter = rand::rng().random_range(0.8..=1.2);
    exp.mul_f64(jitter).min(max)
}

#[cfg(test)]
mod on_disk_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_per_workload_then_says_when_to_retry() {
        let r = RateLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(r.take("iss", "a"), Ok(()));
        }
        // One issue comes back every 20 s.
        let wait = r.take("iss", "a").expect_err("the fourth issue within a minute is refused");
        assert!((19..=20).contains(&wait), "retry after {wait}s");
        assert_eq!(r.take("iss", "b"), Ok(()), "the limit is per workload");
        assert_eq!(r.take("other-iss", "a"), Ok(()), "the workload is issuer and subject");
        let off = RateLimiter::new(0);
        for _ in 0..1000 {
            assert_eq!(off.take("iss", "a"), Ok(()), "0 turns the limit off");
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(600);
        let d0 = backoff(b, m, 0);
        assert!(d0 >= Duration::from_millis(800) && d0 <= Duration::from_millis(1200), "{d0:?}");
        let d3 = backoff(b, m, 3);
        assert!(d3 >= Duration::from_millis(6400) && d3 <= Duration::from_millis(9600), "{d3:?}");
        assert!(backoff(b, m, 60) <= m);
        assert!(backoff(b, m, 60) >= Duration::from_secs(480));
    }

    #[test]
    fn lease_ids_are_unguessable_and_distinct() {
        let a = new_lease_id();
        let b = new_lease_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 4 + 32);
    }
}
