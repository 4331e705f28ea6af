//! Point reads on the calling thread: the few reads every request makes
//! (a lease by id, an admin token or a Vault session by hash, the quota
//! counts) go to a small set of read-only rusqlite connections, each behind
//! a mutex, and run on the task's own worker thread.
//!
//! Through sqlx each of them cost two thread hand-offs (sqlx runs a
//! connection's statements on that connection's own thread) and sqlx's row
//! decoding, more than the read itself: a lookup by key in pages SQLite
//! already holds takes microseconds. Only reads by key or of the small
//! counts tables come here; anything that scans stays on the sqlx pool.
//! WAL readers never wait for the writer. They can wait briefly in
//! SQLite's busy handler while a checkpoint resets the WAL, bounded by
//! [`BUSY`].
//!
//! Must not import: http, policy, identity.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use super::StoreError;

/// The longest a point read waits in SQLite's busy handler.
const BUSY: Duration = Duration::from_millis(250);

/// Distinct point-read statements kept prepared per connection.
const PREPARED: usize = 16;

pub(super) struct Fast {
    /// `None` once closed.
    conns: Vec<Mutex<Option<rusqlite::Connection>>>,
    next: AtomicUsize,
}

impl Fast {
    /// `n` read-only connections to the (already migrated) database.
    pub(super) fn open(path: &Path, n: usize) -> Result<Fast, StoreError> {
        use rusqlite::OpenFlags;
        let mut conns = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let conn = rusqlite::Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|c| {
                c.busy_timeout(BUSY)?;
                Ok(c)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot open {} for reading: {e}", path.display())))?;
            conn.set_prepared_statement_cache_capacity(PREPARED);
            conns.push(Mutex::new(Some(conn)));
        }
        Ok(Fast { conns, next: AtomicUsize::new(0) })
    }

    /// Runs `f` on a free connection (or, when every one is busy, waits
    /// for one: each holds it for one point read).
    pub(super) fn read<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut free = None;
        for i in 0..n {
            match self.conns[(start + i) % n].try_lock() {
                Ok(g) => {
                    free = Some(g);
                    break;
                }
                Err(TryLockError::Poisoned(p)) => {
                    free = Some(p.into_inner());
                    break;
                }
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let guard: MutexGuard<'_, Option<rusqlite::Connection>> =
            free.unwrap_or_else(|| self.conns[start].lock().unwrap_or_else(PoisonError::into_inner));
        let conn = guard.as_ref().ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        f(conn)
    }

    /// Closes every connection; later reads fail as `Unavailable`.
    pub(super) fn close(&self) {
        for m in &self.conns {
            let conn = m.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(Err((_, e))) = conn.map(rusqlite::Connection::close) {
                tracing::warn!(error = %e, "closing a SQLite reader failed");
            }
        }
    }
}

/// A point read's error: a value that does not decode is corrupt data,
/// anything else makes the store unavailable.
pub(super) fn read_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::InvalidColumnName(_)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}
