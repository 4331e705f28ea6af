//! [`SecretStore`] on PostgreSQL: a switch or rewrap is one transaction.

use super::*;

#[async_trait]
impl SecretStore for PgStore {
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
}
