//! Admin tokens as stored: name, the token's SHA-256 (never the token),
//! who made it, when it expires, when it was last used, whether it was
//! revoked. Both backends implement [`AdminTokenStore`] in a child module
//! (`sqlite/admin_tokens.rs`, `postgres/admin_tokens.rs`); the columns and
//! their encodings (unix ms) are the same in both migrations (0006).

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{from_ms, StoreError};

/// One admin token's record. Holds no secret: `token_hash` is the SHA-256
/// (hex) of a 256-bit random token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub token_hash: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl AdminToken {
    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

pub(crate) const ADMIN_TOKEN_COLUMNS: &str = "name, token_hash, created_by, created_at, expires_at, last_used_at, revoked_at";

pub(crate) fn admin_token_from_row<R>(row: &R) -> Result<AdminToken, StoreError>
where
    for<'a> super::rows::SqlxRow<'a, R>: super::rows::Cols,
{
    admin_token_from(&super::rows::SqlxRow(row))
}

/// Reads the admin-token columns from a row of either driver.
pub(crate) fn admin_token_from(c: &impl super::rows::Cols) -> Result<AdminToken, StoreError> {
    let opt = |col: &str| -> Result<Option<OffsetDateTime>, StoreError> { c.opt_int(col)?.map(from_ms).transpose() };
    Ok(AdminToken {
        name: c.text("name")?,
        token_hash: c.text("token_hash")?,
        created_by: c.text("created_by")?,
        created_at: from_ms(c.int("created_at")?)?,
        expires_at: from_ms(c.int("expires_at")?)?,
        last_used_at: opt("last_used_at")?,
        revoked_at: opt("revoked_at")?,
    })
}

/// The admin-token part of the store (every `Store` is one).
#[async_trait]
pub trait AdminTokenStore: Send + Sync {
    /// Records a new token. A revoked or expired (at `now`) token of the
    /// same name is replaced; a live one is a `Conflict`, as is a hash
    /// already recorded.
    async fn admin_token_create(&self, t: &AdminToken, now: OffsetDateTime) -> Result<(), StoreError>;

    /// Records the token file's token under `t.name` (`bootstrap`): inserted
    /// when absent, replaced (new hash, dates, not revoked) when the stored
    /// one has another hash, left alone (revoked or expired included) when
    /// the hash is the same. `Conflict` if another name has this hash.
    async fn admin_token_put_file(&self, t: &AdminToken) -> Result<(), StoreError>;

    /// The token with this hash, if any (one indexed lookup).
    async fn admin_token_by_hash(&self, hash: &str) -> Result<Option<AdminToken>, StoreError>;

    /// Every token, by name (revoked and expired ones included).
    async fn admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError>;

    /// Revokes the live token `name` at `at`. False if there is no such
    /// live token.
    async fn admin_token_revoke(&self, name: &str, at: OffsetDateTime) -> Result<bool, StoreError>;

    /// Notes a use of `name` at `at`.
    async fn admin_token_used(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError>;
}
