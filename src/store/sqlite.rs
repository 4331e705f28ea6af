//! SQLite backend (the embedded default): WAL, `synchronous = FULL` so an
//! acknowledged lease survives `kill -9` and power loss, and an exclusive
//! lock file so two processes never share one database file.
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
                Bind::OptText(v) => q.bind(v),
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
mod cluster;
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await.map_err(interpret_error)?;
        Ok(())
    }
}
