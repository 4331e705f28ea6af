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
//! Why one file: it implements the whole `Store` trait in PostgreSQL's dialect;
//! it splits along with the trait (leases, jobs, secrets, plugin state,
//! cluster: issue 12).

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

mod admin_tokens;
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

/// Which claimable `pending` rows are orphaned: older than the pending grace
/// (`$2`, ms) by the database's clock (one clock for every replica), or at
/// once when another replica's claim on it lapsed (that replica is gone: its
/// heartbeat renews the claims of the leases it is issuing).
fn orphaned_pending() -> String {
    format!("(issued_at < {DB_NOW_MS} - $2 OR (claimed_by <> $4 AND claimed_until <= {DB_NOW_MS}))")
}

/// `due()`: the four branches of the SQLite query over the rows this store
/// may claim, reading only `(id, role, due_at)`; de-duplicated (an active
/// lease can be both expired and scheduled: it counts from the earlier).
/// Then, for each connection (the role's part before `/`) not in `$7`, its
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
        "WITH u AS (
           SELECT id, role, expires_at AS due_at FROM leases
             WHERE state = 'active' AND expires_at <= $1 AND {c}
           UNION ALL
           SELECT id, role, next_attempt_at FROM leases
             WHERE state = 'active' AND next_attempt_at <= $1 AND {c}
           UNION ALL
           SELECT id, role, issued_at FROM leases
             WHERE state = 'pending' AND {orphaned} AND {c}
           UNION ALL
           SELECT id, role, next_attempt_at FROM leases
             WHERE state = 'revoke_failed' AND next_attempt_at <= $1 AND {c}
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

/// The class id of lessor's advisory locks (`lsr` in ASCII).
const LOCK_CLASS: i32 = 0x006c_7372;

/// A held [`Store::try_lock`]: the transaction that took the advisory lock.
struct PgLock(sqlx::Transaction<'static, Postgres>);

#[async_trait]
impl super::LockHolder for PgLock {
    async fn release(self: Box<Self>) {
        if let Err(e) = self.0.rollback().await {
            // The connection is broken: its session, and the lock, end with it.
            tracing::debug!(error = %e, "releasing a store lock failed");
        }
    }
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

    async fn try_lock(&self, name: &str) -> Result<Option<super::StoreLock>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        // Two-key form: lessor's class id, the name's hash (so lessor's
        // locks never meet another application's single-key locks).
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(interpret_error)?;
        if !got {
            let _ = tx.rollback().await;
            return Ok(None);
        }
        Ok(Some(super::StoreLock::held(Box::new(PgLock(tx)))))
    }

    async fn insert_pending(&self, l: &Lease) -> Result<(), StoreError> {
        // Claimed by this replica while it issues (the heartbeat renews it;
        // activation releases it): if the replica dies, the claim lapses after
        // `claim_timeout` and another replica revokes the orphan.
        sqlx::query(&format!(
            "INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state, \
             issued_at, expires_at, max_expires_at, claimed_by, claimed_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $12, {DB_NOW_MS} + $13)"
        ))
        .bind(l.id.as_str())
        .bind(&l.role)
        .bind(&l.plugin)
        .bind(&l.issuer)
        .bind(&l.subject)
        .bind(to_json(&l.claims)?)
        .bind(to_json(&l.scopes)?)
        .bind(to_json(&l.policies)?)
        .bind(to_ms(l.issued_at))
        .bind(to_ms(l.expires_at))
        .bind(to_ms(l.max_expires_at))
        .bind(&self.claimer)
        .bind(self.claim_ms())
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn activate_at_version(
        &self,
        id: &LeaseId,
        handle: &Handle,
        expires_at: OffsetDateTime,
        root_version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE leases SET state = 'active', handle = $1, expires_at = $2, root_version = $3, \
             claimed_by = NULL, claimed_until = NULL WHERE id = $4 AND state = 'pending' \
             AND end_reason IS DISTINCT FROM 'orphaned'",
        )
        .bind(to_json(handle)?)
        .bind(to_ms(expires_at))
        .bind(root_version)
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn secret_insert(&self, v: &SecretVersion) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO connection_secrets (connection, version, state, ciphertext, wrapped_dek, kek_id, \
             fingerprint, set_by, reason, set_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&v.connection)
        .bind(v.version)
        .bind(v.state.as_str())
        .bind(&v.ciphertext)
        .bind(&v.wrapped_dek)
        .bind(&v.kek_id)
        .bind(&v.fingerprint)
        .bind(&v.set_by)
        .bind(&v.reason)
        .bind(to_ms(v.set_at))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn secret_versions(&self, connection: Option<&str>) -> Result<Vec<SecretVersion>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SECRET_COLUMNS} FROM connection_secrets WHERE ($1::TEXT IS NULL OR connection = $1) \
             ORDER BY connection, version"
        ))
        .bind(connection)
        .fetch_all(&self.pool)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(secret_from_row).collect()
    }

    async fn secret_active_version(&self, connection: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT version FROM connection_secrets WHERE connection = $1 AND state = 'active'")
            .bind(connection)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.map(|r| r.try_get::<i64, _>("version").map_err(interpret_error)).transpose()
    }

    async fn secret_verified(
        &self,
        connection: &str,
        version: i64,
        ok: bool,
        result: &serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE connection_secrets SET verified_ok = $1, verification = $2, verified_at = $3 \
             WHERE connection = $4 AND version = $5 AND state <> 'retired'",
        )
        .bind(ok)
        .bind(to_json(result)?)
        .bind(to_ms(at))
        .bind(connection)
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn secret_approve(&self, connection: &str, version: i64, by: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE connection_secrets SET approved_by = $1, approved_at = $2 \
             WHERE connection = $3 AND version = $4 AND state = 'candidate' AND set_by <> $1",
        )
        .bind(by)
        .bind(to_ms(at))
        .bind(connection)
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn secret_switch(&self, s: &SecretSwitch) -> Result<bool, StoreError> {
        let (cond, extra) = switch_condition(s);
        let cond = cond.replace('?', "$6");
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        // Lock the connection's versions first, so two activations of one
        // connection queue up instead of failing on the unique index.
        sqlx::query("SELECT version FROM connection_secrets WHERE connection = $1 FOR UPDATE")
            .bind(&s.connection)
            .execute(&mut *tx)
            .await
            .map_err(interpret_error)?;
        sqlx::query(
            "UPDATE connection_secrets SET state = 'retiring', retiring_until = $1 WHERE connection = $2 AND state = 'active'",
        )
        .bind(to_ms(s.retiring_until))
        .bind(&s.connection)
        .execute(&mut *tx)
        .await
        .map_err(interpret_error)?;
        let sql = format!(
            "UPDATE connection_secrets SET state = 'active', activated_by = $1, activated_at = $2, retiring_until = NULL \
             WHERE connection = $3 AND version = $4 AND state = $5 {cond}"
        );
        let mut upd = sqlx::query(&sql)
            .bind(&s.by)
            .bind(to_ms(s.at))
            .bind(&s.connection)
            .bind(s.version)
            .bind(s.from.as_str());
        for v in extra {
            upd = upd.bind(v);
        }
        let n = upd.execute(&mut *tx).await.map_err(interpret_error)?.rows_affected();
        if n != 1 {
            tx.rollback().await.map_err(interpret_error)?;
            return Ok(false);
        }
        tx.commit().await.map_err(interpret_error)?;
        Ok(true)
    }

    async fn secret_retire_due(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        Ok(sqlx::query("UPDATE connection_secrets SET state = 'retired' WHERE state = 'retiring' AND retiring_until <= $1")
            .bind(to_ms(now))
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?
            .rows_affected())
    }

    async fn secret_rewrap(&self, rows: &[Rewrap]) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        for r in rows {
            let n = sqlx::query(
                "UPDATE connection_secrets SET wrapped_dek = $1, kek_id = $2 \
                 WHERE connection = $3 AND version = $4 AND kek_id = $5",
            )
            .bind(&r.wrapped_dek)
            .bind(&r.kek_id)
            .bind(&r.connection)
            .bind(r.version)
            .bind(&r.old_kek_id)
            .execute(&mut *tx)
            .await
            .map_err(interpret_error)?
            .rows_affected();
            if n != 1 {
                tx.rollback().await.map_err(interpret_error)?;
                return Ok(false);
            }
        }
        tx.commit().await.map_err(interpret_error)?;
        Ok(true)
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(lease_from_row).transpose()
    }

    async fn list(&self, f: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {LEASE_COLUMNS} FROM leases WHERE 1 = 1"));
        push_filter(&mut qb, f);
        qb.push(" ORDER BY issued_at DESC LIMIT ").push_bind(f.limit.max(1) as i64);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(interpret_error)?;
        rows.iter().map(lease_from_row).collect()
    }

    async fn renew(&self, id: &LeaseId, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE leases SET expires_at = $1 WHERE id = $2 AND state = 'active' AND end_reason IS NULL AND expires_at > $3",
        )
        .bind(to_ms(expires_at))
        .bind(id.as_str())
        .bind(to_ms(now))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn finish(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = sqlx::query(&format!(
            "UPDATE leases SET state = $1, end_reason = $2, ended_at = $3, next_attempt_at = NULL, \
             claimed_by = NULL, claimed_until = NULL WHERE id = $4 AND state IN {LIVE}"
        ))
        .bind(reason.final_state().as_str())
        .bind(reason.as_str())
        .bind(to_ms(at))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn record_failure(
        &self,
        id: &LeaseId,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        // The outcome is recorded: release the claim, so whichever replica
        // is free when the retry falls due takes it.
        sqlx::query(&format!(
            "UPDATE leases SET state = 'revoke_failed', end_reason = $1, attempts = attempts + 1, \
             last_error = $2, next_attempt_at = $3, claimed_by = NULL, claimed_until = NULL \
             WHERE id = $4 AND state IN {LIVE}"
        ))
        .bind(reason.as_str())
        .bind(error)
        .bind(to_ms(retry_at))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn mark_orphaned(&self, id: &LeaseId) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE leases SET end_reason = 'orphaned' WHERE id = $1 AND state = 'pending'")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn finish_unrevocable(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = sqlx::query(&format!(
            "UPDATE leases SET state = 'expired', end_reason = $1, ended_at = $2, next_attempt_at = NULL, \
             claimed_by = NULL, claimed_until = NULL WHERE id = $3 AND state IN {LIVE}"
        ))
        .bind(reason.as_str())
        .bind(to_ms(at))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn record_late_failure(
        &self,
        id: &LeaseId,
        handle: &Handle,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET state = 'revoke_failed', handle = $1, end_reason = $2, ended_at = NULL, \
             attempts = attempts + 1, last_error = $3, next_attempt_at = $4, claimed_by = NULL, claimed_until = NULL \
             WHERE id = $5 AND state IN ('revoked', 'expired', 'revoke_failed')",
        )
        .bind(to_json(handle)?)
        .bind(reason.as_str())
        .bind(error)
        .bind(to_ms(retry_at))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn prune_ended(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        // Bounded, and SKIP LOCKED: replicas pruning at once share the work
        // instead of queueing on each other's rows.
        let n = sqlx::query(
            "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE ended_at < $1 \
             AND state IN ('revoked', 'expired') LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        if n < u64::from(limit) {
            sqlx::query("DELETE FROM jobs WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM leases WHERE job_id = jobs.id)")
                .bind(to_ms(before))
                .execute(&self.pool)
                .await
                .map_err(interpret_error)?;
        }
        Ok(n)
    }

    async fn schedule_revocation(&self, f: &LeaseFilter, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut qb = QueryBuilder::<Postgres>::new("UPDATE leases SET end_reason = 'revoked', next_attempt_at = ");
        qb.push_bind(to_ms(now)).push(" WHERE state = 'active'");
        // Like SQLite: role / issuer / subject narrow it; `state` is implied.
        push_filter(&mut qb, &LeaseFilter { state: None, ..f.clone() });
        let done = qb.build().execute(&self.pool).await.map_err(interpret_error)?;
        Ok(done.rows_affected())
    }

    async fn due_except(
        &self,
        now: OffsetDateTime,
        pending_cutoff: OffsetDateTime,
        limit: u32,
        skip: &[String],
    ) -> Result<Vec<DueLease>, StoreError> {
        // The worker's pending cutoff as an age, applied to the database's
        // clock (replicas' clocks need not agree).
        let grace_ms = (to_ms(now).saturating_sub(to_ms(pending_cutoff))).max(0);
        let rows = sqlx::query(&due_sql())
            .bind(to_ms(now))
            .bind(grace_ms)
            .bind(limit as i64)
            .bind(&self.claimer)
            .bind(self.claim_ms())
            .bind(self.quarantine.ids())
            .bind(skip)
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        // Distinct already (DISTINCT ON id in the statement).
        let (out, bad) = self.quarantine.decode_due(&rows, "postgres");
        if !bad.is_empty() {
            // Claim only what decodes: a row set aside must not stay claimed
            // (and renewed by the heartbeat) by this replica.
            sqlx::query("UPDATE leases SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1 AND id = ANY($2)")
                .bind(&self.claimer)
                .bind(&bad)
                .execute(&self.pool)
                .await
                .map_err(interpret_error)?;
        }
        Ok(out)
    }

    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let row = sqlx::query(&next_due_sql())
            .bind(&self.claimer)
            .bind(self.quarantine.ids())
            .fetch_one(&self.pool)
            .await
            .map_err(interpret_error)?;
        let t: Option<i64> = row.try_get("t").map_err(interpret_error)?;
        t.map(from_ms).transpose()
    }

    async fn counts(&self) -> Result<LeaseCounts, StoreError> {
        // The trigger-kept counts table (migration 0006), not the leases.
        let rows = sqlx::query(super::COUNTS_SQL).fetch_all(&self.pool).await.map_err(interpret_error)?;
        rows.iter().map(super::rows::state_count_row).collect()
    }

    async fn expiring(&self, before: OffsetDateTime) -> Result<RoleCounts, StoreError> {
        let rows = sqlx::query(&super::expiring_sql("$1"))
            .bind(super::expiry_minute(before))
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(super::rows::count_row).collect()
    }

    async fn max_live_per_owner(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(super::MAX_OWNER_SQL).fetch_one(&self.pool).await.map_err(interpret_error)?;
        row.try_get("n").map_err(interpret_error)
    }

    async fn start_revoke_job(
        &self,
        id: &str,
        f: &RevokeFilter,
        created_by: &str,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let filter = serde_json::to_string(f).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        let mut qb = QueryBuilder::<Postgres>::new("UPDATE leases SET job_id = ");
        qb.push_bind(id.to_owned())
            .push(", next_attempt_at = ")
            .push_bind(to_ms(now))
            .push(", end_reason = CASE WHEN state = 'revoke_failed' THEN end_reason ELSE 'revoked' END")
            .push(format!(" WHERE state IN {LIVE}"));
        if let Some(v) = &f.role {
            qb.push(" AND role = ").push_bind(v.clone());
        }
        if let Some(v) = &f.issuer {
            qb.push(" AND issuer = ").push_bind(v.clone());
        }
        if let Some(v) = &f.subject {
            qb.push(" AND subject = ").push_bind(v.clone());
        }
        for (attr, value) in &f.claims {
            qb.push(" AND (claims::jsonb ->> ").push_bind(attr.clone()).push(") = ").push_bind(value.clone());
        }
        if let Some(t) = f.issued_after_ms {
            qb.push(" AND issued_at >= ").push_bind(t);
        }
        let n = qb.build().execute(&mut *tx).await.map_err(interpret_error)?.rows_affected() as i64;
        sqlx::query(
            "INSERT INTO jobs (id, kind, filter, created_by, created_at, total) VALUES ($1, 'revoke', $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(filter)
        .bind(created_by)
        .bind(to_ms(now))
        .bind(n)
        .execute(&mut *tx)
        .await
        .map_err(interpret_error)?;
        tx.commit().await.map_err(interpret_error)?;
        Ok(n)
    }

    async fn job_status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        let Some(row) = sqlx::query("SELECT id, kind, filter, created_by, created_at, total FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?
        else {
            return Ok(None);
        };
        let mut st = super::rows::job_from_row(&row)?;
        let rows = sqlx::query(&JOB_PROGRESS_SQL.replace('?', "$1"))
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        super::rows::count_job_rows(&mut st, &rows)?;
        Ok(Some(st))
    }

    async fn count_live(&self, f: &LeaseFilter) -> Result<i64, StoreError> {
        // Role-only, owner-only and unfiltered counts come from the counts
        // tables (what the quotas ask on every issue); anything else counts rows.
        if let Some((sql, binds)) = super::fast_count_sql(f, "$1", "$2") {
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = q.bind(b);
            }
            let row = q.fetch_one(&self.pool).await.map_err(interpret_error)?;
            return row.try_get::<i64, _>("n").map_err(interpret_error);
        }
        let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT COUNT(*) FROM leases WHERE state IN {LIVE}"));
        push_filter(&mut qb, &LeaseFilter { state: None, ..f.clone() });
        let row = qb.build().fetch_one(&self.pool).await.map_err(interpret_error)?;
        row.try_get::<i64, _>(0).map_err(interpret_error)
    }

    async fn state_get(&self, conn: &str, key: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        let row = sqlx::query("SELECT value, sealed FROM plugin_state WHERE connection = $1 AND key = $2")
            .bind(conn)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.map(|r| {
            Ok((
                r.try_get::<Vec<u8>, _>("value").map_err(interpret_error)?,
                r.try_get::<bool, _>("sealed").map_err(interpret_error)?,
            ))
        })
        .transpose()
    }

    async fn state_put(&self, conn: &str, key: &str, value: &[u8], sealed: bool) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (connection, key) DO UPDATE SET value = excluded.value, sealed = excluded.sealed, \
             updated_at = excluded.updated_at",
        )
        .bind(conn)
        .bind(key)
        .bind(value)
        .bind(sealed)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn state_put_if_absent(&self, conn: &str, key: &str, value: &[u8], sealed: bool) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (connection, key) DO NOTHING",
        )
        .bind(conn)
        .bind(key)
        .bind(value)
        .bind(sealed)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn state_list(&self, conn: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Range scan: prefix <= key < prefix + U+FFFF, compared byte-wise
        // (COLLATE "C") like SQLite's BINARY collation, whatever the
        // database's default collation orders by.
        let upper = format!("{prefix}\u{ffff}");
        let rows = sqlx::query(
            "SELECT key, value FROM plugin_state WHERE connection = $1 \
             AND key COLLATE \"C\" >= $2 AND key COLLATE \"C\" < $3 \
             AND sealed = FALSE ORDER BY key COLLATE \"C\"",
        )
        .bind(conn)
        .bind(prefix)
        .bind(upper)
        .fetch_all(&self.pool)
        .await
        .map_err(interpret_error)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("key").map_err(interpret_error)?,
                    r.try_get::<Vec<u8>, _>("value").map_err(interpret_error)?,
                ))
            })
            .collect()
    }

    async fn state_delete(&self, conn: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM plugin_state WHERE connection = $1 AND key = $2")
            .bind(conn)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?;
        Ok(())
    }

    async fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.map(|r| r.try_get::<String, _>("value").map_err(interpret_error)).transpose()
    }

    async fn meta_put_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?
            .rows_affected();
        Ok(n == 1)
    }

    fn replica_id(&self) -> &str {
        &self.claimer
    }

    async fn heartbeat(&self, r: &super::Replica) -> Result<(), StoreError> {
        let claim_ms = self.claim_ms();
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        sqlx::query(&format!(
            "INSERT INTO replicas (id, host, pid, version, policy_version, started_at, seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, {DB_NOW_MS}) ON CONFLICT (id) DO UPDATE SET \
             policy_version = excluded.policy_version, seen_at = excluded.seen_at"
        ))
        .bind(&self.claimer)
        .bind(&r.host)
        .bind(r.pid)
        .bind(&r.version)
        .bind(&r.policy_version)
        .bind(r.started_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(interpret_error)?;
        // Keep the work in hand (due leases taken, pending leases being
        // issued): a live replica's claims never time out.
        sqlx::query(&format!(
            "UPDATE leases SET claimed_until = {DB_NOW_MS} + $2 WHERE claimed_by = $1 AND state IN {LIVE}"
        ))
        .bind(&self.claimer)
        .bind(claim_ms)
        .execute(&mut *tx)
        .await
        .map_err(interpret_error)?;
        tx.commit().await.map_err(interpret_error)
    }

    async fn replicas(&self, within: Duration) -> Result<Vec<super::Replica>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id, host, pid, version, policy_version, started_at, seen_at FROM replicas \
             WHERE seen_at >= {DB_NOW_MS} - $1 ORDER BY id"
        ))
        .bind(i64::try_from(within.as_millis()).unwrap_or(i64::MAX / 2))
        .fetch_all(&self.pool)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(super::rows::replica_from_row).collect()
    }

    async fn remove_replica(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&self.claimer)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?;
        Ok(())
    }

    async fn oldest_overdue(&self, now: OffsetDateTime) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE (state = 'active' AND (expires_at <= $1 OR end_reason IS NOT NULL)) OR state = 'revoke_failed' ORDER BY expires_at LIMIT 1"
        ))
        .bind(to_ms(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(interpret_error)?;
        row.as_ref().map(lease_from_row).transpose()
    }
}
