//! Usage records of customer tokens, written off the introspection path:
//! an introspection puts one [`TokenUse`] on a bounded queue (never waits;
//! a full queue drops the use and counts it,
//! `lessor_customer_token_uses_dropped_total`); one task writes what is
//! queued every `usage_flush_interval` in one store write (each use, its
//! day's count, the token's last use; the last `usage_keep` uses per token
//! are kept). At shutdown the queue is drained after the HTTP server has
//! stopped, so a clean shutdown loses nothing; kill -9 loses at most one
//! interval of uses (they are records, not state).
//!
//! Must not import: http, policy, config.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex};

use crate::store::{Store, TokenUse};

/// Most uses written in one store write.
const BATCH: usize = 2_000;

pub struct UsageRecorder {
    tx: mpsc::Sender<TokenUse>,
    rx: Mutex<mpsc::Receiver<TokenUse>>,
    store: Arc<dyn Store>,
    keep: u32,
}

impl UsageRecorder {
    pub fn new(store: Arc<dyn Store>, capacity: usize, keep: u32) -> UsageRecorder {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        UsageRecorder { tx, rx: Mutex::new(rx), store, keep }
    }

    /// Queues a use; O(1), never waits.
    pub fn record(&self, u: TokenUse) {
        if self.tx.try_send(u).is_err() {
            crate::telemetry::metrics().customer_token_uses_dropped.inc();
        }
    }

    /// Writes everything queued now (in batches). Returns the uses written.
    pub async fn flush(&self) -> usize {
        let mut rx = self.rx.lock().await;
        let mut written = 0;
        loop {
            let mut batch = Vec::new();
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(u) => batch.push(u),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return written;
            }
            let n = batch.len();
            if let Err(e) = self.store.ct_record_uses(&batch, self.keep).await {
                // Records, not state: a failed batch is logged and counted,
                // never retried forever in memory.
                crate::telemetry::metrics().customer_token_uses_dropped.inc_by(n as u64);
                tracing::warn!(error = %e, uses = n, "could not record customer token uses");
                return written;
            }
            written += n;
        }
    }

    /// Flushes every `every` until shutdown; the final drain is
    /// [`UsageRecorder::flush`], called after the HTTP server stopped.
    pub async fn run(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() { break; }
                }
            }
            self.flush().await;
        }
    }
}
