//! Turning a lease row into a `Lease`, the same for every backend: the
//! columns and their encodings (unix ms, JSON text) are shared by the
//! migrations of both.

use std::str::FromStr;

use lessor_plugin::{Handle, LeaseId};
use sqlx::{ColumnIndex, Decode, Row, Type};
use time::OffsetDateTime;

use super::{from_ms, EndReason, Lease, LeaseState, StoreError};

/// A column that does not decode is corrupt data, not an outage.
pub(crate) fn decode_err(e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn get<'r, R, T>(row: &'r R, col: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(col).map_err(decode_err)
}

/// A JSON text column.
pub(crate) fn json_col<R, T>(row: &R, col: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    T: serde::de::DeserializeOwned,
{
    let s: String = get(row, col)?;
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
}

fn opt_time<R>(row: &R, col: &str) -> Result<Option<OffsetDateTime>, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let v: Option<i64> = get(row, col)?;
    v.map(from_ms).transpose()
}

/// Reads the lease columns (`LEASE_COLUMNS` of either backend).
pub(crate) fn lease_from_row<R>(row: &R) -> Result<Lease, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, "state")?;
    let handle: Option<String> = get(row, "handle")?;
    let end_reason: Option<String> = get(row, "end_reason")?;
    Ok(Lease {
        id: LeaseId::new(get::<R, String>(row, "id")?),
        role: get(row, "role")?,
        plugin: get(row, "plugin")?,
        issuer: get(row, "issuer")?,
        subject: get(row, "subject")?,
        claims: json_col(row, "claims")?,
        scopes: json_col(row, "scopes")?,
        policies: json_col(row, "policies")?,
        state: LeaseState::from_str(&state).map_err(StoreError::Corrupt)?,
        issued_at: from_ms(get(row, "issued_at")?)?,
        expires_at: from_ms(get(row, "expires_at")?)?,
        max_expires_at: from_ms(get(row, "max_expires_at")?)?,
        handle: handle
            .map(|h| serde_json::from_str::<Handle>(&h))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("handle: {e}")))?,
        attempts: get(row, "attempts")?,
        last_error: get(row, "last_error")?,
        next_attempt_at: opt_time(row, "next_attempt_at")?,
        end_reason: end_reason.map(|r| EndReason::from_str(&r)).transpose().map_err(StoreError::Corrupt)?,
        ended_at: opt_time(row, "ended_at")?,
    })
}

/// A `replicas` row.
pub(crate) fn replica_from_row<R>(row: &R) -> Result<super::Replica, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(super::Replica {
        id: get(row, "id")?,
        host: get(row, "host")?,
        pid: get(row, "pid")?,
        version: get(row, "version")?,
        policy_version: get(row, "policy_version")?,
        started_at_ms: get(row, "started_at")?,
        seen_at_ms: get(row, "seen_at")?,
    })
}
