//! The lease store: leases, plugin state and small shared metadata.
//!
//! `Store` is the one interface; `sqlite.rs` is the embedded default and a
//! PostgreSQL backend implements the same trait with the same migrations
//! (numbers and names; a test checks). The backend is chosen from an explicit
//! URL scheme; unknown schemes are refused.
//!
//! Invariants:
//! - A lease row is written (pending) before a plugin creates anything.
//! - State transitions are conditional updates (`WHERE state IN ...`), so two
//!   actors racing on one lease cannot move it backwards.
//! - No issued secret is ever stored; plugin secrets arrive here sealed.
//!
//! Must not import: http, policy, identity.

use std::collections::BTreeMap;
use std::str::FromStr;

use async_trait::async_trait;
use lessor_plugin::{Handle, LeaseId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub mod admin_tokens;
pub mod sessions;
pub mod sqlite;
pub mod postgres;
mod rows;
pub mod state;

pub use admin_tokens::{AdminToken, AdminTokenStore};
pub use sessions::{Session, SessionStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{0}` has an unknown scheme; use sqlite://<path> or postgres://...")]
    UnknownScheme(String),
    #[error("store is locked by another lessor process ({0}); SQLite serves one process, use PostgreSQL for replicas")]
    Locked(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0} already exists")]
    Conflict(String),
}

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

/// Which leases a bulk revocation takes (all given conditions must hold).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RevokeFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Mapped claims that must be equal (e.g. `repository` = `acme/api`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// Only leases issued at or after this instant (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_after_ms: Option<i64>,
}

impl RevokeFilter {
    pub fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.issuer.is_none()
            && self.subject.is_none()
            && self.claims.is_empty()
            && self.issued_after_ms.is_none()
    }
}

/// A lessor process on this store, as its last heartbeat recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The store's id for the process (`Store::replica_id`).
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// lessor version.
    pub version: String,
    /// Version (content hash) of the policy set it decides with.
    pub policy_version: String,
    pub started_at_ms: i64,
    /// Last heartbeat, unix ms by the store's clock (the database's for
    /// PostgreSQL, so replicas' clocks never need to agree).
    pub seen_at_ms: i64,
}

/// A bulk revocation job and its progress, counted from its leases.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub kind: String,
    pub filter: RevokeFilter,
    pub created_by: String,
    pub created_at_ms: i64,
    /// Live leases the job took.
    pub total: i64,
    /// Of those, revoked (or ended) so far.
    pub done: i64,
    /// Waiting for their revocation.
    pub pending: i64,
    /// Whose revocation failed and is being retried.
    pub failing: i64,
    /// Ended without being revoked: their plugin cannot revoke, so each
    /// credential stays valid until its own expiry (not counted in `done`).
    pub unrevocable: i64,
    /// The latest expiry among those (unix ms): when the last of them ends.
    pub unrevocable_until_ms: Option<i64>,
}

impl JobStatus {
    /// Adds `n` of the job's leases in `state` to the progress.
    pub fn count(&mut self, state: &str, n: i64) -> Result<(), StoreError> {
        match LeaseState::from_str(state).map_err(StoreError::Corrupt)? {
            LeaseState::Revoked | LeaseState::Expired => self.done += n,
            LeaseState::Pending | LeaseState::Active => self.pending += n,
            LeaseState::RevokeFailed => self.failing += n,
        }
        Ok(())
    }

    /// Adds `n` of the job's leases that ended unrevoked (see
    /// [`Lease::unrevocable`]), the latest of them expiring at `until_ms`.
    pub fn count_unrevocable(&mut self, n: i64, until_ms: Option<i64>) {
        self.unrevocable += n;
        self.unrevocable_until_ms = self.unrevocable_until_ms.max(until_ms);
    }
}

/// Work the expiry worker must do for one lease.
#[derive(Debug, Clone)]
pub struct DueLease {
    pub lease: Lease,
    pub reason: EndReason,
}


/// Where a version of a connection's root secret is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretState {
    /// Stored, not (yet) used; verified and approved before it may switch.
    Candidate,
    /// New issuance uses it. At most one per connection.
    Active,
    /// The previous active one: kept until `retiring_until` so leases issued
    /// under it can be revoked, and so a rollback can return to it.
    Retiring,
    /// Gone for good (the ciphertext stays for the record).
    Retired,
}

impl SecretState {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretState::Candidate => "candidate",
            SecretState::Active => "active",
            SecretState::Retiring => "retiring",
            SecretState::Retired => "retired",
        }
    }
}

impl FromStr for SecretState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [SecretState::Candidate, SecretState::Active, SecretState::Retiring, SecretState::Retired]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown secret state `{s}`"))
    }
}

/// One version of a connection's root secret as stored: encrypted, with
/// who set, verified, approved and activated it.
#[derive(Clone)]
pub struct SecretVersion {
    pub connection: String,
    pub version: i64,
    pub state: SecretState,
    /// `nonce | AES-256-GCM(secret)` under the version's data key.
    pub ciphertext: Vec<u8>,
    /// The data key, wrapped by the key-encryption key `kek_id`.
    pub wrapped_dek: Vec<u8>,
    pub kek_id: String,
    /// A keyed hash prefix of the secret (8 hex digits; empty for versions
    /// stored before fingerprints were keyed).
    pub fingerprint: String,
    pub set_by: String,
    pub reason: String,
    pub set_at: OffsetDateTime,
    pub verified_ok: Option<bool>,
    /// The verification result (JSON: ok, message, identity, details, warnings).
    pub verification: Option<serde_json::Value>,
    pub verified_at: Option<OffsetDateTime>,
    pub approved_by: Option<String>,
    pub approved_at: Option<OffsetDateTime>,
    pub activated_by: Option<String>,
    pub activated_at: Option<OffsetDateTime>,
    pub retiring_until: Option<OffsetDateTime>,
}

impl std::fmt::Debug for SecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVersion")
            .field("connection", &self.connection)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("kek_id", &self.kek_id)
            .field("set_by", &self.set_by)
            .finish_non_exhaustive()
    }
}

/// Switches a connection's active root secret to `version` (activate or
/// rollback): in one transaction the active one becomes `retiring` until
/// `retiring_until` and `version` (in state `from`) becomes active.
#[derive(Debug, Clone)]
pub struct SecretSwitch {
    pub connection: String,
    pub version: i64,
    /// `Candidate` (activate: must be verified ok, and approved when
    /// `need_approval`) or `Retiring` (rollback: must not have run out).
    pub from: SecretState,
    pub need_approval: bool,
    pub by: String,
    pub at: OffsetDateTime,
    pub retiring_until: OffsetDateTime,
}

/// A data key re-wrapped under a new key-encryption key (`lessor rekey`).
#[derive(Debug, Clone)]
pub struct Rewrap {
    pub connection: String,
    pub version: i64,
    pub old_kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub kek_id: String,
}

/// A store-wide lock held for one pass of work that no two replicas may do
/// at once ([`Store::try_lock`]). Give it back with [`StoreLock::release`];
/// dropped instead (a panic, a cancelled task) it is released as the
/// backend can (PostgreSQL: the transaction holding it rolls back when its
/// connection is next used or closed; a dead process's session ends).
pub struct StoreLock {
    held: Option<Box<dyn LockHolder>>,
}

/// What a backend keeps while a [`StoreLock`] is held.
#[async_trait]
pub trait LockHolder: Send {
    async fn release(self: Box<Self>);
}

impl StoreLock {
    /// A lock that needs nothing from the store (a store one process owns).
    pub fn local() -> StoreLock {
        StoreLock { held: None }
    }

    pub(crate) fn held(h: Box<dyn LockHolder>) -> StoreLock {
        StoreLock { held: Some(h) }
    }

    pub async fn release(mut self) {
        if let Some(h) = self.held.take() {
            h.release().await;
        }
    }
}

/// Counts for metrics: (role, plugin, state) -> n.
pub type LeaseCounts = Vec<(String, String, LeaseState, i64)>;

/// Counts for metrics: (role, plugin) -> n.
pub type RoleCounts = Vec<(String, String, i64)>;

/// Everything lessor keeps. Admin tokens and Vault API sessions are
/// separate traits ([`AdminTokenStore`], [`SessionStore`]) every store
/// implements.
#[async_trait]
pub trait Store: AdminTokenStore + SessionStore + Send + Sync + 'static {
    /// Short backend name for logs (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Whether this process is the store's only user (SQLite's lock file):
    /// then every lease left pending by an earlier process is orphaned.
    fn exclusive(&self) -> bool;

    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a new lease in state `pending`. On a shared store (PostgreSQL)
    /// the row carries this replica's claim, renewed by its heartbeat, so a
    /// pending lease whose replica died is orphaned once the claim lapses.
    async fn insert_pending(&self, lease: &Lease) -> Result<(), StoreError>;

    /// `pending` -> `active` with the plugin's handle. False if the lease was
    /// no longer pending (cleanup got there first).
    async fn activate(&self, id: &LeaseId, handle: &Handle, expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        self.activate_at_version(id, handle, expires_at, None).await
    }

    /// `pending` -> `active` with the plugin's handle and the root
    /// credential version it issued under. False if the lease was no longer
    /// pending, or the orphan sweep has taken it ([`Store::mark_orphaned`]).
    async fn activate_at_version(
        &self,
        id: &LeaseId,
        handle: &Handle,
        expires_at: OffsetDateTime,
        root_version: Option<i64>,
    ) -> Result<bool, StoreError>;

    // Managed root credentials (`connection_secrets`). Ciphertexts are opaque here.

    /// Stores a new version. `Conflict` if (connection, version) exists.
    async fn secret_insert(&self, v: &SecretVersion) -> Result<(), StoreError>;

    /// Every version of `connection` (all connections when `None`), by
    /// connection and version.
    async fn secret_versions(&self, connection: Option<&str>) -> Result<Vec<SecretVersion>, StoreError>;

    /// The active version of `connection` (one indexed lookup; checked
    /// before each issue so replicas switch together).
    async fn secret_active_version(&self, connection: &str) -> Result<Option<i64>, StoreError>;

    /// Records a verification result on a version that is not retired.
    async fn secret_verified(
        &self,
        connection: &str,
        version: i64,
        ok: bool,
        result: &serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Records an approval of a candidate by someone other than its setter.
    /// False if it is no candidate or `by` set it.
    async fn secret_approve(&self, connection: &str, version: i64, by: &str, at: OffsetDateTime)
        -> Result<bool, StoreError>;

    /// Activation and rollback, in one transaction (see [`SecretSwitch`]):
    /// never two active versions, never none when the switch fails. False
    /// if `version` did not meet the conditions (nothing changed).
    async fn secret_switch(&self, s: &SecretSwitch) -> Result<bool, StoreError>;

    /// Retiring versions whose overlap ended become retired. Returns how many.
    async fn secret_retire_due(&self, now: OffsetDateTime) -> Result<u64, StoreError>;

    /// Replaces wrapped data keys (`lessor rekey`), all or none: each row
    /// must still be wrapped under its `old_kek_id`. False (nothing
    /// changed) if one was not.
    async fn secret_rewrap(&self, rows: &[Rewrap]) -> Result<bool, StoreError>;

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
    /// another's due leases out. PostgreSQL measures the pending age (`now -
    /// pending_cutoff`) with the database's clock, and also hands out at once
    /// a pending lease whose issuing replica's claim lapsed (the replica is
    /// gone). A row that does not decode is set aside by id (logged,
    /// counted), never failing the batch.
    async fn due(&self, now: OffsetDateTime, pending_cutoff: OffsetDateTime, limit: u32)
        -> Result<Vec<DueLease>, StoreError> {
        self.due_except(now, pending_cutoff, limit, &[]).await
    }

    /// [`Store::due`] leaving out the connections in `skip` (the expiry
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

    /// Live leases by role, plugin and state, from the counts table the
    /// store keeps in the same transaction as each lease change.
    async fn counts(&self) -> Result<LeaseCounts, StoreError>;

    /// Active leases whose expiry is at or before `before`, to the minute
    /// (due ones not yet revoked included), by role and plugin. Reads the
    /// per-minute counts table, O(roles x minutes in the window).
    async fn expiring(&self, before: OffsetDateTime) -> Result<RoleCounts, StoreError>;

    /// The most live leases any one workload (issuer + subject) holds; 0
    /// when there are none. What the per-workload quota is closest to.
    async fn max_live_per_owner(&self) -> Result<i64, StoreError>;

    /// Live leases (pending, active, revoke_failed) matching `filter`'s
    /// role / issuer + subject (all when both are unset).
    async fn count_live(&self, filter: &LeaseFilter) -> Result<i64, StoreError>;

    /// Records a bulk revocation job and schedules every live lease matching
    /// `filter` for revocation (due now, reason revoked, tagged with the
    /// job). Returns how many it took.
    async fn start_revoke_job(
        &self,
        _id: &str,
        _filter: &RevokeFilter,
        _created_by: &str,
        _now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        Err(StoreError::Unavailable(format!("bulk revocation jobs are not supported by the {} store yet", self.backend())))
    }

    /// A job's progress, or None if there is no such job.
    async fn job_status(&self, _id: &str) -> Result<Option<JobStatus>, StoreError> {
        Err(StoreError::Unavailable(format!("bulk revocation jobs are not supported by the {} store yet", self.backend())))
    }

    // Plugin state, per connection. Sealed values are opaque here.
    async fn state_get(&self, conn: &str, key: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError>;
    async fn state_put(&self, conn: &str, key: &str, value: &[u8], sealed: bool) -> Result<(), StoreError>;
    async fn state_put_if_absent(&self, conn: &str, key: &str, value: &[u8], sealed: bool)
        -> Result<bool, StoreError>;
    async fn state_list(&self, conn: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    async fn state_delete(&self, conn: &str, key: &str) -> Result<(), StoreError>;

    /// The live lease that has waited longest for its revocation: active
    /// past expiry, scheduled by a bulk job, or failed and retrying. For an
    /// SRE's "is the worker keeping up?".
    async fn oldest_overdue(&self, now: OffsetDateTime) -> Result<Option<Lease>, StoreError>;

    /// This process's id among the replicas on the store (its heartbeat
    /// row, and on PostgreSQL its expiry-work claims).
    fn replica_id(&self) -> &str;

    /// Records this replica as alive with what it runs (`seen_at_ms` is set
    /// by the store), and extends the expiry-work claims it holds, so work in
    /// hand is never taken over while the process lives, however slow.
    async fn heartbeat(&self, r: &Replica) -> Result<(), StoreError>;

    /// Replicas whose last heartbeat is at most `within` old, by id.
    async fn replicas(&self, within: std::time::Duration) -> Result<Vec<Replica>, StoreError>;

    /// Removes this replica's row (clean shutdown).
    async fn remove_replica(&self) -> Result<(), StoreError>;

    /// Takes the store-wide lock `name` without waiting (`None`: another
    /// replica holds it), for work one replica at a time must do (the
    /// reconciler's pass). SQLite: this process is the store's only user,
    /// so it is always taken (callers serialize within the process).
    /// PostgreSQL: a transaction-scoped advisory lock, held by one pooled
    /// connection until released, and by nobody once that session ends.
    async fn try_lock(&self, name: &str) -> Result<Option<StoreLock>, StoreError>;

    // Small shared metadata (seal check).
    async fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn meta_put_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError>;
}

/// The extra condition on the version a [`SecretSwitch`] makes active, with
/// its `?`/`$n`-free integer parameters appended in order: the SQL uses `?`;
/// PostgreSQL callers renumber.
/// Live leases by role, plugin and state from the trigger-kept
/// `lease_counts` table (migration 0006): O(roles x states x shards) rows,
/// whatever the number of leases. Same SQL on both backends.
pub(crate) const COUNTS_SQL: &str = "SELECT role, plugin, state, CAST(SUM(n) AS BIGINT) AS n FROM lease_counts \
     GROUP BY role, plugin, state HAVING SUM(n) <> 0";

/// The most live leases one workload holds, from `owner_counts` (indexed on `n`).
pub(crate) const MAX_OWNER_SQL: &str = "SELECT COALESCE(MAX(n), 0) AS n FROM owner_counts";

/// Active leases by role whose expiry minute is at or before the bound
/// (placeholder `ph`), from `lease_expiry_counts`.
pub(crate) fn expiring_sql(ph: &str) -> String {
    format!(
        "SELECT role, plugin, CAST(SUM(n) AS BIGINT) AS n FROM lease_expiry_counts \
         WHERE minute <= {ph} GROUP BY role, plugin HAVING SUM(n) <> 0"
    )
}

/// The `lease_expiry_counts` bucket of an instant (unix ms / 60000).
pub(crate) fn expiry_minute(t: OffsetDateTime) -> i64 {
    to_ms(t).div_euclid(60_000)
}

/// SQL (and text binds) answering `count_live` from the counts tables when
/// the filter is by role only, by owner only, or empty; `None` otherwise.
/// `ph1`/`ph2` are the backend's first two placeholders.
pub(crate) fn fast_count_sql(f: &LeaseFilter, ph1: &str, ph2: &str) -> Option<(String, Vec<String>)> {
    match (&f.role, &f.issuer, &f.subject) {
        (None, None, None) => {
            Some(("SELECT COALESCE(CAST(SUM(n) AS BIGINT), 0) AS n FROM lease_counts".into(), vec![]))
        }
        (Some(role), None, None) => Some((
            format!("SELECT COALESCE(CAST(SUM(n) AS BIGINT), 0) AS n FROM lease_counts WHERE role = {ph1}"),
            vec![role.clone()],
        )),
        (None, Some(issuer), Some(subject)) => Some((
            format!(
                "SELECT COALESCE(MAX(n), 0) AS n FROM owner_counts WHERE issuer = {ph1} AND subject = {ph2}"
            ),
            vec![issuer.clone(), subject.clone()],
        )),
        _ => None,
    }
}

pub(crate) fn switch_condition(s: &SecretSwitch) -> (String, Vec<i64>) {
    match s.from {
        SecretState::Retiring => ("AND retiring_until > ?".into(), vec![to_ms(s.at)]),
        _ if s.need_approval => ("AND verified_ok = TRUE AND approved_by IS NOT NULL".into(), vec![]),
        _ => ("AND verified_ok = TRUE".into(), vec![]),
    }
}

/// Opens the store named by `url`: `sqlite://<path>` (one process) or
/// `postgres://...` (several replicas share it).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_with(url, postgres::DEFAULT_CLAIM_TIMEOUT).await
}

/// [`open`], with the claim timeout a PostgreSQL store gives expiry work
/// (`leases.claim_timeout`); SQLite serves one process and needs none.
pub async fn open_with(url: &str, claim_timeout: std::time::Duration) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(std::sync::Arc::new(sqlite::SqliteStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(postgres::PgStore::open(url).await?.with_claim_timeout(claim_timeout)));
    }
    Err(StoreError::UnknownScheme(redact_url(url)))
}

/// A URL fit for messages: any `user:password@` is replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_in_messages_hide_credentials() {
        assert_eq!(super::redact_url("postgress://lessor:s3cret@db:5432/x"), "postgress://***@db:5432/x");
        assert_eq!(super::redact_url("sqlite:///var/lib/lessor.db"), "sqlite:///var/lib/lessor.db");
    }

    #[test]
    fn migrations_match_across_backends() {
        let names = |dir: &str| {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let sqlite = names(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/migrations/sqlite"));
        let pg = names(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/migrations/postgres"));
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, pg, "SQLite and PostgreSQL migrations must have the same numbers and names");
    }
}
