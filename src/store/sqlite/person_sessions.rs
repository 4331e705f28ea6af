//! [`PersonSessionStore`] on SQLite: reads on the reader pool, writes
//! through the one writer.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{interpret_error, to_ms, Bind, SqliteStore, StoreError};
use crate::store::person_sessions::{groups_json, person_session_from_row, PersonSession, PersonSessionStore, PERSON_SESSION_COLUMNS};

const LIVE: &str = "ended_at IS NULL AND expires_at > ? AND idle_expires_at > ?";

#[async_trait]
impl PersonSessionStore for SqliteStore {
    async fn person_session_create(&self, s: &PersonSession) -> Result<(), StoreError> {
        self.writer
            .exec(
                format!(
                    "INSERT INTO person_sessions ({PERSON_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
                ),
                vec![
                    Bind::Text(s.token_hash.clone()),
                    Bind::Text(s.id.clone()),
                    Bind::Text(s.provider.clone()),
                    Bind::Text(s.issuer.clone()),
                    Bind::Text(s.subject.clone()),
                    Bind::Text(s.email.clone()),
                    Bind::Text(s.name.clone()),
                    Bind::Text(groups_json(s)?),
                    Bind::Text(s.via.clone()),
                    Bind::Int(to_ms(s.created_at)),
                    Bind::Int(to_ms(s.idle_expires_at)),
                    Bind::Int(to_ms(s.expires_at)),
                ],
            )
            .await?;
        Ok(())
    }

    async fn person_session_by_hash(&self, hash: &str) -> Result<Option<PersonSession>, StoreError> {
        let row = sqlx::query(&format!("SELECT {PERSON_SESSION_COLUMNS} FROM person_sessions WHERE token_hash = ?"))
            .bind(hash)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(person_session_from_row).transpose()
    }

    async fn person_session_touch(&self, hash: &str, now: OffsetDateTime, idle_expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                format!(
                    "UPDATE person_sessions SET idle_expires_at = MAX(idle_expires_at, MIN(?, expires_at)) \
                     WHERE token_hash = ? AND {LIVE}"
                ),
                vec![Bind::Int(to_ms(idle_expires_at)), Bind::Text(hash.into()), Bind::Int(to_ms(now)), Bind::Int(to_ms(now))],
            )
            .await?;
        Ok(n == 1)
    }

    async fn person_session_end(&self, hash: &str, at: OffsetDateTime, reason: &str) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                format!("UPDATE person_sessions SET ended_at = ?, end_reason = ? WHERE token_hash = ? AND {LIVE}"),
                vec![Bind::Int(to_ms(at)), Bind::Text(reason.into()), Bind::Text(hash.into()), Bind::Int(to_ms(at)), Bind::Int(to_ms(at))],
            )
            .await?;
        Ok(n == 1)
    }

    async fn person_sessions_end_all(&self, provider: &str, subject: &str, at: OffsetDateTime, reason: &str) -> Result<u64, StoreError> {
        self.writer
            .exec(
                format!(
                    "UPDATE person_sessions SET ended_at = ?, end_reason = ? WHERE provider = ? AND subject = ? AND {LIVE}"
                ),
                vec![
                    Bind::Int(to_ms(at)),
                    Bind::Text(reason.into()),
                    Bind::Text(provider.into()),
                    Bind::Text(subject.into()),
                    Bind::Int(to_ms(at)),
                    Bind::Int(to_ms(at)),
                ],
            )
            .await
    }

    async fn person_sessions_prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .exec(
                "DELETE FROM person_sessions WHERE token_hash IN (SELECT token_hash FROM person_sessions \
                 WHERE idle_expires_at < ? OR ended_at < ? LIMIT ?)",
                vec![Bind::Int(to_ms(before)), Bind::Int(to_ms(before)), Bind::Int(i64::from(limit))],
            )
            .await
    }
}
