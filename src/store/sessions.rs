//! Client tokens of the Vault-compatible API as stored: the token's
//! SHA-256 (never the token), its accessor, the workload it is bound to and
//! its lifetime. Both backends implement [`SessionStore`] in a child module
//! (`sqlite/sessions.rs`, `postgres/sessions.rs`); columns and encodings
//! (unix ms, attributes as JSON text) are the same in both migrations (0010).

use std::collections::BTreeMap;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{from_ms, StoreError};

/// One session's record. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token_hash: String,
    /// Public handle of the token (Vault's accessor): names it in the
    /// audit log and in lookups without being able to use it.
    pub accessor: String,
    /// The auth mount it logged in at (`jwt`).
    pub mount: String,
    /// The Vault `role` named at login (Cedar's `context.vault_role`).
    pub vault_role: String,
    pub issuer_name: String,
    pub issuer: String,
    pub subject: String,
    /// The workload's mapped claims at login.
    pub attributes: BTreeMap<String, String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// `renew-self` never extends past this.
    pub max_expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

impl Session {
    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

pub(crate) const SESSION_COLUMNS: &str = "token_hash, accessor, mount, vault_role, issuer_name, issuer, subject, attributes, \
     created_at, expires_at, max_expires_at, revoked_at";

pub(crate) fn session_from_row<R>(row: &R) -> Result<Session, StoreError>
where
    for<'a> super::rows::SqlxRow<'a, R>: super::rows::Cols,
{
    session_from(&super::rows::SqlxRow(row))
}

/// A session from a row of `SESSION_COLUMNS` (sqlx's or rusqlite's).
pub(crate) fn session_from(c: &impl super::rows::Cols) -> Result<Session, StoreError> {
    let attributes = serde_json::from_str(&c.text("attributes")?)
        .map_err(|e| StoreError::Corrupt(format!("session attributes: {e}")))?;
    Ok(Session {
        token_hash: c.text("token_hash")?,
        accessor: c.text("accessor")?,
        mount: c.text("mount")?,
        vault_role: c.text("vault_role")?,
        issuer_name: c.text("issuer_name")?,
        issuer: c.text("issuer")?,
        subject: c.text("subject")?,
        attributes,
        created_at: from_ms(c.int("created_at")?)?,
        expires_at: from_ms(c.int("expires_at")?)?,
        max_expires_at: from_ms(c.int("max_expires_at")?)?,
        revoked_at: c.opt_int("revoked_at")?.map(from_ms).transpose()?,
    })
}

pub(crate) fn attributes_json(s: &Session) -> Result<String, StoreError> {
    serde_json::to_string(&s.attributes).map_err(|e| StoreError::Corrupt(format!("session attributes: {e}")))
}

/// The session part of the store (every `Store` is one).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Records a new session (`Conflict` if its hash or accessor exists).
    async fn session_create(&self, s: &Session) -> Result<(), StoreError>;

    /// The session with this token hash, if any (one indexed lookup).
    async fn session_by_hash(&self, hash: &str) -> Result<Option<Session>, StoreError>;

    /// Moves a live session's expiry to `expires_at` (never past its max,
    /// never backwards). False if it is revoked or expired at `now`.
    async fn session_renew(&self, hash: &str, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<bool, StoreError>;

    /// Revokes a live session at `at`. False if it was not live.
    async fn session_revoke(&self, hash: &str, at: OffsetDateTime) -> Result<bool, StoreError>;

    /// Deletes up to `limit` sessions that ended (expired or revoked)
    /// before `before`; returns how many.
    async fn sessions_prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError>;
}
