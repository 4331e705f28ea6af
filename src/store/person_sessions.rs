//! Sessions of signed-in people as stored: the session token's SHA-256
//! (never the token), a public id, the person and the session's times.
//! Both backends implement [`PersonSessionStore`] in a child module
//! (`sqlite/person_sessions.rs`, `postgres/person_sessions.rs`); columns and
//! encodings (unix ms, groups as JSON text) are the same in both migrations
//! (0012).

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Row, Type};
use time::OffsetDateTime;

use super::{from_ms, StoreError};

/// One person session's record. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonSession {
    pub token_hash: String,
    /// Public handle (`ps_...`): names the session in the audit log.
    pub id: String,
    /// The provider's name in `[people.providers]`.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
    /// How the person signed in: `browser` or `device`.
    pub via: String,
    pub created_at: OffsetDateTime,
    /// Ends here unless used again (moved forward by use, never past
    /// `expires_at`).
    pub idle_expires_at: OffsetDateTime,
    /// The absolute end.
    pub expires_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
    /// `signed_out`, `signed_out_everywhere`.
    pub end_reason: Option<String>,
}

impl PersonSession {
    /// Why it is not live at `now`, or None when it is.
    pub fn ended_why(&self, now: OffsetDateTime) -> Option<&'static str> {
        if self.ended_at.is_some() {
            Some("signed_out")
        } else if self.expires_at <= now {
            Some("absolute_timeout")
        } else if self.idle_expires_at <= now {
            Some("idle_timeout")
        } else {
            None
        }
    }
}

pub(crate) const PERSON_SESSION_COLUMNS: &str = "token_hash, id, provider, issuer, subject, email, name, groups_json, via, \
     created_at, idle_expires_at, expires_at, ended_at, end_reason";

pub(crate) fn person_session_from_row<R>(row: &R) -> Result<PersonSession, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let err = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    let groups: String = row.try_get("groups_json").map_err(err)?;
    let groups = serde_json::from_str(&groups).map_err(|e| StoreError::Corrupt(format!("person session groups: {e}")))?;
    Ok(PersonSession {
        token_hash: row.try_get("token_hash").map_err(err)?,
        id: row.try_get("id").map_err(err)?,
        provider: row.try_get("provider").map_err(err)?,
        issuer: row.try_get("issuer").map_err(err)?,
        subject: row.try_get("subject").map_err(err)?,
        email: row.try_get("email").map_err(err)?,
        name: row.try_get("name").map_err(err)?,
        groups,
        via: row.try_get("via").map_err(err)?,
        created_at: from_ms(row.try_get("created_at").map_err(err)?)?,
        idle_expires_at: from_ms(row.try_get("idle_expires_at").map_err(err)?)?,
        expires_at: from_ms(row.try_get("expires_at").map_err(err)?)?,
        ended_at: row.try_get::<Option<i64>, _>("ended_at").map_err(err)?.map(from_ms).transpose()?,
        end_reason: row.try_get("end_reason").map_err(err)?,
    })
}

pub(crate) fn groups_json(s: &PersonSession) -> Result<String, StoreError> {
    serde_json::to_string(&s.groups).map_err(|e| StoreError::Corrupt(format!("person session groups: {e}")))
}

/// The person-session part of the store (every `Store` is one).
#[async_trait]
pub trait PersonSessionStore: Send + Sync {
    /// Records a new session (`Conflict` if its hash or id exists).
    async fn person_session_create(&self, s: &PersonSession) -> Result<(), StoreError>;

    /// The session with this token hash, if any (one indexed lookup).
    async fn person_session_by_hash(&self, hash: &str) -> Result<Option<PersonSession>, StoreError>;

    /// Moves a live session's idle end to `idle_expires_at` (never past its
    /// absolute end, never backwards). False if it is not live at `now`.
    async fn person_session_touch(&self, hash: &str, now: OffsetDateTime, idle_expires_at: OffsetDateTime) -> Result<bool, StoreError>;

    /// Ends a live session at `at` for `reason`. False if it was not live.
    async fn person_session_end(&self, hash: &str, at: OffsetDateTime, reason: &str) -> Result<bool, StoreError>;

    /// Ends every live session of one person; returns how many.
    async fn person_sessions_end_all(&self, provider: &str, subject: &str, at: OffsetDateTime, reason: &str) -> Result<u64, StoreError>;

    /// Deletes up to `limit` sessions that ended (timed out or signed out)
    /// before `before`; returns how many.
    async fn person_sessions_prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError>;
}
