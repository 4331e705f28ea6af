//! [`PersonSessionStore`] on PostgreSQL: every replica reads the same rows,
//! so a session signed out on one replica is refused by all of them from
//! the next request on.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{interpret_error, to_ms, PgStore, StoreError};
use crate::store::person_sessions::{groups_json, person_session_from_row, PersonSession, PersonSessionStore, PERSON_SESSION_COLUMNS};

#[async_trait]
impl PersonSessionStore for PgStore {
    async fn person_session_create(&self, s: &PersonSession) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO person_sessions ({PERSON_SESSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL)"
        ))
        .bind(&s.token_hash)
        .bind(&s.id)
        .bind(&s.provider)
        .bind(&s.issuer)
        .bind(&s.subject)
        .bind(&s.email)
        .bind(&s.name)
        .bind(groups_json(s)?)
        .bind(&s.via)
        .bind(to_ms(s.created_at))
        .bind(to_ms(s.idle_expires_at))
        .bind(to_ms(s.expires_at))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn person_session_by_hash(&self, hash: &str) -> Result<Option<PersonSession>, StoreError> {
        let row = sqlx::query(&format!("SELECT {PERSON_SESSION_COLUMNS} FROM person_sessions WHERE token_hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(person_session_from_row).transpose()
    }

    async fn person_session_touch(&self, hash: &str, now: OffsetDateTime, idle_expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE person_sessions SET idle_expires_at = GREATEST(idle_expires_at, LEAST($1, expires_at)) \
             WHERE token_hash = $2 AND ended_at IS NULL AND expires_at > $3 AND idle_expires_at > $3",
        )
        .bind(to_ms(idle_expires_at))
        .bind(hash)
        .bind(to_ms(now))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(r.rows_affected() == 1)
    }

    async fn person_session_end(&self, hash: &str, at: OffsetDateTime, reason: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE person_sessions SET ended_at = $1, end_reason = $2 \
             WHERE token_hash = $3 AND ended_at IS NULL AND expires_at > $1 AND idle_expires_at > $1",
        )
        .bind(to_ms(at))
        .bind(reason)
        .bind(hash)
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(r.rows_affected() == 1)
    }

    async fn person_sessions_end_all(&self, provider: &str, subject: &str, at: OffsetDateTime, reason: &str) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE person_sessions SET ended_at = $1, end_reason = $2 \
             WHERE provider = $3 AND subject = $4 AND ended_at IS NULL AND expires_at > $1 AND idle_expires_at > $1",
        )
        .bind(to_ms(at))
        .bind(reason)
        .bind(provider)
        .bind(subject)
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(r.rows_affected())
    }

    async fn person_sessions_prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM person_sessions WHERE token_hash IN (SELECT token_hash FROM person_sessions \
             WHERE idle_expires_at < $1 OR ended_at < $1 LIMIT $2)",
        )
        .bind(to_ms(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(r.rows_affected())
    }
}
