//! Leases as stored: their life (pending, active, ended), expiry work and
//! the counts metrics read. [`LeaseStore`] is the lease part of every
//! [`Store`](super::Store); both backends implement it in `leases.rs`.
//!
//! Which clock decides, per method (both backends agree; the conformance
//! suite in tests/it/store/leases.rs checks it):
//! - the caller's `now`/`at`: `renew` (expired by `now`?), `finish`,
//!   `finish_unrevocable` (`ended_at`), `record_failure` and
//!   `record_late_failure` (`retry_at`), `prune_ended` (`before`),
//!   `schedule_revocation`, `due`/`due_except` for expiry and retries
//!   (`<= now`), `oldest_overdue`, `expiring` (`before`); `insert_pending`
//!   and `activate` store the lease's own `issued_at`/`expires_at`.
//! - both: `due`/`due_except` orphan a pending lease only when it was
//!   issued before `pending_cutoff` (the caller's instant; the process start
//!   on SQLite) and is older than `now - pending_cutoff` by the database's
//!   clock, so a caller whose clock runs ahead orphans nothing early, nor
//!   one whose clock runs behind.
//! - the database's: on PostgreSQL the claims (`claimed_until`)
//!   `insert_pending` and `due` write and compare.
//! - none: `get`, `list`, `mark_orphaned`, `next_due`, `counts`,
//!   `max_live_per_owner`, `count_live`.
//!
//! Must not import: http, policy, identity.

use std::str::FromStr;

use async_trait::async_trait;
use lessor_plugin::{Handle, LeaseId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::StoreError;

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Recorded; the plugin may or may not have created the credential.
    Pending,
    /// The credential exists and is in use.
    Active,
    /// Taken back before its expiry (by request, admin, or cleanup).
    Revoked,
    /// Reached its expiry and was taken back (or ended by itself).
    Expired,
    /// Revocation failed; retried with backoff until it succeeds.
    RevokeFailed,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Active => "active",
            LeaseState::Revoked => "revoked",
            LeaseState::Expired => "expired",
            LeaseState::RevokeFailed => "revoke_failed",
        }
    }

    pub const ALL: [LeaseState; 5] = [
        LeaseState::Pending,
        LeaseState::Active,
        LeaseState::Revoked,
        LeaseState::Expired,
        LeaseState::RevokeFailed,
    ];

    /// Whether the lease's credential is (or may still be) live.
    pub fn is_live(self) -> bool {
        matches!(self, LeaseState::Pending | LeaseState::Active | LeaseState::RevokeFailed)
    }
}

impl FromStr for LeaseState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LeaseState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown lease state `{s}` (known: pending, active, revoked, expired, revoke_failed)"))
    }
}

/// Why a lease is being (or was) taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its TTL ran out.
    Expired,
    /// Its owner or an admin revoked it.
    Revoked,
    /// It never became active (crash or vendor failure during issue).
    Orphaned,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::Orphaned => "orphaned",
        }
    }
    /// The state a lease ends in once the plugin confirms revocation.
    pub fn final_state(self) -> LeaseState {
        match self {
            EndReason::Expired => LeaseState::Expired,
            EndReason::Revoked | EndReason::Orphaned => LeaseState::Revoked,
        }
    }
}

impl FromStr for EndReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "expired" => Ok(EndReason::Expired),
            "revoked" => Ok(EndReason::Revoked),
            "orphaned" => Ok(EndReason::Orphaned),
            _ => Err(format!("unknown end reason `{s}`")),
        }
    }
}

/// A lease as stored. Holds no secret.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: LeaseId,
    /// Full role name, `connection/role`.
    pub role: String,
    pub plugin: String,
    pub issuer: String,
    pub subject: String,
    /// The principal attributes policy saw (mapped claims), as JSON.
    pub claims: serde_json::Value,
    pub scopes: Vec<String>,
    /// Ids of the policies that decided the issue.
    pub policies: Vec<String>,
    pub state: LeaseState,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub max_expires_at: OffsetDateTime,
    pub handle: Option<Handle>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub end_reason: Option<EndReason>,
    pub ended_at: Option<OffsetDateTime>,
    /// The connection's root credential version it was issued under
    /// (managed root credentials), if any.
    pub root_version: Option<i64>,
}

impl Lease {
    /// Revocation was asked for (owner, admin, bulk job, issue cleanup) but
    /// the plugin cannot revoke: the lease is over for lessor (state
    /// `expired`, the asked reason kept in `end_reason`) while its credential
    /// stays valid until `expires_at`.
    pub fn unrevocable(&self) -> bool {
        self.state == LeaseState::Expired && matches!(self.end_reason, Some(EndReason::Revoked | EndReason::Orphaned))
    }
}

/// Filter for listing leases (admin).
#[derive(Debug, Clone, Default)]
pub struct LeaseFilter {
    pub role: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub state: Option<LeaseState>,
    pub limit: u32,
}

/// The connection a lease's role (`connection/role`) belongs to: what the
/// expiry worker shares due work by.
pub fn connection_of(role: &str) -> &str {
    role.split_once('/').map_or(role, |(c, _)| c)
}

/// Work the expiry worker must do for one lease.
#[derive(Debug, Clone)]
pub struct DueLease {
    pub lease: Lease,
    pub reason: EndReason,
}

/// Counts for metrics: (role, plugin, state) -> n.
pub type LeaseCounts = Vec<(String, String, LeaseState, i64)>;

/// Counts for metrics: (role, plugin) -> n.
pub type RoleCounts = Vec<(String, String, i64)>;

/// What the quotas compare on every issue: live leases of one workload,
/// of one role, and in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCounts {
    pub owner: i64,
    pub role: i64,
    pub total: i64,
}

/// A committed write on its way to the disk ([`LeaseStore::insert_pending`]).
pub struct OnDisk(Option<(tokio::sync::oneshot::Receiver<Result<u64, StoreError>>, Demand)>);

/// Tells the store that someone now waits for the write's sync.
pub(crate) type Demand = Box<dyn FnOnce() + Send + Sync>;

impl std::fmt::Debug for OnDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "OnDisk(on its way)" } else { "OnDisk(on disk)" })
    }
}

impl OnDisk {
    /// Already on disk (a backend whose commit waits for its flush).
    pub fn now() -> OnDisk {
        OnDisk(None)
    }

    /// On disk once `synced` answers (with `Ok`); `demand` is called when
    /// someone starts waiting for it before then.
    pub(crate) fn after(synced: tokio::sync::oneshot::Receiver<Result<u64, StoreError>>, demand: Demand) -> OnDisk {
        OnDisk(Some((synced, demand)))
    }

    /// Waits until the write is on disk (asking the store to sync now if
    /// it is not yet): `Unavailable` if the sync failed or the store
    /// stopped first (the write may then be lost with the next power loss).
    pub async fn wait(self) -> Result<(), StoreError> {
        use tokio::sync::oneshot::error::TryRecvError;
        let stopped = || StoreError::Unavailable("the store stopped before the write was on disk".into());
        let Some((mut rx, demand)) = self.0 else { return Ok(()) };
        match rx.try_recv() {
            Ok(r) => return r.map(|_| ()),
            Err(TryRecvError::Closed) => return Err(stopped()),
            Err(TryRecvError::Empty) => demand(),
        }
        match rx.await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(stopped()),
        }
    }
}

/// Leases: written pending before a plugin creates anything, then moved
/// by conditional updates (`WHERE state IN ...`) so racing actors never
/// move one backwards.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Records a new lease in state `pending`. On a shared store (PostgreSQL)
    /// the row carries this replica's claim, renewed by its heartbeat, so a
    /// pending lease whose replica died is orphaned once the claim lapses.
    ///
    /// Returns once the row is committed: visible, and kept through a crash
    /// of lessor. The [`OnDisk`] it returns resolves once the row is also on
    /// disk: SQLite starts that sync at the commit (or up to `within` later
    /// with [`insert_pending_within`](Self::insert_pending_within)), so it
    /// runs while the plugin creates the credential, and the caller waits
    /// for it before
    /// returning the credential (a power loss before then can lose the row;
    /// what it named is a vendor object whose secret nobody received, the
    /// reconciler's stray). PostgreSQL waits for its own flush, as for
    /// every write, and returns an `OnDisk` that is already resolved.
    async fn insert_pending(&self, lease: &Lease) -> Result<OnDisk, StoreError>;

    /// [`insert_pending`](Self::insert_pending) for a caller that will not
    /// wait for the row to be on disk for about `within` (its vendor call
    /// takes about that long): a backend that syncs apart from its commits
    /// may put the sync off that long, or until the [`OnDisk`] is awaited,
    /// so that other writes share it. By default `insert_pending`.
    async fn insert_pending_within(&self, lease: &Lease, within: std::time::Duration) -> Result<OnDisk, StoreError> {
        let _ = within;
        self.insert_pending(lease).await
    }

    /// `pending` -> `active` with the plugin's handle. False if the lease was
    /// no longer pending (cleanup got there first).
    async fn activate(&self, id: &LeaseId, handle: &Handle, expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        self.activate_at_version(id, handle, expires_at, None).await
    }

    /// `pending` -> `active` with the plugin's handle and the root
    /// credential version it issued under. False if the lease was no longer
    /// pending, or the orphan sweep has taken it ([`LeaseStore::mark_orphaned`]).
    ///
    /// Returns once committed: kept through a crash of lessor. SQLite syncs
    /// it right after without waiting: a power loss before that sync leaves
    /// the lease `pending` on disk (its [`OnDisk`] resolved before the
    /// credential left), and recovery revokes it like any issue cut short,
    /// so the credential ends early and is never orphaned. PostgreSQL waits
    /// for its flush.
    async fn activate_at_version(
        &self,
        id: &LeaseId,
        handle: &Handle,
        expires_at: OffsetDateTime,
        root_version: Option<i64>,
    ) -> Result<bool, StoreError>;

    async fn get(&self, id: &LeaseId) -> Result<Option<Lease>, StoreError>;

    async fn list(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError>;

    /// Sets a new expiry on an `active` lease that has not expired by `now`
    /// (nor been scheduled for revocation). False otherwise: a lease past its
    /// expiry is over even before the worker sweeps it.
    async fn renew(&self, id: &LeaseId, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<bool, StoreError>;

    /// A live lease was taken back: moves it to the reason's final state.
    /// False if it had already ended.
    async fn finish(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError>;

    /// The orphan sweep takes a `pending` lease before revoking it
    /// (`end_reason` = `orphaned`): from then on activation refuses it, so a
    /// credential the issue creates meanwhile is revoked by the issue, never
    /// handed out and then revoked under the client. False if the lease is
    /// no longer pending (activated meanwhile: not an orphan).
    async fn mark_orphaned(&self, id: &LeaseId) -> Result<bool, StoreError>;

    /// A live lease whose plugin cannot revoke was asked to end for `reason`:
    /// state `expired` (it ends by itself), `end_reason` = `reason`, so what
    /// was asked stays on record ([`Lease::unrevocable`]). False if it had
    /// already ended.
    async fn finish_unrevocable(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError>;

    /// A revocation failed: `revoke_failed`, attempts + 1, retry at `retry_at`.
    async fn record_failure(
        &self,
        id: &LeaseId,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// A credential was created for a lease that had already ended (revoked
    /// or swept while the plugin was issuing) and taking it back failed: the
    /// lease becomes `revoke_failed` again with the credential's handle, so
    /// the worker retries it. The one move out of an ended state: the
    /// record must not say "ended" while a credential lives.
    async fn record_late_failure(
        &self,
        id: &LeaseId,
        handle: &Handle,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Retention: deletes at most `limit` ended leases (`revoked`,
    /// `expired`) that ended before `before`, and then bulk revocation jobs
    /// created before `before` none of whose leases is left. Returns how
    /// many leases it deleted. Live leases are never touched. (The one place
    /// ended leases are deleted: hook here to keep counts of ended rows.)
    async fn prune_ended(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError>;

    /// Asks for a live lease to be revoked as soon as the worker can
    /// (bulk revocation): makes it due now with the given reason.
    async fn schedule_revocation(&self, filter: &LeaseFilter, now: OffsetDateTime) -> Result<u64, StoreError>;

    /// Leases that need revoking now: active past expiry, pending created
    /// before `pending_cutoff`, failed whose retry is due. At most `limit`
    /// per connection (the role's part before `/`), oldest first within
    /// each, round-robin across connections (each connection's oldest, then
    /// each one's second, ...): one connection's backlog never keeps
    /// another's due leases out. Expiry and retries are due by the caller's
    /// `now`; a pending lease is orphaned once older than `now -
    /// pending_cutoff` by both the caller's clock and the database's. PostgreSQL also hands out at
    /// once a pending lease whose issuing replica's claim lapsed (the
    /// replica is gone). A row that does not decode is set aside by id (logged,
    /// counted), never failing the batch.
    async fn due(&self, now: OffsetDateTime, pending_cutoff: OffsetDateTime, limit: u32)
        -> Result<Vec<DueLease>, StoreError> {
        self.due_except(now, pending_cutoff, limit, &[]).await
    }

    /// [`LeaseStore::due`] leaving out the connections in `skip` (the expiry
    /// worker's busy lanes): nothing of theirs is returned, locked or
    /// claimed again while their work is in hand.
    async fn due_except(
        &self,
        now: OffsetDateTime,
        pending_cutoff: OffsetDateTime,
        limit: u32,
        skip: &[String],
    ) -> Result<Vec<DueLease>, StoreError>;

    /// When the next lease falls due (expiry or retry), if any.
    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Live leases by role, plugin and state, from the counts the store
    /// keeps with each lease change (PostgreSQL: tables changed in the same
    /// transaction; SQLite: its writer's, in memory, changed at the commit).
    async fn counts(&self) -> Result<LeaseCounts, StoreError>;

    /// Active leases whose expiry is at or before `before`, to the minute
    /// (due ones not yet revoked included), by role and plugin. Reads the
    /// per-minute counts, O(roles x minutes in the window).
    async fn expiring(&self, before: OffsetDateTime) -> Result<RoleCounts, StoreError>;

    /// The most live leases any one workload (issuer + subject) holds; 0
    /// when there are none. What the per-workload quota is closest to.
    async fn max_live_per_owner(&self) -> Result<i64, StoreError>;

    /// Live leases (pending, active, revoke_failed) matching `filter`'s
    /// role / issuer + subject (all when both are unset).
    async fn count_live(&self, filter: &LeaseFilter) -> Result<i64, StoreError>;

    /// The quotas' three counts (the workload `issuer` + `subject`, `role`,
    /// all), from the counts in one read: each equals `count_live`
    /// with the matching filter.
    async fn quota_counts(&self, issuer: &str, subject: &str, role: &str) -> Result<QuotaCounts, StoreError>;

    /// The live lease that has waited longest for its revocation: active
    /// past expiry, scheduled by a bulk job, or failed and retrying. For an
    /// SRE's "is the worker keeping up?".
    async fn oldest_overdue(&self, now: OffsetDateTime) -> Result<Option<Lease>, StoreError>;
}
