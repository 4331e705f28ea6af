//! Retention: ended leases (revoked, expired) are deleted `leases.retention`
//! after they ended, so the store does not grow with every credential ever
//! issued. Small batches (`BATCH` rows, one bounded statement each; on
//! SQLite one writer request, so other writes wait at most one batch), a
//! pause between them, nothing held in memory. Live leases are never
//! touched; the audit log keeps the record.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::LeaseService;

/// Most leases deleted per statement.
pub const BATCH: u32 = 500;

/// The longest pause between two looks when there is nothing to delete.
const IDLE: Duration = Duration::from_secs(60);

/// Runs until `shutdown` turns true. `leases.retention = "0s"` keeps
/// ended leases forever (the task ends at once).
pub async fn run(svc: LeaseService, mut shutdown: watch::Receiver<bool>) {
    let keep = svc.settings.retention;
    if keep.is_zero() {
        tracing::debug!("lease retention is off");
        return;
    }
    let Ok(keep_t) = time::Duration::try_from(keep) else { return };
    // A short retention is looked at often, a long one once a minute; a
    // full batch means more is waiting: go on after one tick.
    let idle = (keep / 10).max(svc.settings.tick).min(IDLE);
    let busy = svc.settings.tick;
    loop {
        let wait = match OffsetDateTime::now_utc().checked_sub(keep_t) {
            None => idle,
            Some(before) => match svc.store.prune_ended(before, BATCH).await {
                Ok(n) => {
                    crate::telemetry::metrics().leases_pruned.inc_by(n);
                    if n > 0 {
                        tracing::debug!(count = n, "ended leases pruned");
                    }
                    if n >= u64::from(BATCH) {
                        busy
                    } else {
                        idle
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning ended leases failed; will retry");
                    idle
                }
            },
        };
        match crate::vault::prune(svc.store.as_ref(), OffsetDateTime::now_utc(), BATCH).await {
            Ok(n) if n > 0 => tracing::debug!(count = n, "ended Vault API sessions pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning ended Vault API sessions failed; will retry"),
        }
        match crate::people::prune(svc.store.as_ref(), OffsetDateTime::now_utc(), BATCH).await {
            Ok(n) if n > 0 => tracing::debug!(count = n, "ended person sessions pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning ended person sessions failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
    }
    tracing::debug!("retention stopped");
}
