//! SQLite backend (the embedded default): WAL, `synchronous = FULL` so an
//! acknowledged write survives `kill -9` and power loss (one exception: a
//! pending lease row is acknowledged once committed, kept through `kill -9`,
//! and reaches the disk with its activation; see
//! [`LeaseStore::insert_pending`]), and an exclusive lock file so two
//! processes never share one database file.
//!
//! This file holds the connection, the writer task and shared SQL; each
//! part of the store is implemented in a child module (`leases.rs`,
//! `jobs.rs`, `secrets.rs`, `plugin_state.rs`, `cluster.rs`,
//! `admin_tokens.rs`, `sessions.rs`).
//!
//! Must not import: http, policy, identity.

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
use super::{ClusterStore, JobStore, LeaseStore, PluginStateStore, SecretStore};

/// A value bound to a write statement.
enum Bind {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Blob(Vec<u8>),
    Bool(bool),
}

impl rusqlite::ToSql for Bind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Bind::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Bind::OptInt(v) => v.map_or(ToSqlOutput::Borrowed(ValueRef::Null), |v| ToSqlOutput::Borrowed(ValueRef::Integer(v))),
            Bind::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Bind::OptText(v) => {
                v.as_deref().map_or(ToSqlOutput::Borrowed(ValueRef::Null), |v| ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())))
            }
            Bind::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Bind::Bool(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*v))),
        })
    }
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
    /// Whether the answer waits for the disk (`synchronous = FULL`: kept
    /// through a power loss), or only for the commit (`NORMAL`: kept through
    /// a crash of lessor, on disk with the next durable commit). See
    /// [`LeaseStore::insert_pending`](super::LeaseStore::insert_pending).
    durable: bool,
    reply: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
}

enum Msg {
    Write(WriteReq),
    /// Finish the writes taken so far, close the connection, then answer.
    Close(tokio::sync::oneshot::Sender<()>),
    /// Finish the writes taken so far, then answer the connection's
    /// `PRAGMA synchronous` (what the last commit ran at).
    #[cfg(test)]
    Level(tokio::sync::oneshot::Sender<i64>),
}

/// Group commit: one thread owns the writing connection, takes every write
/// that is queued, runs them in one transaction and commits once (one
/// fsync), then answers each with its own result. Under load, concurrent
/// requests share a commit; alone, a write commits at once. A batch whose
/// writes all only need to be committed (a pending lease) commits without
/// the fsync; the next durable commit syncs the WAL, and with it them.
///
/// The thread calls SQLite directly (rusqlite, on the same SQLite library
/// sqlx links), not through sqlx: sqlx runs each statement of a connection
/// on that connection's own worker thread, so a batch cost two thread
/// hand-offs per statement plus BEGIN and COMMIT, and on a 2-core machine
/// those hand-offs, not SQLite, were most of a write's CPU. Here a batch
/// costs one wake-up of this thread and one per answer.
#[derive(Clone)]
struct Writer {
    tx: tokio::sync::mpsc::Sender<Msg>,
}

const MAX_BATCH: usize = 256;

/// Distinct write statements kept prepared (there are about 60).
const PREPARED: usize = 128;

impl Writer {
    /// Opens the writing connection to the (already created and migrated)
    /// database `path` and starts the thread that owns it. The thread ends,
    /// closing the connection, at [`Writer::close`] or when every sender
    /// (every clone of the store) is gone.
    fn spawn(path: &Path) -> Result<Writer, StoreError> {
        use rusqlite::OpenFlags;
        let unavailable = |e: rusqlite::Error| StoreError::Unavailable(format!("cannot open {} for writing: {e}", path.display()));
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(unavailable)?;
        // The same settings as every sqlx connection of this store.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(unavailable)?;
        conn.set_prepared_statement_cache_capacity(PREPARED);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(4096);
        std::thread::Builder::new()
            .name("lessor-store".into())
            .spawn(move || {
                let mut conn = conn;
                let mut batch = Vec::with_capacity(MAX_BATCH);
                let mut closing = None;
                let mut synced = true;
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        match m {
                            Msg::Write(w) => batch.push(w),
                            Msg::Close(done) => {
                                closing = Some(done);
                                break;
                            }
                            #[cfg(test)]
                            Msg::Level(reply) => {
                                if !batch.is_empty() {
                                    Writer::run(&mut conn, &mut batch, &mut synced);
                                }
                                let _ = reply.send(conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap_or(-1));
                            }
                        }
                        if batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    if !batch.is_empty() {
                        Writer::run(&mut conn, &mut batch, &mut synced);
                    }
                    if closing.is_some() {
                        break;
                    }
                }
                // Writes sent after the close find the channel gone.
                drop(rx);
                // (On failure the connection is dropped, which tries once
                // more; SQLite recovers a WAL database left open.)
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the SQLite writer's connection failed");
                }
                if let Some(done) = closing {
                    let _ = done.send(());
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(Writer { tx })
    }

    /// Finishes every write sent before this and ends the thread; returns
    /// once its connection is closed.
    async fn close(&self) {
        let (done, closed) = tokio::sync::oneshot::channel();
        // A send error: the thread had ended already.
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }

    /// Runs and commits `batch`; `synced`: whether the connection is at
    /// `synchronous = FULL` (switched per batch, only when it changes).
    fn run(conn: &mut rusqlite::Connection, batch: &mut Vec<WriteReq>, synced: &mut bool) {
        let durable = batch.iter().any(|w| w.durable);
        if durable != *synced {
            let pragma = if durable { "PRAGMA synchronous = FULL" } else { "PRAGMA synchronous = NORMAL" };
            if let Err(e) = conn.execute_batch(pragma) {
                let msg = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
                return;
            }
            *synced = durable;
        }
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
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
        for r in batch.iter() {
            if let [one] = r.stmts.as_slice() {
                // A failed statement (a duplicate id) is undone alone; SQLite
                // keeps the rest of the transaction.
                results.push(Writer::one(&tx, one));
            } else {
                results.push(Writer::all_or_nothing(&tx, &r.stmts));
            }
        }
        match tx.commit() {
            Ok(()) => {
                for (r, res) in batch.drain(..).zip(results) {
                    let _ = r.reply.send(res);
                }
            }
            Err(e) => {
                // (Dropping the transaction rolled it back.)
                let msg = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(StoreError::Unavailable(format!("commit failed: {msg}"))));
                }
            }
        }
    }

    fn one(conn: &rusqlite::Connection, st: &Stmt) -> Result<u64, StoreError> {
        let mut q = conn.prepare_cached(&st.sql).map_err(write_error)?;
        let n = q.execute(rusqlite::params_from_iter(st.binds.iter())).map_err(write_error)?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// Runs `stmts` inside a savepoint of the batch's transaction and undoes
    /// them all when one fails or a `must_affect` one changes nothing.
    fn all_or_nothing(conn: &rusqlite::Connection, stmts: &[Stmt]) -> Result<u64, StoreError> {
        conn.execute_batch("SAVEPOINT multi").map_err(write_error)?;
        let mut outcome = Ok(1);
        for st in stmts {
            match Writer::one(conn, st) {
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
            conn.execute_batch("ROLLBACK TO multi").map_err(write_error)?;
        }
        conn.execute_batch("RELEASE multi").map_err(write_error)?;
        outcome
    }

    async fn exec(&self, sql: impl Into<String>, binds: Vec<Bind>) -> Result<u64, StoreError> {
        self.exec_all(vec![Stmt { sql: sql.into(), binds, must_affect: false }]).await
    }

    /// `exec`, answered once committed (visible, kept through a crash of
    /// lessor) without waiting for the disk (see [`WriteReq::durable`]).
    async fn exec_committed(&self, sql: impl Into<String>, binds: Vec<Bind>) -> Result<u64, StoreError> {
        self.send(vec![Stmt { sql: sql.into(), binds, must_affect: false }], false).await
    }

    async fn exec_all(&self, stmts: Vec<Stmt>) -> Result<u64, StoreError> {
        self.send(stmts, true).await
    }

    async fn send(&self, stmts: Vec<Stmt>, durable: bool) -> Result<u64, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Write(WriteReq { stmts, durable, reply }))
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?
    }
}

/// A write's error: a duplicate key is a conflict (as sqlx reports it on
/// the reading side), anything else makes the store unavailable.
fn write_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    match &e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE || f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            StoreError::Conflict(msg.clone().unwrap_or_else(|| e.to_string()))
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

mod admin_tokens;
mod cluster;
mod fast;
mod customer_tokens;
mod jobs;
mod leases;
mod person_sessions;
mod plugin_state;
mod secrets;
mod sessions;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

const LEASE_COLUMNS: &str = "id, role, plugin, issuer, subject, claims, scopes, policies, state, issued_at, \
     expires_at, max_expires_at, handle, attempts, last_error, next_attempt_at, end_reason, ended_at, root_version";

const LIVE: &str = "('pending', 'active', 'revoke_failed')";

/// The database's clock, unix ms (SQLite's `'now'`, fixed for the whole
/// statement): what PostgreSQL's `DB_NOW_MS` is there, so the methods whose
/// time the store decides (heartbeats, replicas' age, pending age) agree.
const DB_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// Leaves out the due rows set aside as undecodable (`?4`: JSON array of ids).
const NOT_SET_ASIDE: &str = "id NOT IN (SELECT value FROM json_each(?4))";

pub struct SqliteStore {
    /// Readers (WAL lets them run beside the writer).
    read: SqlitePool,
    /// Point reads on the calling thread (see [`fast`]).
    fast: fast::Fast,
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
        // The writer has its own connection (see [`Writer`]); this one only
        // created and migrated the database.
        sqlx::Connection::close(write).await.map_err(interpret_error)?;
        let writer = Writer::spawn(p)?;
        let readers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
        let fast = fast::Fast::open(p, readers)?;
        // One process per SQLite store (the lock above): a replica row left
        // by an earlier process is stale.
        writer.exec("DELETE FROM replicas", vec![]).await?;
        let id = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 8]>()));
        Ok(SqliteStore { read, fast, writer, _lock: Some(lock), id, quarantine: Quarantine::new() })
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await.map_err(interpret_error)?;
        Ok(())
    }

    async fn close(&self) {
        // Readers first: the last connection to close checkpoints the WAL
        // and removes it, which a read-only connection cannot do.
        self.read.close().await;
        self.fast.close();
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PRAGMA synchronous` values.
    const NORMAL: i64 = 1;
    const FULL: i64 = 2;

    fn write(sql: &str, durable: bool) -> (WriteReq, tokio::sync::oneshot::Receiver<Result<u64, StoreError>>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        (WriteReq { stmts: vec![Stmt { sql: sql.into(), binds: vec![], must_affect: false }], durable, reply }, rx)
    }

    fn level(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
    }

    /// A batch commits at `FULL` (fsync) when any write in it must reach
    /// the disk, at `NORMAL` only when none must, and every write is
    /// answered with its own result either way.
    #[test]
    fn a_batch_waits_for_the_disk_when_any_write_in_it_must() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; CREATE TABLE t (x INTEGER PRIMARY KEY)").unwrap();
        let mut synced = true;
        let steps: [(&[(&str, bool)], i64); 5] = [
            (&[("INSERT INTO t VALUES (1)", false)], NORMAL),
            (&[("INSERT INTO t VALUES (2)", false), ("INSERT INTO t VALUES (3)", true)], FULL),
            (&[("INSERT INTO t VALUES (4)", true), ("INSERT INTO t VALUES (4)", false)], FULL),
            (&[("INSERT INTO t VALUES (5)", false), ("INSERT INTO t VALUES (6)", false)], NORMAL),
            (&[("INSERT INTO t VALUES (7)", true)], FULL),
        ];
        for (i, (writes, want)) in steps.into_iter().enumerate() {
            let (mut batch, mut answers): (Vec<_>, Vec<_>) = writes.iter().map(|(sql, d)| write(sql, *d)).unzip();
            Writer::run(&mut conn, &mut batch, &mut synced);
            assert_eq!(level(&conn), want, "step {i}: the commit's synchronous level");
            assert_eq!(synced, want == FULL, "step {i}");
            for (j, rx) in answers.iter_mut().enumerate() {
                let got = rx.try_recv().expect("answered once the batch is done");
                // Step 2's second write repeats a key: it fails alone.
                if (i, j) == (2, 1) {
                    assert!(matches!(got, Err(StoreError::Conflict(_))), "step {i} write {j}: {got:?}");
                } else {
                    assert_eq!(got.unwrap(), 1, "step {i} write {j}");
                }
            }
        }
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 7);
    }

    /// The issue path's two writes: the pending row only needs the commit
    /// (the credential is returned only after the activation, whose fsync
    /// takes the pending row to disk too); the activation waits for the
    /// disk, and so does any other write.
    #[tokio::test]
    async fn a_pending_lease_is_committed_and_its_activation_reaches_the_disk() {
        use super::super::LeaseState;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let lease = Lease {
            id: LeaseId::new("lse_0123456789abcdef0123456789abcdef"),
            role: "db/r".into(),
            plugin: "postgres".into(),
            issuer: "https://issuer.test".into(),
            subject: "sub".into(),
            claims: serde_json::json!({}),
            scopes: vec![],
            policies: vec![],
            state: LeaseState::Pending,
            issued_at: now,
            expires_at: now + time::Duration::minutes(10),
            max_expires_at: now + time::Duration::minutes(10),
            handle: None,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            end_reason: None,
            ended_at: None,
            root_version: None,
        };
        let probe = |w: Writer| async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            assert!(w.tx.send(Msg::Level(tx)).await.is_ok());
            rx.await.unwrap()
        };
        assert_eq!(probe(store.writer.clone()).await, FULL, "a fresh writer is at FULL");
        store.insert_pending(&lease).await.unwrap();
        assert_eq!(probe(store.writer.clone()).await, NORMAL, "insert_pending commits without the fsync");
        assert_eq!(store.get(&lease.id).await.unwrap().unwrap().state, LeaseState::Pending, "and is visible at once");
        assert!(store.activate(&lease.id, &serde_json::json!({"user": "u"}), lease.expires_at).await.unwrap());
        assert_eq!(probe(store.writer.clone()).await, FULL, "the activation waits for the disk");
        store.close().await;
    }
}
