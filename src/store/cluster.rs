//! The replicas sharing a store (heartbeats, their expiry-work claims) and
//! small shared metadata (the seal check). [`ClusterStore`] is the cluster
//! part of every [`Store`](super::Store).
//!
//! Which clock decides: `heartbeat` (`seen_at`, claim extension) and
//! `replicas` (`within`) use the database's clock on both backends (SQLite's
//! `'now'`, PostgreSQL's `clock_timestamp()`), so a replica with a skewed
//! clock is neither listed as gone nor kept alive by it; the others read no
//! clock; `stray_first_seen` records the caller's clock (the reconciler
//! compares it with its own).
//!
//! Must not import: http, policy, identity.

use async_trait::async_trait;

use super::StoreError;

/// A lessor process on this store, as its last heartbeat recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The store's id for the process (`ClusterStore::replica_id`).
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// lessor version.
    pub version: String,
    /// Version (content hash) of the policy set it decides with.
    pub policy_version: String,
    pub started_at_ms: i64,
    /// Last heartbeat, unix ms by the database's clock (SQLite's or
    /// PostgreSQL's), so replicas' clocks never need to agree.
    pub seen_at_ms: i64,
}

/// A store-wide lock held for one pass of work that no two replicas may do
/// at once ([`ClusterStore::try_lock`]). Give it back with
/// [`StoreLock::release`]; dropped instead (a panic, a cancelled task) it is
/// released as the backend can (PostgreSQL: the transaction holding it
/// rolls back when its connection is next used or closed; a dead process's
/// session ends).
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

/// Replicas and shared metadata.
#[async_trait]
pub trait ClusterStore: Send + Sync {
    /// This process's id among the replicas on the store (its heartbeat
    /// row, and on PostgreSQL its expiry-work claims).
    fn replica_id(&self) -> &str;

    /// Takes the store-wide lock `name` without waiting (`None`: another
    /// replica holds it), for work one replica at a time must do (the
    /// reconciler's pass). SQLite: this process is the store's only user,
    /// so it is always taken (callers serialize within the process).
    /// PostgreSQL: a transaction-scoped advisory lock, held by one pooled
    /// connection until released, and by nobody once that session ends.
    /// No clock.
    async fn try_lock(&self, name: &str) -> Result<Option<StoreLock>, StoreError>;

    /// Records this replica as alive with what it runs (`seen_at_ms` is set
    /// by the store), and extends the expiry-work claims it holds, so work in
    /// hand is never taken over while the process lives, however slow.
    async fn heartbeat(&self, r: &Replica) -> Result<(), StoreError>;

    /// Replicas whose last heartbeat is at most `within` old, by id.
    async fn replicas(&self, within: std::time::Duration) -> Result<Vec<Replica>, StoreError>;

    /// Removes this replica's row (clean shutdown).
    async fn remove_replica(&self) -> Result<(), StoreError>;

    async fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError>;

    async fn meta_put_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError>;

    /// The reconciler's memory of a stray without a lease row: records
    /// `now_ms` (unix ms, the caller's clock) as when `object` of
    /// `connection` was first seen, unless a time is recorded already, and
    /// returns the recorded one. Kept across restarts and replicas, so a
    /// stray's grace period is counted once.
    async fn stray_first_seen(&self, connection: &str, object: &str, now_ms: i64) -> Result<i64, StoreError>;

    /// The objects of `connection` with a recorded first-seen time, in name
    /// order, at most `limit`.
    async fn stray_objects(&self, connection: &str, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Forgets the first-seen times of `objects` of `connection` (revoked,
    /// or no longer at the vendor). Unknown ones are ignored.
    async fn stray_forget(&self, connection: &str, objects: &[String]) -> Result<(), StoreError>;
}
