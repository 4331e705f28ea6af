//! The expiry worker: loads only the leases that are due (the store's
//! `(state, expires_at)` index), revokes them, and records each outcome.
//! Memory does not grow with the number of leases.
//!
//! Due means: active past expiry, scheduled by a bulk revoke, failed and due
//! for a retry, or pending and orphaned. On an exclusive store (SQLite) every
//! lease left pending by an earlier process is orphaned at once; otherwise a
//! pending lease is orphaned after `pending_grace`.
//!
//! One dead vendor delays nobody else: the store hands out due work fairly
//! (at most `batch_size` per connection, round-robin across connections),
//! and each connection's share runs in its own lane (a task) with its own
//! concurrency and circuit breaker ([`super::breaker`]). The concurrency
//! bounds the vendor calls only: each outcome is recorded (store, audit)
//! beside the calls that follow ([`super::revoke`]). The worker loads
//! again whenever a lane finishes (or each tick), and never hands a
//! connection more work while its lane is busy, so a vendor that hangs until
//! `revoke_timeout` holds only its own leases. While a breaker is open its
//! leases are recorded as `revoke_failed` without a vendor call.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

use super::breaker::{connection_of, Admit, Breaker};
use super::revoke::Reached;
use super::{with_lease, LeaseError, LeaseService};
use crate::audit::{ActorInfo, Event};
use crate::store::{DueLease, EndReason};

/// Lanes at work, by task id: the connection each serves.
type Lanes = (JoinSet<()>, HashMap<Id, String>);

/// Runs until `shutdown` turns true; finishes the work in hand first.
pub async fn run(svc: LeaseService, mut shutdown: watch::Receiver<bool>) {
    let exclusive = svc.store.exclusive();
    let grace = time::Duration::try_from(svc.settings.pending_grace).unwrap_or(time::Duration::minutes(2));
    let mut lanes: Lanes = (JoinSet::new(), HashMap::new());
    loop {
        if *shutdown.borrow() {
            break;
        }
        while let Some(r) = lanes.0.try_join_next_with_id() {
            reap(&mut lanes.1, r);
        }
        let now = OffsetDateTime::now_utc();
        let mut cutoff = now - grace;
        if exclusive {
            cutoff = cutoff.max(svc.started_at());
        }
        // Busy lanes' leases stay due in the store until recorded: leave
        // their connections out rather than read (or, on PostgreSQL, lock
        // and claim) them again.
        let busy: Vec<String> = lanes.1.values().cloned().collect();
        let due = match svc.store.due_except(now, cutoff, svc.settings.batch_size, &busy).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "expiry worker cannot read due leases; retrying");
                if wait_or_stop(&svc, &mut shutdown, &mut lanes, svc.settings.tick).await {
                    break;
                }
                continue;
            }
        };
        let wait = if !due.is_empty() {
            // Each connection's share goes to its own lane (a lane that
            // finished since the query above may see some again: skip).
            let mut groups: BTreeMap<String, Vec<DueLease>> = BTreeMap::new();
            for d in due {
                let c = connection_of(&d.lease.role);
                if !lanes.1.values().any(|busy| busy == c) {
                    groups.entry(c.to_owned()).or_default().push(d);
                }
            }
            for (connection, work) in groups {
                let h = lanes.0.spawn(lane(svc.clone(), connection.clone(), work, shutdown.clone()));
                lanes.1.insert(h.id(), connection);
            }
            // Look again when a lane finishes (drain), or after a tick for
            // work that falls due meanwhile.
            svc.settings.tick
        } else {
            match svc.store.next_due().await {
                // Past: a busy lane's leases (left out above); a lane that
                // finishes wakes the loop.
                Ok(Some(t)) if t <= OffsetDateTime::now_utc() && !lanes.0.is_empty() => svc.settings.tick,
                Ok(Some(t)) => {
                    let until = t - OffsetDateTime::now_utc();
                    Duration::try_from(until).unwrap_or(Duration::ZERO).min(svc.settings.tick)
                }
                _ => svc.settings.tick,
            }
        };
        if wait_or_stop(&svc, &mut shutdown, &mut lanes, wait).await {
            break;
        }
    }
    while let Some(r) = lanes.0.join_next_with_id().await {
        reap(&mut lanes.1, r);
    }
    tracing::debug!("expiry worker stopped");
}

fn reap(busy: &mut HashMap<Id, String>, r: Result<(Id, ()), tokio::task::JoinError>) {
    let id = match r {
        Ok((id, ())) => id,
        Err(e) => {
            tracing::error!(error = %e, "expiry lane failed");
            e.id()
        }
    };
    busy.remove(&id);
}

/// One connection's due leases: a half-open probe first (alone), then the
/// rest with the connection's own concurrency.
async fn lane(svc: LeaseService, connection: String, due: Vec<DueLease>, mut shutdown: watch::Receiver<bool>) {
    let breaker = svc.breakers.get(&connection).clone();
    let n = due.len();
    let unrecorded = AtomicUsize::new(0);
    let mut rest = due.into_iter();
    while breaker.half_open(OffsetDateTime::now_utc()) {
        let Some(d) = rest.next() else { break };
        if !one(&svc, &breaker, &d).await {
            unrecorded.fetch_add(1, Ordering::Relaxed);
        }
        // The probe reported (closed or reopened the breaker), or never
        // reached the vendor: then the next lease probes.
        breaker.probe_abandoned();
    }
    // The connection's slots bound only the vendor calls; each outcome is
    // recorded beside the calls that follow (its store write and audit
    // entry), so the store's round trips do not hold a slot.
    futures::stream::iter(rest)
        .map(|d| {
            let (svc, breaker) = (&svc, &breaker);
            async move {
                let step = reach(svc, breaker, &d).await;
                (d, step)
            }
        })
        .buffer_unordered(breaker.concurrency)
        .for_each_concurrent(None, |(d, step)| {
            let (svc, unrecorded) = (&svc, &unrecorded);
            async move {
                if !record(svc, &d, step).await {
                    unrecorded.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    tracing::debug!(connection = %connection, count = n, "expiry lane done");
    // The store could record nothing: the same leases would come straight
    // back. Hold this lane (only) for a tick instead of spinning.
    if n > 0 && unrecorded.into_inner() == n {
        tokio::select! {
            _ = tokio::time::sleep(svc.settings.tick) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Revokes one lease, or defers it while its connection's breaker is open.
/// False if the outcome could not be recorded.
async fn one(svc: &LeaseService, breaker: &Breaker, d: &DueLease) -> bool {
    let step = reach(svc, breaker, d).await;
    record(svc, d, step).await
}

/// What the vendor said about one due lease, or that its breaker is open.
enum Step {
    Reached(Result<Reached, LeaseError>),
    Defer { message: String, until: OffsetDateTime },
}

/// Asks the vendor to take one due lease back, unless its connection's
/// breaker is open; records nothing.
async fn reach(svc: &LeaseService, breaker: &Breaker, d: &DueLease) -> Step {
    match breaker.admit(OffsetDateTime::now_utc()) {
        Admit::Call => Step::Reached(svc.reach(&d.lease, d.reason).await),
        Admit::Defer { message, until } => Step::Defer { message, until },
    }
}

/// Records what [`reach`] found. False if the outcome could not be recorded.
async fn record(svc: &LeaseService, d: &DueLease, step: Step) -> bool {
    let r = match step {
        Step::Reached(Ok(reached)) => {
            svc.record(&d.lease, d.reason, reached, ActorInfo::system("expiry-worker"), None).await.map(|_| ())
        }
        Step::Reached(Err(e)) => Err(e),
        Step::Defer { message, until } => svc.defer(d, &message, until).await,
    };
    if let Err(e) = &r {
        tracing::warn!(lease_id = %d.lease.id, error = %e, "recording revocation outcome failed");
    }
    r.is_ok()
}

impl LeaseService {
    /// Records a due lease of a connection whose breaker is open as failing,
    /// retried at `until` (after the breaker's probe), without a vendor call.
    async fn defer(&self, d: &DueLease, message: &str, until: OffsetDateTime) -> Result<(), LeaseError> {
        self.store.record_failure(&d.lease.id, d.reason, message, until).await?;
        let action = if d.reason == EndReason::Expired { "expire" } else { "revoke" };
        self.audit.note(
            with_lease(Event::new(action, "failed"), &d.lease)
                .actor(ActorInfo::system("expiry-worker"))
                .detail("end_reason", d.reason.as_str())
                .error("revoke_failed", message.to_owned())
                .detail("attempts", d.lease.attempts + 1),
        );
        Ok(())
    }
}

/// Sleeps for `d`, until woken or until a lane finishes; true on shutdown.
async fn wait_or_stop(
    svc: &LeaseService,
    shutdown: &mut watch::Receiver<bool>,
    lanes: &mut Lanes,
    d: Duration,
) -> bool {
    let until = OffsetDateTime::now_utc() + d;
    svc.next_wake_ms.store(crate::store::to_ms(until), Ordering::Relaxed);
    let stop = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = svc.wake.notified() => false,
        Some(r) = lanes.0.join_next_with_id(), if !lanes.0.is_empty() => {
            reap(&mut lanes.1, r);
            false
        }
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    };
    svc.next_wake_ms.store(i64::MAX, Ordering::Relaxed);
    stop
}
