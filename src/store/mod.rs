//! The lease store: leases, bulk revocation jobs, root-credential versions,
//! plugin state, replicas and metadata, admin tokens, Vault API sessions,
//! person sessions and customer API tokens.
//!
//! `Store` bundles one focused trait per part ([`LeaseStore`], [`JobStore`],
//! [`SecretStore`], [`PluginStateStore`], [`ClusterStore`],
//! [`AdminTokenStore`], [`SessionStore`], [`PersonSessionStore`], [`CustomerTokenStore`]), each in its own module with its
//! types; methods on `dyn Store` need no import. `sqlite.rs` is the embedded
//! default and `postgres.rs` implements the same traits (one child module
//! per trait) with the same migrations (numbers and names; a test checks). The backend is chosen from an explicit
//! URL scheme; unknown schemes are refused.
//!
//! Invariants:
//! - A lease row is written (pending) before a plugin creates anything.
//! - State transitions are conditional updates (`WHERE state IN ...`), so two
//!   actors racing on one lease cannot move it backwards.
//! - No issued secret is ever stored; plugin secrets arrive here sealed.
//!
//! Must not import: http, policy, identity, lease, connections, audit, config,
//! principal (everything above keeps its data here, not the other way round).

use async_trait::async_trait;
use time::OffsetDateTime;

pub mod admin_tokens;
pub mod cluster;
pub mod customer_tokens;
pub mod jobs;
pub mod leases;
pub mod person_sessions;
pub mod plugin_state;
pub mod postgres;
mod rows;
pub mod secrets;
pub mod sessions;
pub mod sqlite;
pub mod state;

pub use admin_tokens::{AdminToken, AdminTokenStore};
pub use customer_tokens::{AccountTokenCounts, CustomerToken, CustomerTokenStore, DayCount, TokenUse, TokenWarning};
pub use cluster::{ClusterStore, LockHolder, Replica, StoreLock};
pub use jobs::{JobStatus, JobStore, RevokeFilter};
pub use leases::{connection_of, DueLease, EndReason, Lease, LeaseCounts, LeaseFilter, LeaseState, LeaseStore, OnDisk, QuotaCounts, RoleCounts};
pub use person_sessions::{PersonSession, PersonSessionStore};
pub use plugin_state::PluginStateStore;
pub use secrets::{Rewrap, SecretState, SecretStore, SecretSwitch, SecretVersion};
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


/// Everything lessor keeps: one bundle of the focused traits, so a caller
/// holds one `Arc<dyn Store>` and imports the part it uses
/// ([`LeaseStore`], [`JobStore`], [`SecretStore`], [`PluginStateStore`],
/// [`ClusterStore`], [`AdminTokenStore`], [`SessionStore`]).
#[async_trait]
pub trait Store:
    LeaseStore
    + JobStore
    + SecretStore
    + PluginStateStore
    + ClusterStore
    + AdminTokenStore
    + SessionStore
    + PersonSessionStore
    + CustomerTokenStore
    + Send + Sync + 'static
{
    /// Short backend name for logs (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Whether this process is the store's only user (SQLite's lock file):
    /// then every lease left pending by an earlier process is orphaned.
    fn exclusive(&self) -> bool;

    async fn ping(&self) -> Result<(), StoreError>;

    /// Ends the store at shutdown, once nothing writes any more: queued
    /// writes finish, then connections close (SQLite: the writer thread has
    /// ended and the database files are settled when this returns). Every
    /// later call fails with `Unavailable`.
    async fn close(&self);
}

/// The extra condition on the version a [`SecretSwitch`] makes active, with
/// its `?`/`$n`-free integer parameters appended in order: the SQL uses `?`;
/// PostgreSQL callers renumber.
/// Live leases by role, plugin and state from the trigger-kept
/// `lease_counts` table (migration 0009): O(roles x states x shards) rows,
/// whatever the number of leases. PostgreSQL only (SQLite's counts are in
/// its writer's memory since migration 0015).
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

/// [`LeaseStore::quota_counts`] in one statement: owner (`ph1` issuer,
/// `ph2` subject), role (`ph3`) and total, from the counts tables.
pub(crate) fn quota_counts_sql(ph1: &str, ph2: &str, ph3: &str) -> String {
    format!(
        "SELECT (SELECT COALESCE(MAX(n), 0) FROM owner_counts WHERE issuer = {ph1} AND subject = {ph2}) AS owner, \
         (SELECT COALESCE(CAST(SUM(n) AS BIGINT), 0) FROM lease_counts WHERE role = {ph3}) AS role_n, \
         (SELECT COALESCE(CAST(SUM(n) AS BIGINT), 0) FROM lease_counts) AS total"
    )
}

pub(crate) fn quota_counts_of<R: sqlx::Row>(row: &R) -> Result<QuotaCounts, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(QuotaCounts { owner: row.try_get("owner")?, role: row.try_get("role_n")?, total: row.try_get("total")? })
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
