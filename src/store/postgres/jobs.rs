//! [`JobStore`] on PostgreSQL: a job and the leases it takes are one transaction.

use super::*;

#[async_trait]
impl JobStore for PgStore {
    async fn start_revoke_job(
        &self,
        id: &str,
        f: &RevokeFilter,
        created_by: &str,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let filter = serde_json::to_string(f).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        // The job row first: a caller racing for the same id fails here, on
        // the primary key, before it has touched (and locked) a lease. Taking
        // the leases first made every loser rewrite them all, and its locks
        // outlived its error: PostgreSQL sends the error before it aborts the
        // transaction, so a `due()` right after could skip them all.
        tx_try!(
            tx,
            sqlx::query(
                "INSERT INTO jobs (id, kind, filter, created_by, created_at, total) VALUES ($1, 'revoke', $2, $3, $4, 0)",
            )
            .bind(id)
            .bind(filter)
            .bind(created_by)
            .bind(to_ms(now))
            .execute(&mut *tx)
            .await
        );
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
        let n = tx_try!(tx, qb.build().execute(&mut *tx).await).rows_affected() as i64;
        tx_try!(tx, sqlx::query("UPDATE jobs SET total = $1 WHERE id = $2").bind(n).bind(id).execute(&mut *tx).await);
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
        let mut st = crate::store::rows::job_from_row(&row)?;
        let rows = sqlx::query(&JOB_PROGRESS_SQL.replace('?', "$1"))
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        crate::store::rows::count_job_rows(&mut st, &rows)?;
        Ok(Some(st))
    }
}
