//! [`ClusterStore`] on PostgreSQL: heartbeats by the database clock.

use super::*;

/// The class id of lessor's advisory locks (`lsr` in ASCII).
const LOCK_CLASS: i32 = 0x006c_7372;

/// A held [`ClusterStore::try_lock`]: the transaction that took the advisory lock.
struct PgLock(sqlx::Transaction<'static, Postgres>);

#[async_trait]
impl crate::store::LockHolder for PgLock {
    async fn release(self: Box<Self>) {
        if let Err(e) = self.0.rollback().await {
            // The connection is broken: its session, and the lock, end with it.
            tracing::debug!(error = %e, "releasing a store lock failed");
        }
    }
}

#[async_trait]
impl ClusterStore for PgStore {
    async fn try_lock(&self, name: &str) -> Result<Option<crate::store::StoreLock>, StoreError> {
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
        Ok(Some(crate::store::StoreLock::held(Box::new(PgLock(tx)))))
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

    async fn heartbeat(&self, r: &crate::store::Replica) -> Result<(), StoreError> {
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

    async fn replicas(&self, within: Duration) -> Result<Vec<crate::store::Replica>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id, host, pid, version, policy_version, started_at, seen_at FROM replicas \
             WHERE seen_at >= {DB_NOW_MS} - $1 ORDER BY id"
        ))
        .bind(i64::try_from(within.as_millis()).unwrap_or(i64::MAX / 2))
        .fetch_all(&self.pool)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(crate::store::rows::replica_from_row).collect()
    }

    async fn remove_replica(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&self.claimer)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?;
        Ok(())
    }

    async fn stray_first_seen(&self, connection: &str, object: &str, now_ms: i64) -> Result<i64, StoreError> {
        // One statement: the recorded time if there is one (the no-op update
        // makes RETURNING answer for an existing row), else `now_ms`.
        sqlx::query_scalar(
            "INSERT INTO reconcile_strays (connection, object, first_seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (connection, object) DO UPDATE SET first_seen_at = reconcile_strays.first_seen_at \
             RETURNING first_seen_at",
        )
        .bind(connection)
        .bind(object)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(interpret_error)
    }

    async fn stray_objects(&self, connection: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT object FROM reconcile_strays WHERE connection = $1 ORDER BY object COLLATE \"C\" LIMIT $2")
            .bind(connection)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)
    }

    async fn stray_forget(&self, connection: &str, objects: &[String]) -> Result<(), StoreError> {
        if objects.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM reconcile_strays WHERE connection = $1 AND object = ANY($2)")
            .bind(connection)
            .bind(objects)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?;
        Ok(())
    }
}
