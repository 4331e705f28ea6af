//! [`SessionStore`] on SQLite: reads on the reader pool, writes through the
//! one writer.

use std::sync::LazyLock;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{fast, to_ms, Bind, SqliteStore, StoreError};
use crate::store::sessions::{attributes_json, session_from, Session, SessionStore, SESSION_COLUMNS};

#[async_trait]
impl SessionStore for SqliteStore {
    async fn session_create(&self, s: &Session) -> Result<(), StoreError> {
        self.writer
            .exec(
                format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"),
                vec![
                    Bind::Text(s.token_hash.clone()),
                    Bind::Text(s.accessor.clone()),
                    Bind::Text(s.mount.clone()),
                    Bind::Text(s.vault_role.clone()),
                    Bind::Text(s.issuer_name.clone()),
                    Bind::Text(s.issuer.clone()),
                    Bind::Text(s.subject.clone()),
                    Bind::Text(attributes_json(s)?),
                    Bind::Int(to_ms(s.created_at)),
                    Bind::Int(to_ms(s.expires_at)),
                    Bind::Int(to_ms(s.max_expires_at)),
                ],
            )
            .await?;
        Ok(())
    }

    async fn session_by_hash(&self, hash: &str) -> Result<Option<Session>, StoreError> {
        // Every Vault-API request asks this: a point read on the caller's
        // thread (`fast.rs`), like a lease by id.
        static BY_HASH: LazyLock<String> = LazyLock::new(|| format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?"));
        self.fast.read(|c| {
            let mut st = c.prepare_cached(&BY_HASH).map_err(fast::read_error)?;
            let mut rows = st.query([hash]).map_err(fast::read_error)?;
            rows.next().map_err(fast::read_error)?.map(session_from).transpose()
        })
    }

    async fn session_renew(&self, hash: &str, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE sessions SET expires_at = MAX(expires_at, MIN(?, max_expires_at)) \
                 WHERE token_hash = ? AND revoked_at IS NULL AND expires_at > ?",
                vec![Bind::Int(to_ms(expires_at)), Bind::Text(hash.into()), Bind::Int(to_ms(now))],
            )
            .await?;
        Ok(n == 1)
    }

    async fn session_revoke(&self, hash: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL AND expires_at > ?",
                vec![Bind::Int(to_ms(at)), Bind::Text(hash.into()), Bind::Int(to_ms(at))],
            )
            .await?;
        Ok(n == 1)
    }

    async fn sessions_prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .exec(
                "DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions \
                 WHERE expires_at < ? OR revoked_at < ? LIMIT ?)",
                vec![Bind::Int(to_ms(before)), Bind::Int(to_ms(before)), Bind::Int(i64::from(limit))],
            )
            .await
    }
}
