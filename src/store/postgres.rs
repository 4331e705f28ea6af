//! PostgreSQL backend: one store shared by several lessor replicas. Same
//! schema (migrations with the same numbers and names as SQLite), same
//! semantics; the one addition is that `due()` claims what it hands out, so
//! each due lease goes to one replica's expiry worker.
//!
//! Claims (`claimed_by`, `claimed_until`, migration 0002): `due()` locks the
//! due rows `FOR UPDATE SKIP LOCKED` and marks them with this store's claimer
//! id until the database clock passes `now + claim_timeout`. Other replicas
//! skip a claimed row until then; the claiming store still sees its own
//! claims (so one process behaves exactly as with SQLite: asking twice gives
//! the same answer). Recording the outcome (`finish`, `record_failure`)
//! releases the claim; a replica that dies mid-batch leaves claims that time
//! out, and another replica takes the work. Claims never touch
//! `next_attempt_at`, which stays what the API shows (the retry time).
//!
//! Pending leases are claimed too, by the replica issuing them, from insert
//! to activation (the heartbeat renews it): a pending lease whose claim
//! lapsed belongs to a replica that is gone and is orphaned at once; the
//! `pending_grace` age is measured with the database's clock.
//!
//! Must not import: http, policy, identity.
//!
//! This file holds the pool, the claim SQL and shared helpers; each part of
//! the store is implemented in a child module (`leases.rs`, `jobs.rs`,
//! `secrets.rs`, `plugin_state.rs`, `cluster.rs`, `admin_tokens.rs`,
//! `sessions.rs`).

use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::{Handle, LeaseId};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use time::OffsetDateTime;

use super::{
    from_ms, to_ms, DueLease, EndReason, JobStatus, Lease, LeaseCounts, LeaseFilter, RevokeFilter, RoleCounts,
    Store, StoreError,
};
use super::{ClusterStore, JobStore, LeaseStore, PluginStateStore, SecretStore};

/// `?` inside a transaction: on error, roll back and wait for it before the
/// error goes to the caller. Dropping a sqlx `Transaction` only queues its
/// ROLLBACK (a task spawned when the connection returns to the pool sends
/// it), and PostgreSQL sends a statement's error before it aborts the
/// transaction: either way the caller could act (and find rows still
/// locked, skipped by `SKIP LOCKED`) before the transaction is over.
/// Waiting for the ROLLBACK's reply orders everything after the abort.
macro_rules! tx_try {
    ($tx:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Err(crate::store::postgres::abort($tx, interpret_error(e)).await),
        }
    };
}

/// Ends a failed transaction (see [`tx_try`]) and hands back its error.
async fn abort(tx: sqlx::Transaction<'_, Postgres>, e: StoreError) -> StoreError {
    if let Err(r) = tx.rollback().await {
        // The connection is broken: the server ends the transaction with it.
        tracing::debug!(error = %r, "rolling back a failed transaction failed");
    }
    e
}

mod admin_tokens;
mod cluster;
mod customer_tokens;
mod jobs;
mod leases;
mod person_sessions;
mod plugin_state;
mod secrets;
mod sessions;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/postgres");

/// How long a lease handed out by `due()` stays reserved for this replica
/// when it records no outcome (it died, or the store was unreachable).
/// Longer than a revocation normally takes, short enough that a dead
/// replica's work is picked up soon.
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

const LEASE_COLUMNS: &str = "id, role, plugin, issuer, subject, claims, scopes, policies, state, issued_at, \
     expires_at, max_expires_at, handle, attempts, last_error, next_attempt_at, end_reason, ended_at, root_version";

const LIVE: &str = "('pending', 'active', 'revoke_failed')";

/// The database's clock in unix milliseconds: claims are compared across
/// replicas, so they use the one clock every replica shares.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Rows `due()` may hand to this store (`$4` is its claimer id): unclaimed,
/// claim timed out, or claimed by this store itself; never a row set aside
/// as undecodable (`$6`, an array of ids).
fn claimable() -> String {
    format!("(claimed_until IS NULL OR claimed_until <= {DB_NOW_MS} OR claimed_by = $4) AND NOT (leases.id = ANY($6))")
}

/// Which claimable `pending` rows are orphaned: issued more than the pending
/// grace (`$2` = `now - pending_cutoff`, ms) before the earlier of the
/// caller's `now` (`$1`) and the database's clock, i.e. older than the
/// grace by both clocks (SQLite's rule too: a replica whose clock runs
/// ahead orphans nothing early, nor one whose clock runs behind); or at
/// once when another replica's claim on it lapsed (that replica is gone: its
/// heartbeat renews the claims of the leases it is issuing).
fn orphaned_pending() -> String {
    format!("(issued_at < LEAST($1, {DB_NOW_MS}) - $2 OR (claimed_by <> $4 AND claimed_until <= {DB_NOW_MS}))")
}

/// `due()`: role by role (the roles found by a loose index scan of
/// `leases_role`, one probe each; those of the connections in `$7` left
/// out), the four kinds of due lease (expired, scheduled, orphaned pending,
/// failed and due for a retry) over the rows this store may claim, each an
/// ordered search of a role-led index that stops at twice the limit
/// (migration 0016: a round costs the same with ten or a million leases
/// due; twice, so rows another replica's `due()` holds locked at that
/// moment rarely leave this one empty-handed), reading only `(id, role,
/// due_at)`; de-duplicated (an active lease can be both expired and
/// scheduled: it counts from the earlier).
/// Then, for each connection (the role's part before `/`), its
/// oldest `limit` are locked `FOR UPDATE SKIP LOCKED` (skipping rows another
/// replica's `due()` holds, so concurrent replicas take different rows),
/// checked again (still live, due and claimable), claimed and returned
/// round-robin across connections: one connection's backlog never keeps
/// another's due leases out. One statement. `$1` now, `$2` pending grace in ms (pending leases orphaned by [`orphaned_pending`]),
/// `$3` limit per connection, `$4` claimer id, `$5` claim timeout in ms,
/// `$6` ids set aside as undecodable, `$7` connections to leave out (text[]).
fn due_sql() -> String {
    let c = claimable();
    let orphaned = orphaned_pending();
    format!(
        "WITH RECURSIVE roles AS (
           SELECT MIN(role) AS role FROM leases
           UNION ALL
           SELECT (SELECT MIN(l.role) FROM leases l WHERE l.role > roles.role) FROM roles WHERE roles.role IS NOT NULL
         ), u AS (
           SELECT x.id, x.role, x.due_at FROM roles CROSS JOIN LATERAL (
             (SELECT id, role, expires_at AS due_at FROM leases
                WHERE leases.role = roles.role AND state = 'active' AND expires_at <= $1 AND {c}
                ORDER BY expires_at LIMIT $3 * 2)
             UNION ALL
             (SELECT id, role, next_attempt_at FROM leases
                WHERE leases.role = roles.role AND state = 'active' AND next_attempt_at <= $1 AND {c}
                ORDER BY next_attempt_at LIMIT $3 * 2)
             UNION ALL
             (SELECT id, role, issued_at FROM leases
                WHERE leases.role = roles.role AND state = 'pending' AND {orphaned} AND {c}
                ORDER BY issued_at LIMIT $3 * 2)
             UNION ALL
             (SELECT id, role, next_attempt_at FROM leases
                WHERE leases.role = roles.role AND state = 'revoke_failed' AND next_attempt_at <= $1 AND {c}
                ORDER BY next_attempt_at LIMIT $3 * 2)
           ) x
           WHERE roles.role IS NOT NULL AND split_part(roles.role, '/', 1) <> ALL($7)
         ), d AS MATERIALIZED (
           SELECT id, split_part(MIN(role), '/', 1) AS conn, MIN(due_at) AS due_at FROM u GROUP BY id
         ), conns AS (
           SELECT DISTINCT conn FROM d WHERE conn <> ALL($7)
         ), locked AS MATERIALIZED (
           SELECT x.id, x.conn, x.due_at FROM conns, LATERAL (
             SELECT leases.id, d.conn, d.due_at FROM d JOIN leases ON leases.id = d.id
               WHERE d.conn = conns.conn
                 AND ((state = 'active' AND (expires_at <= $1 OR next_attempt_at <= $1))
                      OR (state = 'pending' AND {orphaned})
                      OR (state = 'revoke_failed' AND next_attempt_at <= $1))
                 AND {c}
               ORDER BY d.due_at, d.id LIMIT $3
               FOR UPDATE OF leases SKIP LOCKED
           ) x
         ), ranked AS (
           SELECT id, due_at, ROW_NUMBER() OVER (PARTITION BY conn ORDER BY due_at, id) AS turn FROM locked
         ), picked AS MATERIALIZED (
           SELECT {LEASE_COLUMNS}, ranked.due_at, ranked.turn FROM leases JOIN ranked USING (id)
         ), claimed AS (
           UPDATE leases SET claimed_by = $4, claimed_until = {DB_NOW_MS} + $5
             WHERE id IN (SELECT id FROM picked) RETURNING id
         )
         SELECT picked.* FROM picked JOIN claimed USING (id) ORDER BY turn, due_at, id"
    )
}

/// `next_due()`: as SQLite's (earliest expiry of an active lease, earliest
/// retry or scheduled revocation), over the rows this store could claim.
/// Rows another replica holds are its work: counting them would make this
/// replica's worker wake (and find nothing) in a loop until the claim ends;
/// the worker's tick bounds how late it notices a claim that timed out.
/// Each branch is an index-ordered scan that stops at its first row.
fn next_due_sql() -> String {
    let c = claimable().replace("$4", "$1").replace("$6", "$2");
    format!(
        "SELECT MIN(t) AS t FROM (
           (SELECT expires_at AS t FROM leases WHERE state = 'active' AND {c}
              ORDER BY expires_at LIMIT 1)
           UNION ALL
           (SELECT next_attempt_at FROM leases WHERE state = 'active' AND next_attempt_at IS NOT NULL AND {c}
              ORDER BY next_attempt_at LIMIT 1)
           UNION ALL
           (SELECT next_attempt_at FROM leases WHERE state = 'revoke_failed' AND next_attempt_at IS NOT NULL AND {c}
              ORDER BY next_attempt_at LIMIT 1)
         ) x"
    )
}

pub struct PgStore {
    pool: PgPool,
    /// This store's id in `claimed_by`: unique per process and open.
    claimer: String,
    claim_timeout: Duration,
    /// Due rows that did not decode, left out of `due()` by id.
    quarantine: Quarantine,
}

fn interpret_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://...` or `postgresql://...`) and runs
    /// the migrations (sqlx serializes concurrent migrators with an advisory
    /// lock, so replicas may start together).
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(interpret_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        let claimer = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 8]>()));
        Ok(PgStore { pool, claimer, claim_timeout: DEFAULT_CLAIM_TIMEOUT, quarantine: Quarantine::new() })
    }

    /// Sets how long `due()` reserves a lease for this replica
    /// (default [`DEFAULT_CLAIM_TIMEOUT`]).
    pub fn with_claim_timeout(mut self, d: Duration) -> Self {
        self.claim_timeout = d;
        self
    }

    fn claim_ms(&self) -> i64 {
        i64::try_from(self.claim_timeout.as_millis()).unwrap_or(i64::MAX / 2)
    }
}

use super::rows::{lease_from_row, secret_from_row, Quarantine, JOB_PROGRESS_SQL, SECRET_COLUMNS};
use super::{switch_condition, Rewrap, SecretSwitch, SecretVersion};

fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, f: &LeaseFilter) {
    if let Some(r) = &f.role {
        qb.push(" AND role = ").push_bind(r.clone());
    }
    if let Some(i) = &f.issuer {
        qb.push(" AND issuer = ").push_bind(i.clone());
    }
    if let Some(s) = &f.subject {
        qb.push(" AND subject = ").push_bind(s.clone());
    }
    if let Some(st) = f.state {
        qb.push(" AND state = ").push_bind(st.as_str());
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn exclusive(&self) -> bool {
        // Several replicas share one PostgreSQL store: a pending lease may be
        // another replica's issue in progress.
        false
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(interpret_error)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    /// The due query reads role by role, never every due lease: with
    /// 20,000 leases due on ten roles and a limit of 50 per connection, it
    /// reads 100 per role (twice the limit; 1,000 rows, not 20,000), through
    /// the role-led index of migration 0016, and scans no table in full.
    #[tokio::test]
    async fn due_reads_role_by_role_through_role_led_indexes() {
        let pg = lessor_postgres::testkit::TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
        pg.psql("postgres", "CREATE DATABASE lessor").unwrap();
        let dsn = pg.dsn("postgres", pg.superuser_password(), "lessor");
        let s = PgStore::open(&dsn).await.unwrap();
        let mut conn = s.pool.acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state, issued_at, \
             expires_at, max_expires_at) \
             SELECT 'l' || i, 'token/r' || (i % 10), 'token', 'i', 's', '{}', '[]', '[]', 'active', i, i, i \
             FROM generate_series(1, 20000) AS i",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::query("ANALYZE leases").execute(&mut *conn).await.unwrap();
        sqlx::query("SET enable_seqscan = off").execute(&mut *conn).await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, TIMING OFF) {}", due_sql()))
            .bind(1_000_000_i64)
            .bind(60_000_i64)
            .bind(50_i64)
            .bind("r1")
            .bind(60_000_i64)
            .bind(Vec::<String>::new())
            .bind(Vec::<String>::new())
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        let read = plan
            .lines()
            .find(|l| l.contains("CTE Scan on u "))
            .and_then(|l| l.rsplit("rows=").next())
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok());
        assert_eq!(read, Some(1000), "{plan}");
        assert!(plan.contains("Index Scan using leases_role on leases"), "{plan}");
        for scan in ["Seq Scan on leases", "Bitmap Heap Scan on leases"] {
            assert!(!plan.contains(scan), "{scan}:\n{plan}");
        }
    }
}
