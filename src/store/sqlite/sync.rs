//! The sync thread of the SQLite writer ([`super::Writer`]): it makes the
//! WAL durable (`fdatasync`) after commits and only then sends the
//! answers that wait for the disk.
//!
//! The writer and the callers hand it work through one lock ([`SyncQueue`]),
//! not a message each: the thread is woken only when a sync must start
//! sooner than it planned (a durable write, a caller waiting for a pending
//! row, an earlier deadline, the close). Under load most commits only
//! leave their answers beside a sync already planned, so the thread wakes
//! about once per sync instead of once or twice per credential; on a host
//! whose CPUs are busy each wake-up costs a context switch and may
//! preempt another process (the vendor's database, when it runs there).
//!
//! Must not import: http, policy, identity.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::{Answers, StoreError, SyncFn};

/// Work for the sync thread, shared by the writer thread (committed
/// batches), the callers (waiting for a pending row) and the thread itself.
pub(super) struct SyncQueue {
    state: Mutex<State>,
    wake: Condvar,
    /// The longest a batch nobody waits for stays unsynced
    /// ([`super::LAZY_SYNC`], longer in tests).
    lazy_sync: Duration,
}

#[derive(Default)]
struct State {
    /// Answers of committed batches that wait for the disk: sync now.
    waiting: Vec<Answers>,
    /// Second answers of pending rows: sync by `due_at`, or at once when
    /// someone waits for them (`demanded`), or with any other sync.
    deferred: Vec<Answers>,
    /// When a sync is due though nobody asks: the earliest deadline of a
    /// deferred batch, or `lazy_sync` after a batch nobody waits for. Set
    /// while anything committed is not yet synced.
    due_at: Option<Instant>,
    /// Someone waits for a pending row since the last sync.
    demanded: bool,
    /// Every commit up to this number is on disk.
    synced_upto: u64,
    /// The writer is closing (or gone): sync what is left, answer it, end.
    closing: bool,
    /// Told once the thread has ended after a close.
    closed: Option<mpsc::Sender<()>>,
    /// The thread has ended (closed, or unwound from a bug): answers left
    /// here would never be sent, so they fail at once.
    ended: bool,
}

/// Why an answer handed to an ended sync thread fails.
const ENDED: &str = "the store's sync thread has stopped";

/// Sends each answer, or the sync's failure in its place.
fn answer(answers: Answers, outcome: &Result<(), String>) {
    for (reply, result) in answers {
        let _ = reply.send(match outcome {
            Ok(()) => result,
            Err(why) => Err(StoreError::Unavailable(why.clone())),
        });
    }
}

impl SyncQueue {
    pub(super) fn new(lazy_sync: Duration) -> SyncQueue {
        SyncQueue { state: Mutex::new(State::default()), wake: Condvar::new(), lazy_sync }
    }

    /// (A panic while holding the lock leaves plain data behind: go on.)
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A committed batch's answers that wait for the disk: sent once a
    /// sync that started after the commit has ended.
    pub(super) fn durable(&self, answers: Answers) {
        let mut st = self.lock();
        if st.ended {
            drop(st);
            answer(answers, &Err(ENDED.into()));
            return;
        }
        st.waiting.push(answers);
        drop(st);
        self.wake.notify_one();
    }

    /// The second answers of a committed batch's pending rows (commit
    /// number `seq`): sent once a sync that started after the commit has
    /// ended; that sync starts by `by`, or at once when someone waits, or
    /// with any other sync. Wakes the thread only when this moves its plan.
    pub(super) fn deferred(&self, seq: u64, by: Instant, answers: Answers) {
        let mut st = self.lock();
        if seq <= st.synced_upto || st.ended {
            // Synced already: a sync demanded for these rows (after their
            // commit) ran before their answers came.
            let outcome = if st.ended && seq > st.synced_upto { Err(ENDED.into()) } else { Ok(()) };
            drop(st);
            answer(answers, &outcome);
            return;
        }
        st.deferred.push(answers);
        let sooner = st.due_at.is_none_or(|d| by < d);
        if sooner {
            st.due_at = Some(by);
        }
        // A caller already waits for these rows: sync now.
        let wake = sooner || st.demanded;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// A batch nobody waits for was committed: synced within `lazy_sync`,
    /// or with an earlier sync.
    pub(super) fn lazy(&self) {
        let at = Instant::now() + self.lazy_sync;
        let mut st = self.lock();
        if st.due_at.is_none_or(|d| at < d) {
            st.due_at = Some(at);
            drop(st);
            self.wake.notify_one();
        }
    }

    /// A caller waits for a pending row's sync: sync the deferred rows now
    /// (or, when the row's answers are not here yet, as soon as they are).
    pub(super) fn demand(&self) {
        self.lock().demanded = true;
        self.wake.notify_one();
    }

    /// The writer closes: sync what is left, answer it, end, then tell
    /// `closed` (if given).
    pub(super) fn close(&self, closed: Option<mpsc::Sender<()>>) {
        let mut st = self.lock();
        st.closing = true;
        // (After the thread has ended, `closed` is dropped here: whoever
        // waits on it returns at once.)
        if closed.is_some() && !st.ended {
            st.closed = closed;
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The sync thread: waits until a sync is due, takes every answer
    /// queued, syncs the WAL once for all of them (each batch was
    /// committed, so written to the file, before its answers were queued),
    /// then answers them. After a failed sync it answers every write, then
    /// and later, with that failure. Ends after [`SyncQueue::close`].
    pub(super) fn run(&self, wal: &File, wal_path: &str, sync: &SyncFn, committed: &AtomicU64, failed: &OnceLock<String>) {
        let _ended = Ended(self);
        loop {
            let mut st = self.lock();
            loop {
                let now = Instant::now();
                let overdue = st.due_at.is_some_and(|at| at <= now);
                if !st.waiting.is_empty() || overdue || (st.demanded && !st.deferred.is_empty()) {
                    break;
                }
                if st.closing {
                    // Closing: whatever is left (its batches committed
                    // before the close) is synced now; nothing left, end.
                    if st.due_at.is_some() {
                        break;
                    }
                    if let Some(done) = st.closed.take() {
                        let _ = done.send(());
                    }
                    return;
                }
                st = match st.due_at {
                    None => self.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
                    Some(at) => {
                        self.wake.wait_timeout(st, at.saturating_duration_since(now)).unwrap_or_else(PoisonError::into_inner).0
                    }
                };
            }
            // Taken under the lock: a batch committed after this point
            // plans another sync; one committed before is in this one.
            // Whoever asked committed before asking, so before this
            // sync: it is covered, even if its rows' answers come later.
            st.due_at = None;
            st.demanded = false;
            let waiting = std::mem::take(&mut st.waiting);
            let deferred = std::mem::take(&mut st.deferred);
            let upto = committed.load(Ordering::SeqCst);
            drop(st);
            let outcome = match failed.get() {
                Some(why) => Err(why.clone()),
                None => sync(wal).map_err(|e| {
                    tracing::error!(error = %e, wal = wal_path, "store sync failed; every later write fails until restart");
                    failed
                        .get_or_init(|| {
                            format!(
                                "syncing {wal_path} failed ({e}); writes since the last sync may not be on disk, so \
                                 lessor acknowledges no more writes: restart it once the disk is healthy"
                            )
                        })
                        .clone()
                }),
            };
            if outcome.is_ok() {
                let mut st = self.lock();
                st.synced_upto = st.synced_upto.max(upto);
            }
            for a in waiting.into_iter().chain(deferred) {
                answer(a, &outcome);
            }
        }
    }
}

/// Marks the queue ended when the sync thread leaves its loop, however it
/// leaves, and fails what is still queued: no caller waits forever.
struct Ended<'a>(&'a SyncQueue);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.ended = true;
        let (waiting, deferred) = (std::mem::take(&mut st.waiting), std::mem::take(&mut st.deferred));
        // A close waiting for this thread returns once this is dropped.
        let closed = st.closed.take();
        drop(st);
        drop(closed);
        for a in waiting.into_iter().chain(deferred) {
            answer(a, &Err(ENDED.into()));
        }
    }
}

/// Closes the queue when dropped: the writer thread holds one, so the sync
/// thread ends even if the writer thread unwinds.
pub(super) struct CloseOnDrop<'a>(pub(super) &'a SyncQueue);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close(None);
    }
}
