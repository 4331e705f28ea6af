//! SQLite backend (the embedded default): WAL, `synchronous = FULL` so an
//! acknowledged lease survives `kill -9` and power loss, and an exclusive
//! lock file so two processes never share one database file.
//!
//! Why one file: it implements the whole `Store` trait in SQLite's dialect,
//! next to its writer task; it splits along with the trait (leases, jobs,
//! secrets, plugin state, cluster: issue 12).

use std::fs::File;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::{Handle, LeaseId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use time::OffsetDateTime;

use super::{
    from_ms, to_ms, DueLease, EndReason, JobStatus, Lease, LeaseCounts, LeaseFilter, RevokeFilter, RoleCounts,
    Store, StoreError,
};

/// A value bound to a write statement.
enum Bind {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

/// One statement of a write; `must_affect`: the write is undone unless it
/// changes at least one row (multi-statement writes only).
struct Stmt {
    sql: String,
    binds: Vec<Bind>,
    must_affect: bool,
}

/// A write: one statement (its own result), or several that commit
/// together or not at all (answered 1 if done, 0 if undone because a
/// `must_affect` statement changed nothing).
struct WriteReq {
    stmts: Vec<Stmt>,
    reply: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
}

/// Group commit: one task owns the writing connection, takes every write
/// that is queued, runs them in one transaction and commits once (one
/// fsync), then answers each with its own result. Under load, concurrent
/// requests share a commit; alone, a write commits at once.
#[derive(Clone)]
struct Writer {
    tx: tokio::sync::mpsc::Sender<WriteReq>,
}

const MAX_BATCH: usize = 256;

impl Writer {
    fn spawn(mut conn: sqlx::SqliteConnection) -> Writer {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<WriteReq>(4096);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            // Ends when every sender (every clone of the store) is gone.
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                Writer::run(&mut conn, &mut batch).await;
            }
            let _ = sqlx::Connection::close(conn).await;
        });
        Writer { tx }
    }

    async fn run(conn: &mut sqlx::SqliteConnection, batch: &mut Vec<WriteReq>) {
        use sqlx::Connection;
        let mut tx = match conn.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
                return;
            }
        };
        let mut results = Vec::with_capacity(batch.len());
        for r in batch.iter_mut() {
            if r.stmts.len() == 1 {
                // A failed statement (a duplicate id) is undone alone; SQLite
                // keeps the rest of the transaction.
                results.push(Writer::one(&mut tx, &mut r.stmts[0]).await);
            } else {
                results.push(Writer::all_or_nothing(&mut tx, &mut r.stmts).await);
            }
        }
        match tx.commit().await {
            Ok(()) => {
                for (r, res) in batch.drain(..).zip(results) {
                    let _ = r.reply.send(res);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(StoreError::Unavailable(format!("commit failed: {msg}"))));
                }
            }
        }
    }

    async fn one(conn: &mut sqlx::SqliteConnection, st: &mut Stmt) -> Result<u64, StoreError> {
        let mut q = sqlx::query(&st.sql);
        for b in st.binds.drain(..) {
            q = match b {
                Bind::Int(v) => q.bind(v),
                Bind::OptInt(v) => q.bind(v),
                Bind::Text(v) => q.bind(v),
                Bind::Blob(v) => q.bind(v),
                Bind::Bool(v) => q.bind(v),
            };
        }
        q.execute(&mut *conn).await.map(|d| d.rows_affected()).map_err(interpret_error)
    }

    /// Runs `stmts` inside a savepoint of the batch's transaction and undoes
    /// them all when one fails or a `must_affect` one changes nothing.
    async fn all_or_nothing(conn: &mut sqlx::SqliteConnection, stmts: &mut [Stmt]) -> Result<u64, StoreError> {
        use sqlx::Executor;
        conn.execute("SAVEPOINT multi").await.map_err(interpret_error)?;
        let mut outcome = Ok(1);
        for st in stmts.iter_mut() {
            match Writer::one(conn, st).await {
                Ok(0) if st.must_affect => {
                    outcome = Ok(0);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if !matches!(outcome, Ok(1)) {
            conn.execute("ROLLBACK TO multi").await.map_err(interpret_error)?;
        }
        conn.execute("RELEASE multi").await.map_err(interpret_error)?;
        outcome
    }

    async fn exec(&self, sql: impl Into<String>, binds: Vec<Bind>) -> Result<u64, StoreError> {
        self.exec_all(vec![Stmt { sql: sql.into(), binds, must_affect: false }]).await
    }

    async fn exec_all(&self, stmts: Vec<Stmt>) -> Result<u64, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriteReq { stmts, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?
    }
}

mod admin_tokens;
mod sessions;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

const LEASE_COLUMNS: &str = "id, role, plugin, issuer, subject, claims, scopes, policies, state, issued_at, \
     expires_at, max_expires_at, handle, attempts, last_error, next_attempt_at, end_reason, ended_at, root_version";

const LIVE: &str = "('pending', 'active', 'revoke_failed')";

/// Leaves out the due rows set aside as undecodable (`?4`: JSON array of ids).
const NOT_SET_ASIDE: &str = "id NOT IN (SELECT value FROM json_each(?4))";

pub struct SqliteStore {
    /// Readers (WAL lets them run beside the writer).
    read: SqlitePool,
    /// The one writer. SQLite admits one writer at a time; funnelling writes
    /// through one connection queues them (async, in order) instead of
    /// letting connections collide and back off in SQLite's busy handler,
    /// which sleeps for up to 100 ms at a time, and lets them share commits.
    writer: Writer,
    // Held for the life of the store: the OS lock that keeps a second
    // process off this database.
    _lock: Option<File>,
    /// This process's replica id (there is only ever one on SQLite).
    id: String,
    /// Due rows that did not decode, left out of `due()` by id.
    quarantine: Quarantine,
}

fn interpret_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let p = Path::new(path);
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock_path = format!("{path}.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {lock_path}: {e}")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(lock_path)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Unavailable(format!("cannot lock {lock_path}: {e}")))
            }
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let mut write = sqlx::ConnectOptions::connect(&opts).await.map_err(interpret_error)?;
        MIGRATOR
            .run(&mut write)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await
            .map_err(interpret_error)?;
        let writer = Writer::spawn(write);
        // One process per SQLite store (the lock above): a replica row left
        // by an earlier process is stale.
        writer.exec("DELETE FROM replicas", vec![]).await?;
        let id = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 8]>()));
        Ok(SqliteStore { read, writer, _lock: Some(lock), id, quarantine: Quarantine::new() })
    }
}

use super::rows::{lease_from_row, secret_from_row, Quarantine, JOB_PROGRESS_SQL, SECRET_COLUMNS};
use super::{switch_condition, Rewrap, SecretSwitch, SecretVersion};

fn push_filter(qb: &mut QueryBuilder<'_, Sqlite>, f: &LeaseFilter) {
    if let Some(r) = &f.role {
        qb.push(" AND role = ").push_bind(r.clone());
    }
    if let Some(i) = &f.issuer {
        qb.push(" AND issuer = ").push_bind(i.clone());
    }
    if let Some(s) = &f.subject {
        qb.push(" AND subject = ").push_bind(s.clone());
    }
    if let Some(st) = f.state {
        qb.push(" AND state = ").push_bind(st.as_str());
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn exclusive(&self) -> bool {
        true
    }

    async fn try_lock(&self, _name: &str) -> Result<Option<super::StoreLock>, StoreError> {
        // The lock file makes this process the store's only user.
        Ok(Some(super::StoreLock::local()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await.map_err(interpret_error)?;
        Ok(())
    }

    async fn insert_pending(&self, l: &Lease) -> Result<(), StoreError> {
        self.writer
            .exec(
                "INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state, \
                 issued_at, expires_at, max_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                vec![
                    Bind::Text(l.id.to_string()),
                    Bind::Text(l.role.clone()),
                    Bind::Text(l.plugin.clone()),
                    Bind::Text(l.issuer.clone()),
                    Bind::Text(l.subject.clone()),
                    Bind::Text(to_json(&l.claims)?),
                    Bind::Text(to_json(&l.scopes)?),
                    Bind::Text(to_json(&l.policies)?),
                    Bind::Int(to_ms(l.issued_at)),
                    Bind::Int(to_ms(l.expires_at)),
                    Bind::Int(to_ms(l.max_expires_at)),
                ],
            )
            .await?;
        Ok(())
    }

    async fn activate_at_version(
        &self,
        id: &LeaseId,
        handle: &Handle,
        expires_at: OffsetDateTime,
        root_version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE leases SET state = 'active', handle = ?, expires_at = ?, root_version = ? \
                 WHERE id = ? AND state = 'pending' AND end_reason IS NOT 'orphaned'",
                vec![
                    Bind::Text(to_json(handle)?),
                    Bind::Int(to_ms(expires_at)),
                    Bind::OptInt(root_version),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn secret_insert(&self, v: &SecretVersion) -> Result<(), StoreError> {
        self.writer
            .exec(
                "INSERT INTO connection_secrets (connection, version, state, ciphertext, wrapped_dek, kek_id, \
                 fingerprint, set_by, reason, set_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    Bind::Text(v.connection.clone()),
                    Bind::Int(v.version),
                    Bind::Text(v.state.as_str().into()),
                    Bind::Blob(v.ciphertext.clone()),
                    Bind::Blob(v.wrapped_dek.clone()),
                    Bind::Text(v.kek_id.clone()),
                    Bind::Text(v.fingerprint.clone()),
                    Bind::Text(v.set_by.clone()),
                    Bind::Text(v.reason.clone()),
                    Bind::Int(to_ms(v.set_at)),
                ],
            )
            .await?;
        Ok(())
    }

    async fn secret_versions(&self, connection: Option<&str>) -> Result<Vec<SecretVersion>, StoreError> {
        let rows = match connection {
            Some(c) => sqlx::query(&format!(
                "SELECT {SECRET_COLUMNS} FROM connection_secrets WHERE connection = ? ORDER BY connection, version"
            ))
            .bind(c)
            .fetch_all(&self.read)
            .await,
            None => sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM connection_secrets ORDER BY connection, version"))
                .fetch_all(&self.read)
                .await,
        }
        .map_err(interpret_error)?;
        rows.iter().map(secret_from_row).collect()
    }

    async fn secret_active_version(&self, connection: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT version FROM connection_secrets WHERE connection = ? AND state = 'active'")
            .bind(connection)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.map(|r| r.try_get::<i64, _>("version").map_err(interpret_error)).transpose()
    }

    async fn secret_verified(
        &self,
        connection: &str,
        version: i64,
        ok: bool,
        result: &serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE connection_secrets SET verified_ok = ?, verification = ?, verified_at = ? \
                 WHERE connection = ? AND version = ? AND state <> 'retired'",
                vec![
                    Bind::Bool(ok),
                    Bind::Text(to_json(result)?),
                    Bind::Int(to_ms(at)),
                    Bind::Text(connection.into()),
                    Bind::Int(version),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn secret_approve(&self, connection: &str, version: i64, by: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE connection_secrets SET approved_by = ?, approved_at = ? \
                 WHERE connection = ? AND version = ? AND state = 'candidate' AND set_by <> ?",
                vec![
                    Bind::Text(by.into()),
                    Bind::Int(to_ms(at)),
                    Bind::Text(connection.into()),
                    Bind::Int(version),
                    Bind::Text(by.into()),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn secret_switch(&self, s: &SecretSwitch) -> Result<bool, StoreError> {
        let (cond, extra) = switch_condition(s);
        let mut binds = vec![
            Bind::Text(s.by.clone()),
            Bind::Int(to_ms(s.at)),
            Bind::Text(s.connection.clone()),
            Bind::Int(s.version),
            Bind::Text(s.from.as_str().into()),
        ];
        binds.extend(extra.into_iter().map(Bind::Int));
        let n = self
            .writer
            .exec_all(vec![
                Stmt {
                    sql: "UPDATE connection_secrets SET state = 'retiring', retiring_until = ? \
                          WHERE connection = ? AND state = 'active'"
                        .into(),
                    binds: vec![Bind::Int(to_ms(s.retiring_until)), Bind::Text(s.connection.clone())],
                    must_affect: false,
                },
                Stmt {
                    sql: format!(
                        "UPDATE connection_secrets SET state = 'active', activated_by = ?, activated_at = ?, \
                         retiring_until = NULL WHERE connection = ? AND version = ? AND state = ? {cond}"
                    ),
                    binds,
                    must_affect: true,
                },
            ])
            .await?;
        Ok(n == 1)
    }

    async fn secret_retire_due(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.writer
            .exec(
                "UPDATE connection_secrets SET state = 'retired' WHERE state = 'retiring' AND retiring_until <= ?",
                vec![Bind::Int(to_ms(now))],
            )
            .await
    }

    async fn secret_rewrap(&self, rows: &[Rewrap]) -> Result<bool, StoreError> {
        if rows.is_empty() {
            return Ok(true);
        }
        let mut stmts: Vec<Stmt> = rows
            .iter()
            .map(|r| Stmt {
                sql: "UPDATE connection_secrets SET wrapped_dek = ?, kek_id = ? \
                      WHERE connection = ? AND version = ? AND kek_id = ?"
                    .into(),
                binds: vec![
                    Bind::Blob(r.wrapped_dek.clone()),
                    Bind::Text(r.kek_id.clone()),
                    Bind::Text(r.connection.clone()),
                    Bind::Int(r.version),
                    Bind::Text(r.old_kek_id.clone()),
                ],
                must_affect: true,
            })
            .collect();
        if stmts.len() == 1 {
            // exec_all needs two statements to use a savepoint; one is atomic.
            let st = stmts.remove(0);
            return Ok(self.writer.exec(st.sql, st.binds).await? == 1);
        }
        Ok(self.writer.exec_all(stmts).await? == 1)
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?"))
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(lease_from_row).transpose()
    }

    async fn list(&self, f: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {LEASE_COLUMNS} FROM leases WHERE 1 = 1"));
        push_filter(&mut qb, f);
        qb.push(" ORDER BY issued_at DESC LIMIT ").push_bind(f.limit.max(1) as i64);
        let rows = qb.build().fetch_all(&self.read).await.map_err(interpret_error)?;
        rows.iter().map(lease_from_row).collect()
    }

    async fn renew(&self, id: &LeaseId, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE leases SET expires_at = ? WHERE id = ? AND state = 'active' AND end_reason IS NULL AND expires_at > ?",
                vec![Bind::Int(to_ms(expires_at)), Bind::Text(id.to_string()), Bind::Int(to_ms(now))],
            )
            .await?;
        Ok(n == 1)
    }

    async fn finish(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                format!(
                    "UPDATE leases SET state = ?, end_reason = ?, ended_at = ?, next_attempt_at = NULL \
                     WHERE id = ? AND state IN {LIVE}"
                ),
                vec![
                    Bind::Text(reason.final_state().as_str().into()),
                    Bind::Text(reason.as_str().into()),
                    Bind::Int(to_ms(at)),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn record_failure(
        &self,
        id: &LeaseId,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.writer
            .exec(
                format!(
                    "UPDATE leases SET state = 'revoke_failed', end_reason = ?, attempts = attempts + 1, \
                     last_error = ?, next_attempt_at = ? WHERE id = ? AND state IN {LIVE}"
                ),
                vec![
                    Bind::Text(reason.as_str().into()),
                    Bind::Text(error.to_owned()),
                    Bind::Int(to_ms(retry_at)),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn mark_orphaned(&self, id: &LeaseId) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE leases SET end_reason = 'orphaned' WHERE id = ? AND state = 'pending'",
                vec![Bind::Text(id.to_string())],
            )
            .await?;
        Ok(n == 1)
    }

    async fn finish_unrevocable(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                format!(
                    "UPDATE leases SET state = 'expired', end_reason = ?, ended_at = ?, next_attempt_at = NULL \
                     WHERE id = ? AND state IN {LIVE}"
                ),
                vec![Bind::Text(reason.as_str().into()), Bind::Int(to_ms(at)), Bind::Text(id.to_string())],
            )
            .await?;
        Ok(n == 1)
    }

    async fn record_late_failure(
        &self,
        id: &LeaseId,
        handle: &Handle,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.writer
            .exec(
                "UPDATE leases SET state = 'revoke_failed', handle = ?, end_reason = ?, ended_at = NULL, \
                 attempts = attempts + 1, last_error = ?, next_attempt_at = ? \
                 WHERE id = ? AND state IN ('revoked', 'expired', 'revoke_failed')",
                vec![
                    Bind::Text(to_json(handle)?),
                    Bind::Text(reason.as_str().into()),
                    Bind::Text(error.to_owned()),
                    Bind::Int(to_ms(retry_at)),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn prune_ended(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        // One bounded statement per call through the writer (no long hold of
        // the one write connection); the `leases_ended` index finds the rows.
        let n = self
            .writer
            .exec(
                "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE ended_at < ? \
                 AND state IN ('revoked', 'expired') LIMIT ?)",
                vec![Bind::Int(to_ms(before)), Bind::Int(i64::from(limit))],
            )
            .await?;
        if n < u64::from(limit) {
            self.writer
                .exec(
                    "DELETE FROM jobs WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM leases WHERE job_id = jobs.id)",
                    vec![Bind::Int(to_ms(before))],
                )
                .await?;
        }
        Ok(n)
    }

    async fn schedule_revocation(&self, f: &LeaseFilter, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut sql = String::from("UPDATE leases SET end_reason = 'revoked', next_attempt_at = ? WHERE state = 'active'");
        let mut binds = vec![Bind::Int(to_ms(now))];
        for (col, v) in [("role", &f.role), ("issuer", &f.issuer), ("subject", &f.subject)] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                binds.push(Bind::Text(v.clone()));
            }
        }
        self.writer.exec(sql, binds).await
    }

    async fn due_except(
        &self,
        now: OffsetDateTime,
        pending_cutoff: OffsetDateTime,
        limit: u32,
        skip: &[String],
    ) -> Result<Vec<DueLease>, StoreError> {
        // Connections to leave out: ?5, ?6, ...
        let skip_sql = if skip.is_empty() {
            String::new()
        } else {
            let marks: Vec<String> = (0..skip.len()).map(|i| format!("?{}", i + 5)).collect();
            format!("WHERE substr(role, 1, instr(role || '/', '/') - 1) NOT IN ({})", marks.join(", "))
        };
        // Four index-backed branches; each row carries the time it fell due.
        // An active lease can match two branches (expired and scheduled): it
        // counts from the earlier. Then at most `limit` per connection (the
        // role's part before `/`), taken round-robin: one connection's
        // backlog never keeps another's due leases out of the batch.
        // Ranked over narrow rows, then only the chosen ones read in full.
        let sql = format!(
            "WITH u AS (
               SELECT id, role, expires_at AS due_at FROM leases
                 WHERE state = 'active' AND expires_at <= ?1 AND {NOT_SET_ASIDE}
               UNION ALL
               SELECT id, role, next_attempt_at FROM leases
                 WHERE state = 'active' AND next_attempt_at <= ?1 AND {NOT_SET_ASIDE}
               UNION ALL
               SELECT id, role, issued_at FROM leases
                 WHERE state = 'pending' AND issued_at < ?2 AND {NOT_SET_ASIDE}
               UNION ALL
               SELECT id, role, next_attempt_at FROM leases
                 WHERE state = 'revoke_failed' AND next_attempt_at <= ?1 AND {NOT_SET_ASIDE}
             ), d AS (
               SELECT id, MIN(role) AS role, MIN(due_at) AS due_at FROM u GROUP BY id
             ), kept AS (
               SELECT * FROM d {skip_sql}
             ), r AS (
               SELECT id AS rid, due_at, ROW_NUMBER() OVER (
                   PARTITION BY substr(role, 1, instr(role || '/', '/') - 1) ORDER BY due_at, id
                 ) AS turn
                 FROM kept
             )
             SELECT {LEASE_COLUMNS}, r.due_at FROM r JOIN leases ON leases.id = r.rid
               WHERE r.turn <= ?3 ORDER BY r.turn, r.due_at, r.rid"
        );
        // `?4`: rows set aside as undecodable (a JSON array of ids).
        let mut q = sqlx::query(&sql)
            .bind(to_ms(now))
            .bind(to_ms(pending_cutoff))
            .bind(limit as i64)
            .bind(to_json(&self.quarantine.ids())?);
        for c in skip {
            q = q.bind(c.as_str());
        }
        let rows = q
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        Ok(self.quarantine.decode_due(&rows, "sqlite").0)
    }

    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        // Rows set aside are no work: counting them would wake the worker
        // in a loop for a lease it never gets.
        let row = sqlx::query(&format!(
            "SELECT MIN(t) AS t FROM (
               SELECT MIN(expires_at) AS t FROM leases WHERE state = 'active' AND {NOT_SET_ASIDE}
               UNION ALL SELECT MIN(next_attempt_at) FROM leases
                 WHERE state IN ('active', 'revoke_failed') AND {NOT_SET_ASIDE})",
            NOT_SET_ASIDE = NOT_SET_ASIDE.replace("?4", "?1")
        ))
        .bind(to_json(&self.quarantine.ids())?)
        .fetch_one(&self.read)
        .await
        .map_err(interpret_error)?;
        let t: Option<i64> = row.try_get("t").map_err(interpret_error)?;
        t.map(from_ms).transpose()
    }

    async fn counts(&self) -> Result<LeaseCounts, StoreError> {
        // The trigger-kept counts table (migration 0006), not the leases.
        let rows = sqlx::query(super::COUNTS_SQL).fetch_all(&self.read).await.map_err(interpret_error)?;
        rows.iter().map(super::rows::state_count_row).collect()
    }

    async fn expiring(&self, before: OffsetDateTime) -> Result<RoleCounts, StoreError> {
        let rows = sqlx::query(&super::expiring_sql("?"))
            .bind(super::expiry_minute(before))
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(super::rows::count_row).collect()
    }

    async fn max_live_per_owner(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(super::MAX_OWNER_SQL).fetch_one(&self.read).await.map_err(interpret_error)?;
        row.try_get("n").map_err(interpret_error)
    }

    async fn start_revoke_job(
        &self,
        id: &str,
        f: &RevokeFilter,
        created_by: &str,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let mut sql = format!(
            "UPDATE leases SET job_id = ?, next_attempt_at = ?, \
             end_reason = CASE WHEN state = 'revoke_failed' THEN end_reason ELSE 'revoked' END \
             WHERE state IN {LIVE}"
        );
        let mut binds = vec![Bind::Text(id.to_owned()), Bind::Int(to_ms(now))];
        for (col, v) in [("role", &f.role), ("issuer", &f.issuer), ("subject", &f.subject)] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                binds.push(Bind::Text(v.clone()));
            }
        }
        for (attr, value) in &f.claims {
            // Attribute names are checked by the caller ([A-Za-z0-9_]).
            sql.push_str(" AND json_extract(claims, ?) = ?");
            binds.push(Bind::Text(format!("$.\"{attr}\"")));
            binds.push(Bind::Text(value.clone()));
        }
        if let Some(t) = f.issued_after_ms {
            sql.push_str(" AND issued_at >= ?");
            binds.push(Bind::Int(t));
        }
        // One writer request: the tags and the job row commit together or
        // not at all (the total is counted from the tags it just wrote).
        let job = Stmt {
            sql: "INSERT INTO jobs (id, kind, filter, created_by, created_at, total) \
                  VALUES (?, 'revoke', ?, ?, ?, (SELECT COUNT(*) FROM leases WHERE job_id = ?))"
                .into(),
            binds: vec![
                Bind::Text(id.to_owned()),
                Bind::Text(to_json(f)?),
                Bind::Text(created_by.to_owned()),
                Bind::Int(to_ms(now)),
                Bind::Text(id.to_owned()),
            ],
            must_affect: true,
        };
        let tag = Stmt { sql, binds, must_affect: false };
        if self.writer.exec_all(vec![tag, job]).await? != 1 {
            return Err(StoreError::Unavailable(format!("job {id} was not recorded")));
        }
        let row = sqlx::query("SELECT total FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_one(&self.read)
            .await
            .map_err(interpret_error)?;
        row.try_get::<i64, _>("total").map_err(interpret_error)
    }

    async fn job_status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        let Some(row) = sqlx::query("SELECT id, kind, filter, created_by, created_at, total FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?
        else {
            return Ok(None);
        };
        let mut st = super::rows::job_from_row(&row)?;
        let rows = sqlx::query(JOB_PROGRESS_SQL)
            .bind(id)
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        super::rows::count_job_rows(&mut st, &rows)?;
        Ok(Some(st))
    }

    async fn count_live(&self, f: &LeaseFilter) -> Result<i64, StoreError> {
        // Role-only, owner-only and unfiltered counts come from the counts
        // tables (what the quotas ask on every issue); anything else counts rows.
        if let Some((sql, binds)) = super::fast_count_sql(f, "?", "?") {
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = q.bind(b);
            }
            let row = q.fetch_one(&self.read).await.map_err(interpret_error)?;
            return row.try_get::<i64, _>("n").map_err(interpret_error);
        }
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT COUNT(*) FROM leases WHERE state IN {LIVE}"));
        push_filter(&mut qb, &LeaseFilter { state: None, ..f.clone() });
        let row = qb.build().fetch_one(&self.read).await.map_err(interpret_error)?;
        row.try_get::<i64, _>(0).map_err(interpret_error)
    }

    async fn state_get(&self, conn: &str, key: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        let row = sqlx::query("SELECT value, sealed FROM plugin_state WHERE connection = ? AND key = ?")
            .bind(conn)
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.map(|r| {
            Ok((
                r.try_get::<Vec<u8>, _>("value").map_err(interpret_error)?,
                r.try_get::<bool, _>("sealed").map_err(interpret_error)?,
            ))
        })
        .transpose()
    }

    async fn state_put(&self, conn: &str, key: &str, value: &[u8], sealed: bool) -> Result<(), StoreError> {
        self.writer
            .exec(
                "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (connection, key) DO UPDATE SET value = excluded.value, sealed = excluded.sealed, \
                 updated_at = excluded.updated_at",
                vec![
                    Bind::Text(conn.into()),
                    Bind::Text(key.into()),
                    Bind::Blob(value.to_vec()),
                    Bind::Bool(sealed),
                    Bind::Int(to_ms(OffsetDateTime::now_utc())),
                ],
            )
            .await?;
        Ok(())
    }

    async fn state_put_if_absent(&self, conn: &str, key: &str, value: &[u8], sealed: bool) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (connection, key) DO NOTHING",
                vec![
                    Bind::Text(conn.into()),
                    Bind::Text(key.into()),
                    Bind::Blob(value.to_vec()),
                    Bind::Bool(sealed),
                    Bind::Int(to_ms(OffsetDateTime::now_utc())),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn state_list(&self, conn: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Range scan on the primary key: prefix <= key < prefix + U+FFFF.
        let upper = format!("{prefix}\u{ffff}");
        let rows = sqlx::query(
            "SELECT key, value FROM plugin_state WHERE connection = ? AND key >= ? AND key < ? \
             AND sealed = 0 ORDER BY key",
        )
        .bind(conn)
        .bind(prefix)
        .bind(upper)
        .fetch_all(&self.read)
        .await
        .map_err(interpret_error)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("key").map_err(interpret_error)?,
                    r.try_get::<Vec<u8>, _>("value").map_err(interpret_error)?,
                ))
            })
            .collect()
    }

    async fn state_delete(&self, conn: &str, key: &str) -> Result<(), StoreError> {
        self.writer
            .exec(
                "DELETE FROM plugin_state WHERE connection = ? AND key = ?",
                vec![Bind::Text(conn.into()), Bind::Text(key.into())],
            )
            .await?;
        Ok(())
    }

    async fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.map(|r| r.try_get::<String, _>("value").map_err(interpret_error)).transpose()
    }

    async fn meta_put_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                vec![Bind::Text(key.into()), Bind::Text(value.into())],
            )
            .await?;
        Ok(n == 1)
    }

    fn replica_id(&self) -> &str {
        &self.id
    }

    async fn heartbeat(&self, r: &super::Replica) -> Result<(), StoreError> {
        self.writer
            .exec(
                "INSERT INTO replicas (id, host, pid, version, policy_version, started_at, seen_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
                 policy_version = excluded.policy_version, seen_at = excluded.seen_at",
                vec![
                    Bind::Text(self.id.clone()),
                    Bind::Text(r.host.clone()),
                    Bind::Int(r.pid),
                    Bind::Text(r.version.clone()),
                    Bind::Text(r.policy_version.clone()),
                    Bind::Int(r.started_at_ms),
                    Bind::Int(super::to_ms(OffsetDateTime::now_utc())),
                ],
            )
            .await?;
        Ok(())
    }

    async fn replicas(&self, within: Duration) -> Result<Vec<super::Replica>, StoreError> {
        let since = super::to_ms(OffsetDateTime::now_utc()) - i64::try_from(within.as_millis()).unwrap_or(i64::MAX / 2);
        let rows = sqlx::query(
            "SELECT id, host, pid, version, policy_version, started_at, seen_at FROM replicas WHERE seen_at >= ? ORDER BY id",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(super::rows::replica_from_row).collect()
    }

    async fn remove_replica(&self) -> Result<(), StoreError> {
        self.writer.exec("DELETE FROM replicas WHERE id = ?", vec![Bind::Text(self.id.clone())]).await?;
        Ok(())
    }

    async fn oldest_overdue(&self, now: OffsetDateTime) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE (state = 'active' AND (expires_at <= ? OR end_reason IS NOT NULL)) OR state = 'revoke_failed' ORDER BY expires_at LIMIT 1"
        ))
        .bind(to_ms(now))
        .fetch_optional(&self.read)
        .await
        .map_err(interpret_error)?;
        row.as_ref().map(lease_from_row).transpose()
    }
}
