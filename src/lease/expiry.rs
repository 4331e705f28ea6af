//! The expiry worker: loads only the leases that are due (the store's
//! `(state, expires_at)` index), revokes them with bounded concurrency, and
//! records each outcome. Memory does not grow with the number of leases.
//!
//! Due means: active past expiry, scheduled by a bulk revoke, failed and due
//! for a retry, or pending and orphaned. On an exclusive store (SQLite) every
//! lease left pending by an earlier process is orphaned at once; otherwise a
//! pending lease is orphaned after `pending_grace`.

use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::LeaseService;

/// Runs until `shutdown` turns true; finishes the batch in hand first.
pub async fn run(svc: LeaseService, mut shutdown: watch::Receiver<bool>) {
    let exclusive = svc.store.exclusive();
    let grace = time::Duration::try_from(svc.settings.pending_grace).unwrap_or(time::Duration::minutes(2));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = OffsetDateTime::now_utc();
        let mut cutoff = now - grace;
        if exclusive {
            cutoff = cutoff.max(svc.started_at());
        }
        let due = match svc.store.due(now, cutoff, svc.settings.batch_size).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "expiry worker cannot read due leases; retrying");
                if sleep_or_stop(&svc, &mut shutdown, svc.settings.tick).await {
                    break;
                }
                continue;
            }
        };
        if !due.is_empty() {
            let n = due.len();
            let unrecorded = std::sync::atomic::AtomicUsize::new(0);
            futures::stream::iter(due)
                .for_each_concurrent(svc.settings.revoke_concurrency, |d| {
                    let svc = svc.clone();
                    let unrecorded = &unrecorded;
                    async move {
                        if let Err(e) = svc.revoke_lease(&d.lease, d.reason).await {
                            unrecorded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(lease_id = %d.lease.id, error = %e, "recording revocation outcome failed");
                        }
                    }
                })
                .await;
            tracing::debug!(count = n, "expiry batch done");
            // Drain: look again straight away while there is work, unless
            // the store could record nothing (then the same leases would come
            // straight back; wait a tick instead of spinning).
            if unrecorded.into_inner() == n && sleep_or_stop(&svc, &mut shutdown, svc.settings.tick).await {
                break;
            }
            continue;
        }
        let wait = match svc.store.next_due().await {
            Ok(Some(t)) => {
                let until = t - OffsetDateTime::now_utc();
                Duration::try_from(until).unwrap_or(Duration::ZERO).min(svc.settings.tick)
            }
            _ => svc.settings.tick,
        };
        if sleep_or_stop(&svc, &mut shutdown, wait).await {
            break;
        }
    }
    tracing::debug!("expiry worker stopped");
}

/// Sleeps for `d` or until woken; returns true on shutdown.
async fn sleep_or_stop(svc: &LeaseService, shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let until = OffsetDateTime::now_utc() + d;
    svc.next_wake_ms.store(crate::store::to_ms(until), std::sync::atomic::Ordering::Relaxed);
    let stop = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = svc.wake.notified() => false,
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    };
    svc.next_wake_ms.store(i64::MAX, std::sync::atomic::Ordering::Relaxed);
    stop
}
