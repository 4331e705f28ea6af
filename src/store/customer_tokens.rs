//! Customer API tokens as stored (issue 13): one row per token (never the
//! token: its SHA-256 and last 4 characters), the last uses of each token
//! and its uses per day. Both backends implement [`CustomerTokenStore`] in a
//! child module (`sqlite/customer_tokens.rs`, `postgres/customer_tokens.rs`)
//! with the SQL below (written with `?N` placeholders; PostgreSQL's module
//! renumbers them `$N`); migration 0013 has the same columns in both.
//!
//! Clock rule: every time is the caller's (`at`, `now`); no method reads a
//! clock, so tests move time by passing it.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Row, Type};
use time::OffsetDateTime;

use super::{from_ms, StoreError};

/// One customer token's record. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerToken {
    /// Public id (`ctk_` + 16 hex), used in URLs and the audit.
    pub id: String,
    /// SHA-256 (hex) of the token.
    pub token_hash: String,
    /// The token's last 4 characters (shown with its prefix).
    pub last4: String,
    pub account: String,
    pub environment: String,
    pub name: String,
    /// The owner's person id (`provider#subject`).
    pub owner: String,
    pub owner_email: String,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    /// Person id of the creator (the rotator, for a replacement).
    pub created_by: String,
    pub expires_at: OffsetDateTime,
    /// The token this one replaced (rotation).
    pub replaces: Option<String>,
    /// The token that replaced this one.
    pub replaced_by: Option<String>,
    pub rotated_at: Option<OffsetDateTime>,
    pub rotated_by: Option<String>,
    /// End of the overlap after a rotation (`retiring` until then).
    pub retiring_until: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub revoked_by: Option<String>,
    pub last_used_at: Option<OffsetDateTime>,
    pub expiry_warned_at: Option<OffsetDateTime>,
    pub rotation_warned_at: Option<OffsetDateTime>,
}

impl CustomerToken {
    /// When the token stops working by itself: its expiry, or the end of
    /// its rotation overlap if that is earlier.
    pub fn ends_at(&self) -> OffsetDateTime {
        match self.retiring_until {
            Some(r) if r < self.expires_at => r,
            _ => self.expires_at,
        }
    }

    /// Accepted at `now`: not revoked and not past [`Self::ends_at`].
    pub fn works_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.ends_at()
    }
}

/// One use of a token (an introspection that found it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    pub token_id: String,
    pub at: OffsetDateTime,
    /// The address the resource server reported (or its own), bounded.
    pub source: String,
    /// The user agent the resource server reported, bounded.
    pub user_agent: String,
    /// Whether the token was accepted.
    pub ok: bool,
}

/// Uses of one token on one UTC day (`YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCount {
    pub day: String,
    pub ok: i64,
    pub failed: i64,
}

/// Live tokens of one account, for metrics: working and not replaced
/// (`active`), replaced and in their overlap (`retiring`), active ones
/// expiring before the warning bound, and active ones created before the
/// rotation bound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountTokenCounts {
    pub account: String,
    pub active: i64,
    pub retiring: i64,
    pub expiring: i64,
    pub not_rotated: i64,
}

/// Which warning a token was given (once per token and kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWarning {
    Expiry,
    Rotation,
}

pub(crate) const CT_COLUMNS: &str = "id, token_hash, last4, account, environment, name, owner, owner_email, scopes, \
     created_at, created_by, expires_at, replaces, replaced_by, rotated_at, rotated_by, retiring_until, revoked_at, \
     revoked_by, last_used_at, expiry_warned_at, rotation_warned_at";

pub(crate) const CT_INSERT: &str = "INSERT INTO customer_tokens (id, token_hash, last4, account, environment, name, \
     owner, owner_email, scopes, created_at, created_by, expires_at, replaces) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// Marks the old token of a rotation: ?1 retiring_until, ?2 rotated_at,
/// ?3 rotated_by, ?4 replaced_by, ?5 id. Only a working token that was not
/// replaced yet.
pub(crate) const CT_ROTATE_OLD: &str = "UPDATE customer_tokens SET retiring_until = ?1, rotated_at = ?2, rotated_by = ?3, \
     replaced_by = ?4 WHERE id = ?5 AND revoked_at IS NULL AND replaced_by IS NULL AND expires_at > ?2";

pub(crate) const CT_REVOKE: &str = "UPDATE customer_tokens SET revoked_at = ?1, revoked_by = ?2 \
     WHERE id = ?3 AND revoked_at IS NULL AND expires_at > ?1 AND (retiring_until IS NULL OR retiring_until > ?1)";

pub(crate) const CT_USED: &str =
    "UPDATE customer_tokens SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)";

pub(crate) const CT_USE_INSERT: &str =
    "INSERT INTO customer_token_uses (token_id, at, source, user_agent, ok) VALUES (?1, ?2, ?3, ?4, ?5)";

pub(crate) const CT_DAY_UPSERT: &str = "INSERT INTO customer_token_days (token_id, day, ok, failed) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (token_id, day) DO UPDATE SET ok = customer_token_days.ok + excluded.ok, \
     failed = customer_token_days.failed + excluded.failed";

/// Keeps the last ?3 uses of token ?1 (?2 = ?1).
pub(crate) const CT_USES_PRUNE: &str = "DELETE FROM customer_token_uses WHERE token_id = ?1 AND id NOT IN \
     (SELECT id FROM customer_token_uses WHERE token_id = ?2 ORDER BY id DESC LIMIT ?3)";

/// Working, not replaced tokens that need a warning not given yet:
/// ?1 now, ?2 expiring-before bound, ?3 created-before bound, ?4 limit.
pub(crate) fn ct_needing_warning_sql() -> String {
    format!(
        "SELECT {CT_COLUMNS} FROM customer_tokens WHERE revoked_at IS NULL AND replaced_by IS NULL AND expires_at > ?1 \
         AND ((expires_at <= ?2 AND expiry_warned_at IS NULL) OR (created_at <= ?3 AND rotation_warned_at IS NULL)) \
         ORDER BY expires_at LIMIT ?4"
    )
}

/// Per-account counts of live tokens: ?1 now, ?2 expiring bound, ?3 created bound.
pub(crate) const CT_COUNTS: &str = "SELECT account, \
     CAST(SUM(CASE WHEN replaced_by IS NULL THEN 1 ELSE 0 END) AS BIGINT) AS active, \
     CAST(SUM(CASE WHEN replaced_by IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) AS retiring, \
     CAST(SUM(CASE WHEN replaced_by IS NULL AND expires_at <= ?2 THEN 1 ELSE 0 END) AS BIGINT) AS expiring, \
     CAST(SUM(CASE WHEN replaced_by IS NULL AND created_at <= ?3 THEN 1 ELSE 0 END) AS BIGINT) AS not_rotated \
     FROM customer_tokens WHERE revoked_at IS NULL AND expires_at > ?1 \
     AND (retiring_until IS NULL OR retiring_until > ?1) GROUP BY account ORDER BY account";

/// Tokens whose end (revocation, expiry, overlap end) is before ?1.
pub(crate) const CT_ENDED_IDS: &str = "SELECT id FROM customer_tokens WHERE (revoked_at IS NOT NULL AND revoked_at < ?1) \
     OR expires_at < ?1 OR (retiring_until IS NOT NULL AND retiring_until < ?1) LIMIT ?2";

pub(crate) fn day_of(t: OffsetDateTime) -> String {
    let d = t.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

pub(crate) fn customer_token_from_row<R>(row: &R) -> Result<CustomerToken, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let err = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    let s = |col: &str| -> Result<String, StoreError> { row.try_get::<String, _>(col).map_err(err) };
    let os = |col: &str| -> Result<Option<String>, StoreError> { row.try_get::<Option<String>, _>(col).map_err(err) };
    let t = |col: &str| -> Result<OffsetDateTime, StoreError> { from_ms(row.try_get::<i64, _>(col).map_err(err)?) };
    let ot = |col: &str| -> Result<Option<OffsetDateTime>, StoreError> {
        row.try_get::<Option<i64>, _>(col).map_err(err)?.map(from_ms).transpose()
    };
    let scopes: Vec<String> = serde_json::from_str(&s("scopes")?)
        .map_err(|e| StoreError::Corrupt(format!("customer token scopes: {e}")))?;
    Ok(CustomerToken {
        id: s("id")?,
        token_hash: s("token_hash")?,
        last4: s("last4")?,
        account: s("account")?,
        environment: s("environment")?,
        name: s("name")?,
        owner: s("owner")?,
        owner_email: s("owner_email")?,
        scopes,
        created_at: t("created_at")?,
        created_by: s("created_by")?,
        expires_at: t("expires_at")?,
        replaces: os("replaces")?,
        replaced_by: os("replaced_by")?,
        rotated_at: ot("rotated_at")?,
        rotated_by: os("rotated_by")?,
        retiring_until: ot("retiring_until")?,
        revoked_at: ot("revoked_at")?,
        revoked_by: os("revoked_by")?,
        last_used_at: ot("last_used_at")?,
        expiry_warned_at: ot("expiry_warned_at")?,
        rotation_warned_at: ot("rotation_warned_at")?,
    })
}

pub(crate) fn counts_from_row<R>(row: &R) -> Result<AccountTokenCounts, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let err = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(AccountTokenCounts {
        account: row.try_get("account").map_err(err)?,
        active: row.try_get("active").map_err(err)?,
        retiring: row.try_get("retiring").map_err(err)?,
        expiring: row.try_get("expiring").map_err(err)?,
        not_rotated: row.try_get("not_rotated").map_err(err)?,
    })
}

/// The customer-token part of the store (every `Store` is one).
#[async_trait]
pub trait CustomerTokenStore: Send + Sync {
    /// Records a new token. `Conflict` if its id or hash exists.
    async fn ct_insert(&self, t: &CustomerToken) -> Result<(), StoreError>;

    /// One transaction: the working, not yet replaced token `old_id` turns
    /// retiring until `retiring_until` (rotated at `new.created_at` by
    /// `new.created_by`, replaced by `new.id`) and `new` is inserted. False
    /// (and nothing changed) when `old_id` is not such a token (a racing
    /// rotation or revocation won).
    async fn ct_rotate(&self, old_id: &str, new: &CustomerToken, retiring_until: OffsetDateTime) -> Result<bool, StoreError>;

    /// Revokes `id` at `at` by `by` if it still works at `at`. False if it
    /// was already revoked or had ended.
    async fn ct_revoke(&self, id: &str, at: OffsetDateTime, by: &str) -> Result<bool, StoreError>;

    /// The token with this hash (one indexed lookup).
    async fn ct_by_hash(&self, hash: &str) -> Result<Option<CustomerToken>, StoreError>;

    async fn ct_get(&self, id: &str) -> Result<Option<CustomerToken>, StoreError>;

    /// The account's tokens, newest first, ended ones included, at most `limit`.
    async fn ct_list(&self, account: &str, limit: u32) -> Result<Vec<CustomerToken>, StoreError>;

    /// Notes that `id` was given `kind` at `at`. True for the one caller
    /// that set it (so a warning is audited once across replicas).
    async fn ct_mark_warned(&self, id: &str, kind: TokenWarning, at: OffsetDateTime) -> Result<bool, StoreError>;

    /// Working, not replaced tokens expiring at or before `expiring_before`
    /// without an expiry warning, or created at or before `created_before`
    /// without a rotation warning; at most `limit`, soonest expiry first.
    async fn ct_needing_warning(
        &self,
        now: OffsetDateTime,
        expiring_before: OffsetDateTime,
        created_before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<CustomerToken>, StoreError>;

    /// Per-account counts of the tokens that work at `now`.
    async fn ct_counts(
        &self,
        now: OffsetDateTime,
        expiring_before: OffsetDateTime,
        created_before: OffsetDateTime,
    ) -> Result<Vec<AccountTokenCounts>, StoreError>;

    /// Records a batch of uses in one write: each use, its day's count, the
    /// token's `last_used_at` (never moved back), then keeps the last
    /// `keep` uses per token.
    async fn ct_record_uses(&self, uses: &[TokenUse], keep: u32) -> Result<(), StoreError>;

    /// The last `limit` uses of `id`, newest first.
    async fn ct_uses(&self, id: &str, limit: u32) -> Result<Vec<TokenUse>, StoreError>;

    /// Uses per day of `id`, newest day first.
    async fn ct_days(&self, id: &str) -> Result<Vec<DayCount>, StoreError>;

    /// Deletes at most `limit` tokens that ended before `ended_before` (with
    /// their uses and days) and every day count older than `days_before`
    /// (`YYYY-MM-DD`). Returns the tokens deleted.
    async fn ct_prune(&self, ended_before: OffsetDateTime, days_before: &str, limit: u32) -> Result<u64, StoreError>;
}

pub(crate) fn use_from_row<R>(row: &R) -> Result<TokenUse, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let err = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(TokenUse {
        token_id: row.try_get("token_id").map_err(err)?,
        at: from_ms(row.try_get("at").map_err(err)?)?,
        source: row.try_get("source").map_err(err)?,
        user_agent: row.try_get("user_agent").map_err(err)?,
        ok: row.try_get("ok").map_err(err)?,
    })
}

pub(crate) fn day_from_row<R>(row: &R) -> Result<DayCount, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let err = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(DayCount {
        day: row.try_get("day").map_err(err)?,
        ok: row.try_get("ok").map_err(err)?,
        failed: row.try_get("failed").map_err(err)?,
    })
}
