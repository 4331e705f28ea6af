//! [`SessionStore`] on PostgreSQL: every replica reads the same rows, so a
//! revoked client token is refused by all of them from the next request on.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{interpret_error, to_ms, PgStore, StoreError};
use crate::store::sessions::{attributes_json, session_from_row, Session, SessionStore, SESSION_COLUMNS};

#[async_trait]
impl SessionStore for PgStore {
    async fn session_create(&self, s: &Session) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL)"
        ))
        .bind(&s.token_hash)
        .bind(&s.accessor)
        .bind(&s.mount)
        .bind(&s.vault_role)
        .bind(&s.issuer_name)
        .bind(&s.issuer)
        .bind(&s.subject)
        .bind(attributes_json(s)?)
        .bind(to_ms(s.created_at))
        .bind(to_ms(s.expires_at))
        .bind(to_ms(s.max_expires_at))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn session_by_hash(&self, hash: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn session_renew(&self, hash: &str, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE sessions SET expires_at = GREATEST(expires_at, LEAST($1, max_expires_at)) \
             WHERE token_hash = $2 AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(to_ms(expires_at))
        .bind(hash)
        .bind(to_ms(now))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(r.rows_affected() == 1)
    }

    async fn session_revoke(&self, hash: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL AND expires_at > $1")
            .bind(to_ms(at))
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?;
        Ok(r.rows_affected() == 1)
    }

    async fn sessions_prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions \
             WHERE expires_at < $1 OR revoked_at < $1 LIMIT $2)",
        )
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(r.rows_affected())
    }
}
