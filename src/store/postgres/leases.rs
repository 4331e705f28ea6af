//! [`LeaseStore`] on PostgreSQL, with the expiry-work claims (see the
//! parent module).

use super::*;

#[async_trait]
impl LeaseStore for PgStore {
    async fn insert_pending(&self, l: &Lease) -> Result<crate::store::OnDisk, StoreError> {
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
        Ok(crate::store::OnDisk::now())
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
        let rows = sqlx::query(crate::store::COUNTS_SQL).fetch_all(&self.pool).await.map_err(interpret_error)?;
        rows.iter().map(crate::store::rows::state_count_row).collect()
    }

    async fn expiring(&self, before: OffsetDateTime) -> Result<RoleCounts, StoreError> {
        let rows = sqlx::query(&crate::store::expiring_sql("$1"))
            .bind(crate::store::expiry_minute(before))
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(crate::store::rows::count_row).collect()
    }

    async fn max_live_per_owner(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(crate::store::MAX_OWNER_SQL).fetch_one(&self.pool).await.map_err(interpret_error)?;
        row.try_get("n").map_err(interpret_error)
    }

    async fn count_live(&self, f: &LeaseFilter) -> Result<i64, StoreError> {
        // Role-only, owner-only and unfiltered counts come from the counts
        // tables (what the quotas ask on every issue); anything else counts rows.
        if let Some((sql, binds)) = crate::store::fast_count_sql(f, "$1", "$2") {
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

    async fn quota_counts(&self, issuer: &str, subject: &str, role: &str) -> Result<super::super::QuotaCounts, StoreError> {
        let row = sqlx::query(&crate::store::quota_counts_sql("$1", "$2", "$3"))
            .bind(issuer)
            .bind(subject)
            .bind(role)
            .fetch_one(&self.pool)
            .await
            .map_err(interpret_error)?;
        crate::store::quota_counts_of(&row).map_err(interpret_error)
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
