//! [`JobStore`] on SQLite: a job and the leases it takes are one
//! all-or-nothing write.

use super::*;

#[async_trait]
impl JobStore for SqliteStore {
    async fn start_revoke_job(
        &self,
        id: &str,
        f: &RevokeFilter,
        created_by: &str,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let mut sql = format!(
            "UPDATE leases SET job_id = ?, next_attempt_at = ?, \
             end_reason = CASE WHEN state = 'revoke_failed' THEN end_reason ELSE 'revoked' END \
             WHERE state IN {LIVE}"
        );
        let mut binds = vec![Bind::Text(id.to_owned()), Bind::Int(to_ms(now))];
        for (col, v) in [("role", &f.role), ("issuer", &f.issuer), ("subject", &f.subject)] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                binds.push(Bind::Text(v.clone()));
            }
        }
        for (attr, value) in &f.claims {
            // Attribute names are checked by the caller ([A-Za-z0-9_]).
            sql.push_str(" AND json_extract(claims, ?) = ?");
            binds.push(Bind::Text(format!("$.\"{attr}\"")));
            binds.push(Bind::Text(value.clone()));
        }
        if let Some(t) = f.issued_after_ms {
            sql.push_str(" AND issued_at >= ?");
            binds.push(Bind::Int(t));
        }
        // One writer request: the tags and the job row commit together or
        // not at all (the total is counted from the tags it just wrote).
        let job = Stmt {
            sql: "INSERT INTO jobs (id, kind, filter, created_by, created_at, total) \
                  VALUES (?, 'revoke', ?, ?, ?, (SELECT COUNT(*) FROM leases WHERE job_id = ?))"
                .into(),
            binds: vec![
                Bind::Text(id.to_owned()),
                Bind::Text(to_json(f)?),
                Bind::Text(created_by.to_owned()),
                Bind::Int(to_ms(now)),
                Bind::Text(id.to_owned()),
            ],
            must_affect: true,
        };
        let tag = Stmt { sql, binds, must_affect: false };
        if self.writer.exec_all(vec![tag, job]).await? != 1 {
            return Err(StoreError::Unavailable(format!("job {id} was not recorded")));
        }
        let row = sqlx::query("SELECT total FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_one(&self.read)
            .await
            .map_err(interpret_error)?;
        row.try_get::<i64, _>("total").map_err(interpret_error)
    }

    async fn job_status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        let Some(row) = sqlx::query("SELECT id, kind, filter, created_by, created_at, total FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?
        else {
            return Ok(None);
        };
        let mut st = crate::store::rows::job_from_row(&row)?;
        let rows = sqlx::query(JOB_PROGRESS_SQL)
            .bind(id)
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        crate::store::rows::count_job_rows(&mut st, &rows)?;
        Ok(Some(st))
    }
}
