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

/// A row read by column name, whichever driver read it: sqlx's rows of
/// both backends ([`SqlxRow`]) and rusqlite's, for the SQLite store's
/// point reads (see `sqlite::Fast`).
pub(crate) trait Cols {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
}

/// A sqlx row as [`Cols`].
pub(crate) struct SqlxRow<'a, R>(pub &'a R);

impl<R> Cols for SqlxRow<'_, R>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str) -> Result<String, StoreError> {
        get(self.0, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        get(self.0, col)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        get(self.0, col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        get(self.0, col)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        self.get(col).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.get(col).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.get(col).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.get(col).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    }
}

fn json_of<T: serde::de::DeserializeOwned>(c: &impl Cols, col: &str) -> Result<T, StoreError> {
    serde_json::from_str(&c.text(col)?).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
}

fn opt_time_of(c: &impl Cols, col: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    c.opt_int(col)?.map(from_ms).transpose()
}

/// Reads the lease columns (`LEASE_COLUMNS` of either backend).
pub(crate) fn lease_from_row<R>(row: &R) -> Result<Lease, StoreError>
where
    for<'a> SqlxRow<'a, R>: Cols,
{
    lease_from(&SqlxRow(row))
}

/// Reads the lease columns from a row of either driver.
pub(crate) fn lease_from(c: &impl Cols) -> Result<Lease, StoreError> {
    let state = c.text("state")?;
    let handle = c.opt_text("handle")?;
    let end_reason = c.opt_text("end_reason")?;
    Ok(Lease {
        id: LeaseId::new(c.text("id")?),
        role: c.text("role")?,
        plugin: c.text("plugin")?,
        issuer: c.text("issuer")?,
        subject: c.text("subject")?,
        claims: json_of(c, "claims")?,
        scopes: json_of(c, "scopes")?,
        policies: json_of(c, "policies")?,
        state: LeaseState::from_str(&state).map_err(StoreError::Corrupt)?,
        issued_at: from_ms(c.int("issued_at")?)?,
        expires_at: from_ms(c.int("expires_at")?)?,
        max_expires_at: from_ms(c.int("max_expires_at")?)?,
        handle: handle
            .map(|h| serde_json::from_str::<Handle>(&h))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("handle: {e}")))?,
        attempts: c.int("attempts")?,
        last_error: c.opt_text("last_error")?,
        next_attempt_at: opt_time_of(c, "next_attempt_at")?,
        end_reason: end_reason.map(|r| EndReason::from_str(&r)).transpose().map_err(StoreError::Corrupt)?,
        ended_at: opt_time_of(c, "ended_at")?,
        root_version: c.opt_int("root_version")?,
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

/// A `connection_secrets` row (`SECRET_COLUMNS`).
pub(crate) fn secret_from_row<R>(row: &R) -> Result<super::SecretVersion, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<bool>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, "state")?;
    let verification: Option<String> = get(row, "verification")?;
    Ok(super::SecretVersion {
        connection: get(row, "connection")?,
        version: get(row, "version")?,
        state: super::SecretState::from_str(&state).map_err(StoreError::Corrupt)?,
        ciphertext: get(row, "ciphertext")?,
        wrapped_dek: get(row, "wrapped_dek")?,
        kek_id: get(row, "kek_id")?,
        fingerprint: get(row, "fingerprint")?,
        set_by: get(row, "set_by")?,
        reason: get(row, "reason")?,
        set_at: from_ms(get(row, "set_at")?)?,
        verified_ok: get(row, "verified_ok")?,
        verification: verification
            .map(|v| serde_json::from_str(&v))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("verification: {e}")))?,
        verified_at: opt_time(row, "verified_at")?,
        approved_by: get(row, "approved_by")?,
        approved_at: opt_time(row, "approved_at")?,
        activated_by: get(row, "activated_by")?,
        activated_at: opt_time(row, "activated_at")?,
        retiring_until: opt_time(row, "retiring_until")?,
    })
}

/// The columns `secret_from_row` reads, for both backends.
pub(crate) const SECRET_COLUMNS: &str = "connection, version, state, ciphertext, wrapped_dek, kek_id, fingerprint, \
     set_by, reason, set_at, verified_ok, verification, verified_at, approved_by, approved_at, activated_by, \
     activated_at, retiring_until";

/// A `role, plugin, n` count row.
pub(crate) fn count_row<R>(row: &R) -> Result<(String, String, i64), StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok((get(row, "role")?, get(row, "plugin")?, get(row, "n")?))
}

/// A `role, plugin, state, n` count row.
pub(crate) fn state_count_row<R>(row: &R) -> Result<(String, String, LeaseState, i64), StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let st: String = get(row, "state")?;
    Ok((get(row, "role")?, get(row, "plugin")?, LeaseState::from_str(&st).map_err(StoreError::Corrupt)?, get(row, "n")?))
}

/// A `jobs` row, its progress not yet counted (see `JobStatus::count`).
pub(crate) fn job_from_row<R>(row: &R) -> Result<super::JobStatus, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(super::JobStatus {
        id: get(row, "id")?,
        kind: get(row, "kind")?,
        filter: json_col(row, "filter")?,
        created_by: get(row, "created_by")?,
        created_at_ms: get(row, "created_at")?,
        total: get(row, "total")?,
        done: 0,
        pending: 0,
        failing: 0,
        unrevocable: 0,
        unrevocable_until_ms: None,
    })
}

/// A job's progress by lease state, unrevocable leases apart
/// ([`super::Lease::unrevocable`]); rows for [`count_job_rows`]. `?` is the
/// job id (PostgreSQL callers renumber).
pub(crate) const JOB_PROGRESS_SQL: &str = "SELECT state, \
     CAST(CASE WHEN state = 'expired' AND end_reason IN ('revoked', 'orphaned') THEN 1 ELSE 0 END AS BIGINT) AS unrev, \
     COUNT(*) AS n, MAX(expires_at) AS until FROM leases WHERE job_id = ? GROUP BY 1, 2";

/// Adds a job's progress rows ([`JOB_PROGRESS_SQL`]) to `st`.
pub(crate) fn count_job_rows<R>(st: &mut super::JobStatus, rows: &[R]) -> Result<(), StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    for r in rows {
        let n: i64 = get(r, "n")?;
        if get::<R, i64>(r, "unrev")? == 1 {
            st.count_unrevocable(n, get(r, "until")?);
        } else {
            let state: String = get(r, "state")?;
            st.count(&state, n)?;
        }
    }
    Ok(())
}

/// Due lease rows that failed to decode, set aside by id so one bad row (an
/// unknown state after a downgrade, a corrupt JSON column) never holds up
/// the rest of the batch. Each backend excludes these ids from its due
/// queries. Entries are forgotten after [`Quarantine::RECHECK`], so a row
/// repaired by hand (or readable again after an upgrade) is picked up.
pub(crate) struct Quarantine {
    ids: moka::sync::Cache<String, ()>,
}

impl Quarantine {
    /// How long an undecodable row is left out before it is tried again.
    const RECHECK: std::time::Duration = std::time::Duration::from_secs(600);
    /// Most rows set aside at once (memory stays bounded).
    const MAX: u64 = 10_000;

    pub(crate) fn new() -> Quarantine {
        Quarantine { ids: moka::sync::Cache::builder().max_capacity(Self::MAX).time_to_live(Self::RECHECK).build() }
    }

    /// The ids set aside now.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.ids.iter().map(|(k, ())| (*k).clone()).collect()
    }

    /// Decodes due rows one by one: what decodes becomes due work (one entry
    /// per lease, first row wins); what does not is logged, counted and set
    /// aside. Returns the work and the ids set aside from this batch.
    pub(crate) fn decode_due<R>(&self, rows: &[R], backend: &str) -> (Vec<super::DueLease>, Vec<String>)
    where
        R: Row,
        for<'a> &'a str: ColumnIndex<R>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let mut out: Vec<super::DueLease> = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for row in rows {
            match lease_from_row(row) {
                Ok(lease) => {
                    // An active lease can match two branches (expired and scheduled).
                    if out.iter().any(|d| d.lease.id == lease.id) {
                        continue;
                    }
                    let reason = match lease.state {
                        LeaseState::Pending => EndReason::Orphaned,
                        _ => lease.end_reason.unwrap_or(EndReason::Expired),
                    };
                    out.push(super::DueLease { lease, reason });
                }
                Err(e) => {
                    let Ok(id) = get::<R, String>(row, "id") else {
                        tracing::warn!(store = backend, error = %e, "a due lease row has no readable id; skipped");
                        continue;
                    };
                    if bad.contains(&id) {
                        continue;
                    }
                    tracing::warn!(store = backend, lease_id = %id, error = %e,
                        "lease row cannot be decoded; set aside (not revoked) until it is readable, the rest of the batch goes on");
                    crate::telemetry::metrics().lease_rows_undecodable.inc();
                    self.ids.insert(id.clone(), ());
                    bad.push(id);
                }
            }
        }
        (out, bad)
    }
}
