//! SQLite backend (the embedded default): WAL, synced after each group
//! commit before its writes are answered, so an acknowledged write survives
//! `kill -9` and power loss (two exceptions on the issue path, answered
//! once committed, kept through `kill -9`, and synced right after: a
//! pending lease row, whose caller waits for that sync before returning a
//! credential, and its activation; see [`LeaseStore::insert_pending`] and
//! [`LeaseStore::activate_at_version`]), and an exclusive lock file so two
//! processes never share one database file.
//!
//! This file holds the connection, the writer task and shared SQL; each
//! part of the store is implemented in a child module (`leases.rs`,
//! `jobs.rs`, `secrets.rs`, `plugin_state.rs`, `cluster.rs`,
//! `admin_tokens.rs`, `sessions.rs`), the writer's live-lease counts in
//! `counts.rs`. Why it is one piece past 800 lines: the writer and sync
//! threads, their protocol (`Msg`, `Answer`, `SyncFn`; the sync thread's
//! own queue is in `sync.rs`) and the tests that hold the disk between
//! them (two fifths of the file) share private types that splitting would
//! have to make crate-visible.
//!
//! Must not import: http, policy, identity.

use std::fs::File;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock, PoisonError};
use std::time::{Duration, Instant};

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
    answer: Answer,
    reply: Reply,
}

/// When a write is answered. Every committed batch is synced, whether or
/// not anyone waits for it: at once when someone does, else within
/// [`LAZY_SYNC`].
enum Answer {
    /// After a sync of the WAL that started after its commit: kept through
    /// a power loss.
    Synced,
    /// At its commit: kept through a crash of lessor, on disk with the next
    /// sync, at the latest [`LAZY_SYNC`] later (an activation, see
    /// [`LeaseStore::activate_at_version`](super::LeaseStore::activate_at_version)).
    Committed,
    /// At its commit, and again through this once synced (a pending lease
    /// row and its [`OnDisk`](super::OnDisk)). The sync may wait up to
    /// this long after the commit (capped at [`LAZY_SYNC`]) for other
    /// writes to share it, unless someone waits for it first.
    CommittedThenSynced(Reply, Duration),
}

enum Msg {
    Write(WriteReq),
    /// Finish the writes taken so far, close the connection, then answer.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Group commit: one thread owns the writing connection, takes every write
/// that is queued, runs them in one transaction and commits once. Writes
/// that only need the commit (the issue path's, see [`Answer`]) are
/// answered then; the others' answers go to the sync thread, which makes
/// the WAL durable (`fdatasync`) and only then sends them. Under load,
/// concurrent requests share a commit, and batches committed while a sync
/// runs share the next sync; alone, a write commits and syncs at once.
///
/// Why the sync has a thread of its own: with SQLite's `synchronous =
/// FULL` the commit itself syncs, so every write queued behind it, even
/// one that needs no sync, waited for the disk. Here the connection runs
/// `synchronous = NORMAL` (a commit writes the WAL without syncing it;
/// checkpoints still sync the WAL before copying it and the database file
/// after), and the sync thread syncs the WAL after the commit, before a
/// durable write is answered: acknowledged means on disk, as with `FULL`.
/// A committed write is visible to readers up to one sync before it is
/// durable; nothing acts on a vendor without an acknowledged write first
/// (ARCHITECTURE.md).
///
/// The thread calls SQLite directly (rusqlite, on the same SQLite library
/// sqlx links), not through sqlx: sqlx runs each statement of a connection
/// on that connection's own worker thread, so a batch cost two thread
/// hand-offs per statement plus BEGIN and COMMIT, and on a 2-core machine
/// those hand-offs, not SQLite, were most of a write's CPU. Here a batch
/// costs one wake-up of this thread and one per answer; the sync thread
/// wakes about once per sync ([`sync::SyncQueue`]).
#[derive(Clone)]
struct Writer {
    tx: tokio::sync::mpsc::Sender<Msg>,
    /// The sync thread's work: an [`OnDisk`](super::OnDisk) awaited
    /// demands its sync through it.
    to_sync: Arc<sync::SyncQueue>,
    /// Live-lease counts, changed by the writer at each commit.
    counts: Arc<std::sync::RwLock<counts::Counts>>,
    /// Why writes fail since a sync failed (see [`sync::SyncQueue::run`]).
    failed: Arc<OnceLock<String>>,
}

const MAX_BATCH: usize = 256;

/// The longest a batch nobody waits for stays unsynced when no other write
/// brings a sync first. Under load the next sync someone waits for takes
/// it along (a sync of its own would cost CPU and disk for nothing); idle,
/// it is on disk this much later.
const LAZY_SYNC: Duration = Duration::from_millis(20);

/// The page size of a database this store creates (an existing one keeps
/// its own). Each page a commit changes is written whole to the WAL, then
/// again to the database at the checkpoint, and an issued credential
/// changes pages at random places (its id in the primary key's index, its
/// owner in `leases_owner`): with 2 KiB pages its pending row and its
/// activation put about 16 KiB in the WAL where 4 KiB pages put 38 KiB
/// (each committed alone; `write_cost_tests` in `sqlite/leases.rs`), disk
/// traffic that competes with everything else syncing on the same disk (a
/// vendor's database on the same host syncing its own log). 1 KiB pages
/// save little more (14 KiB) and cost the start-up scan of a large store
/// more pages to walk (1,000,000 leases: first request 1.1 s with 4 KiB
/// pages, 1.4 s with 2 KiB, 1.6 to 1.8 s with 1 KiB; the README's engine
/// benchmark).
const PAGE_SIZE: u32 = 2048;

/// WAL pages that set off a checkpoint (SQLite's default is 1,000): about
/// 16 MiB of WAL with 2 KiB pages. A checkpoint copies the newest version
/// of each page in the WAL into the database file and syncs it; the pages
/// every issue changes again (the ends of the lease indexes, the table's
/// last leaf, index pages of the live leases) are copied once per
/// checkpoint however often they changed, so a longer WAL writes fewer
/// pages per credential and syncs the database file less often: disk
/// traffic that competes with everything else syncing on the same disk
/// (measured with a MariaDB beside lessor: 0.67 database-file writes per
/// credential before, 0.05 after; README, the MySQL bench). The WAL keeps
/// its largest size on disk (it is rewritten in place), and the first
/// open after `kill -9` reads it once (a full 16 MiB WAL: 12 ms, 18 ms
/// with the page cache dropped, against 2.4 ms for 2 MiB; measured here).
const CHECKPOINT_PAGES: u32 = 8192;

/// Distinct write statements kept prepared (there are about 60).
const PREPARED: usize = 128;

type Reply = tokio::sync::oneshot::Sender<Result<u64, StoreError>>;

/// Answers of a committed batch, waiting for the WAL to be synced.
type Answers = Vec<(Reply, Result<u64, StoreError>)>;

/// A committed batch: its number, when it committed, and the answers
/// left for the sync thread (`deferred`: pending rows', whose sync may wait
/// up to `within` after `at`).
struct Done {
    seq: u64,
    at: Instant,
    within: Duration,
    durable: Answers,
    deferred: Answers,
}

/// How the WAL file is made durable: `fdatasync` in production; tests put
/// a gate or a failure in between.
pub(crate) type SyncFn = Arc<dyn Fn(&File) -> std::io::Result<()> + Send + Sync>;

fn fdatasync() -> SyncFn {
    Arc::new(|f: &File| f.sync_data())
}

/// Runs a transaction-control statement (`BEGIN IMMEDIATE`, `COMMIT`,
/// `SAVEPOINT`...) from the writer's statement cache: parsed once, where
/// `execute_batch` (and rusqlite's `Transaction`) parse it again for every
/// batch, a few microseconds each on the writer thread.
fn control(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

impl Writer {
    /// Opens the writing connection to the (already created and migrated)
    /// database `path` and starts the thread that owns it and the thread
    /// that syncs its WAL with `sync`. The threads end, closing the
    /// connection, at [`Writer::close`] or when every sender (every clone
    /// of the store) is gone. A batch nobody waits for is synced at most
    /// `lazy_sync` after its commit ([`LAZY_SYNC`]).
    fn spawn(path: &Path, sync: SyncFn, lazy_sync: Duration) -> Result<Writer, StoreError> {
        use rusqlite::OpenFlags;
        let unavailable = |e: rusqlite::Error| StoreError::Unavailable(format!("cannot open {} for writing: {e}", path.display()));
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(unavailable)?;
        // NORMAL: commits write the WAL without syncing it; the sync thread
        // does, before a durable write is answered (see above).
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(unavailable)?;
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES).map_err(unavailable)?;
        conn.set_prepared_statement_cache_capacity(PREPARED);
        // Counted once from the leases, then kept by the writer.
        let counts = Arc::new(std::sync::RwLock::new(counts::load(&conn).map_err(unavailable)?));
        let deltas = counts::Deltas::default();
        counts::install(&conn, deltas.clone()).map_err(unavailable)?;
        let counts_at_write = counts.clone();
        // The WAL exists while any connection is open and is rewritten in
        // place (no `journal_size_limit`, no TRUNCATE checkpoint); a first
        // read makes sure this connection has it open, and it keeps it
        // until it closes, after the sync thread ends.
        conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(unavailable)?;
        // The name SQLite gives the WAL: its own (absolute, symlinks
        // resolved) name of the database file plus `-wal`.
        let db_file = conn.path().filter(|p| !p.is_empty()).unwrap_or(&path.to_string_lossy()).to_owned();
        let wal_path = format!("{db_file}-wal");
        let wal = File::open(&wal_path).map_err(|e| StoreError::Unavailable(format!("cannot open {wal_path}: {e}")))?;
        let queue = Arc::new(sync::SyncQueue::new(lazy_sync));
        let (to_sync, queue_at_sync) = (queue.clone(), queue.clone());
        // The number of the last commit, set before any of its writes is
        // answered; what a sync covers is read from it before the sync.
        let committed = Arc::new(AtomicU64::new(0));
        let committed_at_sync = committed.clone();
        // Set once a sync failed: the disk may have dropped what it was
        // given, so no later write is acknowledged either.
        let failed = Arc::new(OnceLock::<String>::new());
        let failed_at_sync = failed.clone();
        let failed_at_write = failed.clone();
        std::thread::Builder::new()
            .name("lessor-sync".into())
            .spawn(move || queue_at_sync.run(&wal, &wal_path, &sync, &committed_at_sync, &failed_at_sync))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store's sync thread: {e}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(4096);
        let queue_at_write = queue.clone();
        let started = std::thread::Builder::new()
            .name("lessor-store".into())
            .spawn(move || {
                let queue = queue_at_write;
                // The sync thread ends with this one, even on a panic.
                let _close = sync::CloseOnDrop(&queue);
                let conn = conn;
                let mut batch = Vec::with_capacity(MAX_BATCH);
                let mut closing = None;
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        match m {
                            Msg::Write(w) => batch.push(w),
                            Msg::Close(done) => {
                                closing = Some(done);
                                break;
                            }
                        }
                        if batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    if let Some(why) = failed_at_write.get() {
                        for w in batch.drain(..) {
                            let _ = w.reply.send(Err(StoreError::Unavailable(why.clone())));
                        }
                    }
                    if !batch.is_empty() {
                        if let Some(done) = Writer::run(&conn, &mut batch, (&deltas, &counts_at_write), &committed) {
                            let waited_for = !done.durable.is_empty() || !done.deferred.is_empty();
                            if !done.durable.is_empty() {
                                queue.durable(done.durable);
                            }
                            if !done.deferred.is_empty() {
                                queue.deferred(done.seq, done.at + done.within.min(lazy_sync), done.deferred);
                            }
                            // A sync someone waits for takes the whole batch.
                            if !waited_for {
                                queue.lazy();
                            }
                        }
                    }
                    if closing.is_some() {
                        break;
                    }
                }
                // Writes sent after the close find the channel gone.
                drop(rx);
                // Every committed batch synced and answered before the
                // connection closes.
                let (synced, wait) = mpsc::channel();
                queue.close(Some(synced));
                let _ = wait.recv();
                // (On failure the connection is dropped, which tries once
                // more; SQLite recovers a WAL database left open.)
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the SQLite writer's connection failed");
                }
                if let Some(done) = closing {
                    let _ = done.send(());
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")));
        if started.is_err() {
            // The sync thread has nothing to wait for.
            queue.close(None);
        }
        started?;
        Ok(Writer { tx, to_sync, counts, failed })
    }

    /// Finishes every write sent before this and ends the threads; returns
    /// `true` once the connection is closed, `false` when that took longer
    /// than `limit` (a sync that does not return: a hung disk or network
    /// filesystem). The threads are then left behind, still holding the
    /// connection; nothing they hold was acknowledged as durable.
    async fn close(&self, limit: Duration) -> bool {
        let (done, closed) = tokio::sync::oneshot::channel();
        let close = async {
            // A send error: the thread had ended already.
            if self.tx.send(Msg::Close(done)).await.is_ok() {
                let _ = closed.await;
            }
        };
        tokio::time::timeout(limit, close).await.is_ok()
    }

    /// Runs `batch` in one transaction and commits it, numbers the commit
    /// (`committed`), answers the writes that need only the commit, and
    /// returns the answers to send once the WAL is synced (maybe none: the
    /// batch is synced all the same; `None` when the transaction could not
    /// start or commit: every write was answered with that error). The
    /// triggers report count changes into `deltas`; those of a write undone
    /// are dropped, the rest applied to `counts` at the commit, before any
    /// write of the batch is answered.
    fn run(
        conn: &rusqlite::Connection,
        batch: &mut Vec<WriteReq>,
        (deltas, counts): (&counts::Deltas, &std::sync::RwLock<counts::Counts>),
        committed: &AtomicU64,
    ) -> Option<Done> {
        counts::clear(deltas);
        match control(conn, "BEGIN IMMEDIATE") {
            Ok(()) => {}
            Err(e) => {
                let msg = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
                return None;
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        for r in batch.iter() {
            let mark = counts::mark(deltas);
            let result = if let [one] = r.stmts.as_slice() {
                // A failed statement (a duplicate id) is undone alone; SQLite
                // keeps the rest of the transaction.
                Writer::one(conn, one)
            } else {
                Writer::all_or_nothing(conn, &r.stmts)
            };
            let undone = match (&result, r.stmts.len()) {
                (Err(_), _) => true,
                (Ok(n), more) => more > 1 && *n != 1,
            };
            if undone {
                counts::undo_to(deltas, mark);
            }
            results.push(result);
        }
        let committed_now = control(conn, "COMMIT");
        if committed_now.is_err() && !conn.is_autocommit() {
            // (A failed rollback leaves the transaction to the connection's
            // close; the batch is answered with the commit's error.)
            let _ = control(conn, "ROLLBACK");
        }
        match &committed_now {
            Ok(()) => counts::commit(deltas, counts),
            Err(_) => counts::clear(deltas),
        }
        match committed_now {
            Ok(()) => {
                let seq = committed.fetch_add(1, Ordering::SeqCst).saturating_add(1);
                let mut done = Done { seq, at: Instant::now(), within: Duration::MAX, durable: Vec::new(), deferred: Vec::new() };
                for (r, res) in batch.drain(..).zip(results) {
                    match r.answer {
                        Answer::Synced => done.durable.push((r.reply, res)),
                        Answer::Committed => {
                            let _ = r.reply.send(res);
                        }
                        Answer::CommittedThenSynced(then, within) => {
                            // (A failed write's caller waits for nothing more.)
                            if let Ok(n) = res {
                                done.deferred.push((then, Ok(n)));
                                done.within = done.within.min(within);
                            }
                            let _ = r.reply.send(res);
                        }
                    }
                }
                Some(done)
            }
            Err(e) => {
                let msg = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(StoreError::Unavailable(format!("commit failed: {msg}"))));
                }
                None
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
        control(conn, "SAVEPOINT multi").map_err(write_error)?;
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
            control(conn, "ROLLBACK TO multi").map_err(write_error)?;
        }
        control(conn, "RELEASE multi").map_err(write_error)?;
        outcome
    }

    async fn exec(&self, sql: impl Into<String>, binds: Vec<Bind>) -> Result<u64, StoreError> {
        self.exec_all(vec![Stmt { sql: sql.into(), binds, must_affect: false }]).await
    }

    /// `exec`, answered once committed (visible, kept through a crash of
    /// lessor); synced next, without waiting (see [`Answer::Committed`]).
    async fn exec_committed(&self, sql: impl Into<String>, binds: Vec<Bind>) -> Result<u64, StoreError> {
        self.send(vec![Stmt { sql: sql.into(), binds, must_affect: false }], Answer::Committed).await
    }

    /// `exec_committed`, with the way to wait for its sync, which may wait
    /// up to `within` for other writes to share it unless the returned
    /// [`OnDisk`](super::OnDisk) is awaited first.
    async fn exec_pending(&self, sql: impl Into<String>, binds: Vec<Bind>, within: Duration) -> Result<super::OnDisk, StoreError> {
        let (then, synced) = tokio::sync::oneshot::channel();
        let stmts = vec![Stmt { sql: sql.into(), binds, must_affect: false }];
        self.send(stmts, Answer::CommittedThenSynced(then, within)).await?;
        let to_sync = self.to_sync.clone();
        Ok(super::OnDisk::after(synced, Box::new(move || to_sync.demand())))
    }

    async fn exec_all(&self, stmts: Vec<Stmt>) -> Result<u64, StoreError> {
        self.send(stmts, Answer::Synced).await
    }

    async fn send(&self, stmts: Vec<Stmt>, answer: Answer) -> Result<u64, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Write(WriteReq { stmts, answer, reply }))
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
mod counts;
mod fast;
mod customer_tokens;
mod jobs;
mod leases;
mod person_sessions;
mod plugin_state;
mod secrets;
mod sessions;
mod sync;

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
    /// Held for the life of the store: the OS lock (`flock`) that keeps a
    /// second process off this database. Released explicitly at `close`:
    /// a child process forked by another thread of this process shares the
    /// lock until it execs, so closing the file alone may not release it.
    lock: Option<File>,
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
    /// The live-lease counts as of the last commit; `Unavailable` once the
    /// store is closed, like every other read.
    fn live_counts(&self) -> Result<std::sync::RwLockReadGuard<'_, counts::Counts>, StoreError> {
        if self.writer.tx.is_closed() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        Ok(self.writer.counts.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, fdatasync()).await
    }

    /// [`SqliteStore::open`], making the WAL durable with `sync`.
    pub(crate) async fn open_with(path: &str, sync: SyncFn) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_tuned(path, sync, LAZY_SYNC).await
    }

    /// [`SqliteStore::open_with`], syncing a batch nobody waits for at most
    /// `lazy_sync` after its commit.
    async fn open_tuned(path: &str, sync: SyncFn, lazy_sync: Duration) -> Result<SqliteStore, StoreError> {
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
            .page_size(PAGE_SIZE)
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
        let writer = Writer::spawn(p, sync, lazy_sync)?;
        let readers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
        let fast = fast::Fast::open(p, readers)?;
        // One process per SQLite store (the lock above): a replica row left
        // by an earlier process is stale.
        writer.exec("DELETE FROM replicas", vec![]).await?;
        let id = format!("{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 8]>()));
        Ok(SqliteStore { read, fast, writer, lock: Some(lock), id, quarantine: Quarantine::new() })
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
        // Not ready while writes fail (a failed sync, until restart).
        if let Some(why) = self.writer.failed.get() {
            return Err(StoreError::Unavailable(why.clone()));
        }
        sqlx::query("SELECT 1").execute(&self.read).await.map_err(interpret_error)?;
        Ok(())
    }

    async fn close(&self) {
        self.close_within(CLOSE_LIMIT).await;
    }
}

/// How long closing waits for the writer's last commit and sync: a shutdown
/// must end even when the disk hangs (the supervisor's kill would come
/// next; systemd waits 90 s by default, Kubernetes 30 s).
const CLOSE_LIMIT: Duration = Duration::from_secs(20);

impl SqliteStore {
    /// Closes the store, waiting at most `limit` for the writer. Past it,
    /// the lock file stays locked (the writer thread still holds the
    /// database open) until the process exits.
    async fn close_within(&self, limit: Duration) {
        // Readers first: the last connection to close checkpoints the WAL
        // and removes it, which a read-only connection cannot do.
        self.read.close().await;
        self.fast.close();
        if !self.writer.close(limit).await {
            tracing::error!(
                limit_seconds = limit.as_secs(),
                "the store's writer did not finish within the limit (a sync of the disk does not return); \
                 closing without it: writes not yet acknowledged may be lost, acknowledged ones are on disk"
            );
            return;
        }
        if let Some(lock) = &self.lock {
            if let Err(e) = lock.unlock() {
                tracing::warn!(error = %e, "releasing the SQLite store's lock file failed; it is released when lessor exits");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{LeaseState, QuotaCounts};
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn write(sql: &str, answer: Answer) -> (WriteReq, tokio::sync::oneshot::Receiver<Result<u64, StoreError>>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        (WriteReq { stmts: vec![Stmt { sql: sql.into(), binds: vec![], must_affect: false }], answer, reply }, rx)
    }

    /// A pending `db/r` lease numbered `n`, ten minutes long (the
    /// write-cost tests in `leases.rs` start from it too).
    pub(super) fn lease(n: u8) -> Lease {
        let now = OffsetDateTime::now_utc();
        Lease {
            id: LeaseId::new(format!("lse_{n:032x}")),
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
        }
    }

    /// A batch's writes that need only the commit are answered by `run`;
    /// the durable ones, and the second answer of a pending row, are handed
    /// back for the sync thread, each with its own result (a duplicate key
    /// fails alone, and its caller waits for no sync).
    #[test]
    fn a_batch_answers_what_needs_only_the_commit_and_hands_the_rest_to_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; CREATE TABLE t (x INTEGER PRIMARY KEY)").unwrap();
        let (then4, mut synced4) = tokio::sync::oneshot::channel();
        let (then5, mut synced5) = tokio::sync::oneshot::channel();
        let writes = [
            ("INSERT INTO t VALUES (1)", Answer::Committed),
            ("INSERT INTO t VALUES (2)", Answer::Synced),
            ("INSERT INTO t VALUES (1)", Answer::Synced),
            ("INSERT INTO t VALUES (3)", Answer::Committed),
            ("INSERT INTO t VALUES (4)", Answer::CommittedThenSynced(then4, Duration::ZERO)),
            ("INSERT INTO t VALUES (4)", Answer::CommittedThenSynced(then5, Duration::ZERO)),
        ];
        let (mut batch, mut answers): (Vec<_>, Vec<_>) = writes.into_iter().map(|(sql, a)| write(sql, a)).unzip();
        let (deltas, counts) = (counts::Deltas::default(), std::sync::RwLock::default());
        let seq = AtomicU64::new(6);
        let done = Writer::run(&conn, &mut batch, (&deltas, &counts), &seq).expect("committed");
        assert_eq!((done.seq, seq.load(Ordering::SeqCst)), (7, 7), "the commit is numbered");
        assert_eq!(done.deferred.len(), 1, "the pending row's second answer waits apart");
        let durable: Vec<_> = done.durable.into_iter().chain(done.deferred).collect();
        assert!(batch.is_empty());
        assert_eq!(answers[0].try_recv().unwrap().unwrap(), 1);
        assert_eq!(answers[3].try_recv().unwrap().unwrap(), 1);
        assert_eq!(answers[4].try_recv().unwrap().unwrap(), 1, "a pending row is answered at its commit");
        assert!(matches!(answers[5].try_recv().unwrap(), Err(StoreError::Conflict(_))));
        assert!(answers[1].try_recv().is_err() && answers[2].try_recv().is_err(), "durable writes wait for the sync");
        assert!(synced4.try_recv().is_err(), "its second answer waits for the sync");
        let results: Vec<_> = durable.into_iter().map(|(reply, r)| (reply, r.map_err(|e| e.to_string()))).collect();
        assert_eq!(results.len(), 3, "the two synced writes and the pending row's second answer; nothing for the failed one");
        for (reply, r) in results {
            let _ = reply.send(r.map_err(StoreError::Unavailable));
        }
        assert_eq!(answers[1].try_recv().unwrap().unwrap(), 1);
        assert!(matches!(answers[2].try_recv().unwrap(), Err(StoreError::Unavailable(m)) if m.contains("UNIQUE")));
        assert_eq!(synced4.try_recv().unwrap().unwrap(), 1);
        assert!(matches!(synced5.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Closed)), "a failed pending row never looks synced");
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 4);
    }

    /// The writer's counts follow only what commits: a duplicate insert, a
    /// statement that fails after its triggers fired for an earlier row,
    /// and an all-or-nothing write undone change nothing; a restart counts
    /// the same from the leases.
    #[tokio::test]
    async fn counts_follow_only_what_commits_and_a_restart_counts_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let (a, b) = (lease(1), lease(2));
        store.insert_pending(&a).await.unwrap();
        store.insert_pending(&b).await.unwrap();
        let quota = |s: &SqliteStore| {
            let c = s.live_counts().unwrap();
            (c.quota(&a.issuer, &a.subject, &a.role), c.by_state().unwrap(), c.max_per_owner())
        };
        let two = quota(&store);
        assert_eq!(two.0, QuotaCounts { owner: 2, role: 2, total: 2 });
        assert!(matches!(store.insert_pending(&a).await, Err(StoreError::Conflict(_))));
        // The first row is updated (its triggers fire), the second breaks
        // the primary key: the statement is undone.
        let err = store.writer.exec("UPDATE leases SET state = 'revoked', id = 'same'", vec![]).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let undone = store
            .writer
            .exec_all(vec![
                Stmt { sql: "UPDATE leases SET state = 'revoked' WHERE id = ?".into(), binds: vec![Bind::Text(a.id.to_string())], must_affect: true },
                Stmt { sql: "UPDATE leases SET state = 'revoked' WHERE id = 'none'".into(), binds: vec![], must_affect: true },
            ])
            .await
            .unwrap();
        assert_eq!(undone, 0);
        assert_eq!(quota(&store), two, "nothing undone is counted");
        assert!(store.finish(&a.id, super::super::EndReason::Revoked, OffsetDateTime::now_utc()).await.unwrap());
        let one = quota(&store);
        assert_eq!(one.0, QuotaCounts { owner: 1, role: 1, total: 1 });
        store.close().await;
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        assert_eq!(quota(&store), one, "counted again from the leases");
        store.close().await;
    }

    /// The counts read at open (one pass, the table in order or through
    /// the index) equal those the writer kept, change by change: by state,
    /// by expiry minute, per workload and the fullest workload, with most
    /// of the table live and again with most of it ended.
    #[tokio::test]
    async fn counts_read_at_open_match_those_kept_whether_the_table_or_the_index_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let mut all = Vec::new();
        for n in 0..120u8 {
            let mut l = lease(n);
            l.role = ["db/a", "db/b", "kv/c"][usize::from(n % 3)].into();
            l.plugin = if n % 3 == 2 { "redis".into() } else { "postgres".into() };
            l.issuer = format!("https://issuer-{}.test", n % 2);
            l.subject = format!("sub-{}", n % 7);
            l.expires_at = now + time::Duration::minutes(i64::from(n % 11) + 1);
            store.insert_pending(&l).await.unwrap();
            all.push(l);
        }
        for l in all.iter().filter(|l| l.id.as_str().ends_with(['0', '2', '4', '6', '8', 'a', 'c', 'e'])) {
            assert!(store.activate_at_version(&l.id, &serde_json::json!({}), l.expires_at, None).await.unwrap());
        }
        for l in all.iter().step_by(9) {
            store.record_failure(&l.id, super::super::EndReason::Revoked, "down", now).await.unwrap();
        }
        let snapshot = |s: &SqliteStore| {
            let c = s.live_counts().unwrap();
            let mut states = c.by_state().unwrap();
            states.sort_by(|a, b| (&a.0, &a.1, a.2.as_str()).cmp(&(&b.0, &b.1, b.2.as_str())));
            let minutes: Vec<_> = (0..14)
                .map(|m| {
                    let mut e = c.expiring(crate::store::expiry_minute(now + time::Duration::minutes(m)));
                    e.sort();
                    e
                })
                .collect();
            let owners: Vec<i64> = all.iter().map(|l| c.owner(&l.issuer, &l.subject)).collect();
            (states, minutes, owners, c.max_per_owner(), c.total())
        };
        let mut store = store;
        // 120 rows: all live first (open reads the table in order), then
        // 20 (under a quarter: open reads through `leases_due`).
        for stage in ["most rows live", "most rows ended"] {
            if stage == "most rows ended" {
                for l in all.iter().skip(20) {
                    store.finish(&l.id, super::super::EndReason::Revoked, now).await.unwrap();
                }
            }
            let kept = snapshot(&store);
            assert!(kept.4 > 0 && kept.0.len() >= 6, "{stage}: a spread of roles and states: {:?}", kept.0);
            store.close().await;
            store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
            assert_eq!(snapshot(&store), kept, "{stage}: the counts read at open");
        }
        store.close().await;
    }

    /// A sync that the test holds until told: `hold` on, each call waits
    /// for a token on `go`; `started` counts calls.
    struct Gate {
        hold: AtomicBool,
        /// A sync is waiting at the gate.
        held: AtomicBool,
        started: AtomicUsize,
        go: Mutex<mpsc::Receiver<()>>,
    }

    fn gate() -> (Arc<Gate>, mpsc::Sender<()>, SyncFn) {
        let (tx, rx) = mpsc::channel();
        let g = Arc::new(Gate { hold: AtomicBool::new(false), held: AtomicBool::new(false), started: AtomicUsize::new(0), go: Mutex::new(rx) });
        let g2 = g.clone();
        let sync: SyncFn = Arc::new(move |f: &File| {
            g2.started.fetch_add(1, Ordering::SeqCst);
            if g2.hold.load(Ordering::SeqCst) {
                g2.held.store(true, Ordering::SeqCst);
                let _ = g2.go.lock().unwrap().recv();
            }
            f.sync_data()
        });
        (g, tx, sync)
    }

    /// The issue path's two writes are answered at their commits, visible
    /// at once, while the disk is held; the pending row's sync starts at
    /// its commit (during the vendor call) and its `OnDisk` resolves only
    /// once that sync has ended; the activation is synced next although
    /// nobody waits: within `LAZY_SYNC` when nothing else brings a sync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_issue_path_is_answered_at_its_commits_and_the_pending_row_is_on_disk_before_the_credential_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let (g, go, sync) = gate();
        let store = Arc::new(SqliteStore::open_with(dir.path().join("s.db").to_str().unwrap(), sync).await.unwrap());
        let l = lease(1);
        g.hold.store(true, Ordering::SeqCst);
        let before = g.started.load(Ordering::SeqCst);
        let on_disk =
            tokio::time::timeout(Duration::from_secs(5), store.insert_pending(&l)).await.expect("answered with the disk held").unwrap();
        assert_eq!(store.get(&l.id).await.unwrap().unwrap().state, LeaseState::Pending, "visible at once");
        let mut on_disk = tokio::spawn(on_disk.wait());
        // The vendor call: the pending row's sync has started meanwhile.
        while !g.held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let activated = tokio::time::timeout(Duration::from_secs(5), store.activate(&l.id, &serde_json::json!({"user": "u"}), l.expires_at))
            .await
            .expect("the activation is answered with the disk held");
        assert!(activated.unwrap());
        assert_eq!(store.get(&l.id).await.unwrap().unwrap().state, LeaseState::Active);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut on_disk).await.is_err(),
            "the pending row is not on disk while its sync is held"
        );
        assert_eq!(g.started.load(Ordering::SeqCst), before + 1, "its sync started at its commit");
        g.hold.store(false, Ordering::SeqCst);
        go.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), on_disk).await.expect("on disk after the sync").unwrap().unwrap();
        // The activation committed during the held sync: synced after it,
        // nobody waiting.
        let synced = async {
            while g.started.load(Ordering::SeqCst) < before + 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), synced).await.expect("the activation is synced without anyone asking");
        store.close().await;
    }

    /// A store in `dir` behind a gate whose syncs come only when asked for
    /// or due (never from `LAZY_SYNC` within a test), and the syncs so far.
    async fn never_lazy(dir: &Path) -> (Arc<Gate>, SqliteStore, usize) {
        let (g, _go, sync) = gate();
        let store = SqliteStore::open_tuned(dir.join("s.db").to_str().unwrap(), sync, Duration::from_secs(3600)).await.unwrap();
        let before = g.started.load(Ordering::SeqCst);
        (g, store, before)
    }

    /// Pending rows whose callers wait later (a vendor that takes a while)
    /// share one sync: it is put off until someone waits, and it answers
    /// every row committed before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_rows_put_off_their_sync_until_someone_waits_and_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let (g, store, before) = never_lazy(dir.path()).await;
        let mut waits = Vec::new();
        for n in 0..5 {
            waits.push(store.insert_pending_within(&lease(20 + n), Duration::from_secs(3600)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(g.started.load(Ordering::SeqCst), before, "nobody waits yet: no sync");
        for w in waits {
            tokio::time::timeout(Duration::from_secs(5), w.wait()).await.expect("the first wait asks for the sync").unwrap();
        }
        assert_eq!(g.started.load(Ordering::SeqCst), before + 1, "one sync for the five rows");
        store.close().await;
    }

    /// A pending row nobody waits for is synced by its deadline, not before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_row_nobody_waits_for_is_synced_by_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (g, store, before) = never_lazy(dir.path()).await;
        let t = std::time::Instant::now();
        let _on_disk = store.insert_pending_within(&lease(30), Duration::from_secs(1)).await.unwrap();
        assert_eq!(g.started.load(Ordering::SeqCst), before, "not at its commit");
        let synced = async {
            while g.started.load(Ordering::SeqCst) == before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), synced).await.expect("synced without anyone waiting");
        assert!(t.elapsed() >= Duration::from_secs(1), "not before its deadline");
        store.close().await;
    }

    /// The sync thread's bookkeeping for pending rows, driven by hand: a
    /// caller may ask for the sync before its rows' answers reach the
    /// thread (they are sent after the commit is answered); the rows are
    /// then synced as soon as they come. Rows a sync already covered
    /// (committed before it began) are answered without another.
    #[test]
    fn a_demand_ahead_of_its_rows_and_rows_already_synced() {
        let dir = tempfile::tempdir().unwrap();
        let wal = File::create(dir.path().join("wal")).unwrap();
        let (g, _go, sync) = gate();
        let queue = sync::SyncQueue::new(Duration::from_secs(3600));
        let (committed, failed) = (AtomicU64::new(0), OnceLock::new());
        let far = || Instant::now() + Duration::from_secs(3600);
        let answered = |mut rx: tokio::sync::oneshot::Receiver<Result<u64, StoreError>>| {
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                match rx.try_recv() {
                    Ok(r) => return r.unwrap(),
                    Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
                    Err(e) => panic!("not answered: {e}"),
                }
            }
        };
        std::thread::scope(|s| {
            // Closed when this closure ends or fails: the thread then ends.
            let close = sync::CloseOnDrop(&queue);
            let (queue, wal, sync, committed, failed) = (&queue, &wal, &sync, &committed, &failed);
            s.spawn(move || queue.run(wal, "wal", sync, committed, failed));
            committed.store(1, Ordering::SeqCst);
            queue.demand();
            let (then, synced) = tokio::sync::oneshot::channel();
            queue.deferred(1, far(), vec![(then, Ok(1))]);
            assert_eq!(answered(synced), 1, "synced at once, not at its deadline");
            assert_eq!(g.started.load(Ordering::SeqCst), 1);
            // Commit 2, then a sync a durable write asks for, then commit
            // 2's pending answers.
            committed.store(2, Ordering::SeqCst);
            let (reply, durable) = tokio::sync::oneshot::channel();
            queue.durable(vec![(reply, Ok(1))]);
            assert_eq!(answered(durable), 1);
            let (then, synced) = tokio::sync::oneshot::channel();
            queue.deferred(2, far(), vec![(then, Ok(1))]);
            assert_eq!(answered(synced), 1, "answered at once");
            assert_eq!(g.started.load(Ordering::SeqCst), 2, "without a sync of its own");
            let (done, closed) = mpsc::channel();
            queue.close(Some(done));
            closed.recv().unwrap();
            drop(close);
        });
    }

    /// A batch nobody waits for rides on the next sync someone waits for,
    /// under load one sync per credential, not two.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_activation_rides_on_the_next_sync_someone_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let (g, _go, sync) = gate();
        // Never on its own within the test: only a waited-for sync takes it.
        let store = SqliteStore::open_tuned(dir.path().join("s.db").to_str().unwrap(), sync, Duration::from_secs(3600)).await.unwrap();
        let (a, b) = (lease(7), lease(8));
        store.insert_pending(&a).await.unwrap().wait().await.unwrap();
        let before = g.started.load(Ordering::SeqCst);
        // The activation, then at once the next issue's pending row.
        assert!(store.activate(&a.id, &serde_json::json!({}), a.expires_at).await.unwrap());
        store.insert_pending(&b).await.unwrap().wait().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(g.started.load(Ordering::SeqCst), before + 1, "one sync took both");
        store.close().await;
    }

    /// A sync that never returns (a hung disk) cannot hold a shutdown: the
    /// close gives up after its limit, and keeps the lock file locked while
    /// the writer still holds the database open, so no second store opens
    /// it meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_sync_does_not_hold_close_and_the_lock_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (g, go, sync) = gate();
        let store = Arc::new(SqliteStore::open_with(path.to_str().unwrap(), sync).await.unwrap());
        let l = lease(5);
        store.insert_pending(&l).await.unwrap().wait().await.unwrap();
        assert!(store.activate(&l.id, &serde_json::json!({}), l.expires_at).await.unwrap());
        g.hold.store(true, Ordering::SeqCst);
        let s2 = store.clone();
        let id = l.id.clone();
        // A renewal is acknowledged only once on disk.
        let renewal = tokio::spawn(async move { s2.renew(&id, OffsetDateTime::now_utc(), l.expires_at + time::Duration::minutes(1)).await });
        while !g.held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), store.close_within(Duration::from_millis(300)))
            .await
            .expect("close must give up on a hung sync");
        assert!(t.elapsed() >= Duration::from_millis(300), "it waited its limit first");
        assert!(!renewal.is_finished(), "a write whose sync hangs is never acknowledged");
        assert!(
            matches!(SqliteStore::open(path.to_str().unwrap()).await, Err(StoreError::Locked(_))),
            "the lock is kept while the writer holds the database"
        );
        // The disk comes back: the write is acknowledged and the threads end.
        g.hold.store(false, Ordering::SeqCst);
        go.send(()).unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), renewal).await.expect("answered").unwrap().unwrap());
    }

    /// After a failed sync, the writes waiting for it (here a pending row's
    /// `OnDisk`) and every later one fail (the disk may have dropped what
    /// it had), committed-only ones included, with a message that says
    /// what to do.
    #[tokio::test]
    async fn after_a_failed_sync_that_write_and_every_later_one_fail() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let f2 = fail.clone();
        let sync: SyncFn = Arc::new(move |f: &File| {
            if f2.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected EIO"));
            }
            f.sync_data()
        });
        let store = SqliteStore::open_with(dir.path().join("s.db").to_str().unwrap(), sync).await.unwrap();
        let l = lease(2);
        store.insert_pending(&l).await.unwrap().wait().await.unwrap();
        store.ping().await.unwrap();
        fail.store(true, Ordering::SeqCst);
        // Answered at its commit; the sync its caller waits for fails.
        let on_disk = store.insert_pending(&lease(4)).await.unwrap();
        let err = on_disk.wait().await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)) && msg.contains("injected EIO") && msg.contains("restart"), "{msg}");
        fail.store(false, Ordering::SeqCst);
        assert!(matches!(store.ping().await, Err(StoreError::Unavailable(m)) if m.contains("restart")), "health says not ready");
        assert!(matches!(store.insert_pending(&lease(3)).await, Err(StoreError::Unavailable(m)) if m.contains("injected EIO")));
        assert!(matches!(store.activate(&l.id, &serde_json::json!({}), l.expires_at).await, Err(StoreError::Unavailable(_))));
        assert!(store.get(&lease(3).id).await.unwrap().is_none(), "a write refused after the failure changes nothing");
        store.close().await;
    }

    /// A sync thread that dies (a bug: here its sync function panics)
    /// leaves no caller waiting forever: the write waiting for that sync
    /// and every later durable one fail, saying why.
    #[tokio::test]
    async fn a_sync_thread_that_dies_fails_its_waiting_writes_instead_of_hanging_them() {
        let dir = tempfile::tempdir().unwrap();
        let die = Arc::new(AtomicBool::new(false));
        let d2 = die.clone();
        let sync: SyncFn = Arc::new(move |f: &File| {
            assert!(!d2.load(Ordering::SeqCst), "injected bug in the sync");
            f.sync_data()
        });
        let store = SqliteStore::open_with(dir.path().join("s.db").to_str().unwrap(), sync).await.unwrap();
        store.insert_pending(&lease(5)).await.unwrap().wait().await.unwrap();
        die.store(true, Ordering::SeqCst);
        let waited = tokio::time::timeout(Duration::from_secs(5), async { store.insert_pending(&lease(6)).await.unwrap().wait().await })
            .await
            .expect("answered, not left waiting");
        // (Its answer was in the dying sync's hands: dropped, so "stopped".)
        assert!(matches!(&waited, Err(StoreError::Unavailable(m)) if m.contains("stopped")), "{waited:?}");
        let later = tokio::time::timeout(Duration::from_secs(5), store.meta_put_if_absent("k", "v"))
            .await
            .expect("a later durable write is answered");
        assert!(matches!(&later, Err(StoreError::Unavailable(m)) if m.contains("sync thread has stopped")), "{later:?}");
        tokio::time::timeout(Duration::from_secs(5), store.close()).await.expect("closes");
    }

    /// The file synced is the WAL SQLite writes, also when the store's path
    /// is a symlink (SQLite names the WAL after the resolved file; a stale
    /// `<link>-wal` must not be the one synced).
    #[cfg(unix)]
    #[tokio::test]
    async fn the_wal_synced_is_the_one_sqlite_writes_behind_a_symlink() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.db");
        let link = dir.path().join("link.db");
        std::fs::write(&real, b"").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // A stale file where a naive `<path>-wal` would look.
        std::fs::write(dir.path().join("link.db-wal"), b"").unwrap();
        let synced = Arc::new(Mutex::new(Vec::new()));
        let s2 = synced.clone();
        let sync: SyncFn = Arc::new(move |f: &File| {
            s2.lock().unwrap().push(f.metadata()?.ino());
            f.sync_data()
        });
        let store = SqliteStore::open_with(link.to_str().unwrap(), sync).await.unwrap();
        let l = lease(4);
        store.insert_pending(&l).await.unwrap();
        assert!(store.activate(&l.id, &serde_json::json!({}), l.expires_at).await.unwrap());
        let wal = std::fs::metadata(dir.path().join("real.db-wal")).expect("SQLite's WAL beside the real file").ino();
        let inodes = synced.lock().unwrap().clone();
        assert!(!inodes.is_empty() && inodes.iter().all(|i| *i == wal), "synced {inodes:?}, SQLite's WAL is {wal}");
        store.close().await;
    }
}
