//! Per-connection revocation circuit breakers and concurrency: one dead
//! vendor must not delay anybody else's revocations.
//!
//! Every vendor revocation attempt reports its outcome here
//! ([`Breakers::observe`]). After `leases.breaker_threshold` consecutive
//! retryable failures (unreachable, timed out) a connection's breaker opens
//! for `leases.breaker_base`, doubling per failed probe up to
//! `leases.breaker_max`. While it is open the expiry worker does not call the
//! vendor: it records the connection's due leases as `revoke_failed`
//! ("connection `pg` unreachable since ...") with their next attempt at the
//! end of the pause. Then one lease is the half-open probe: success (or any
//! answer from the vendor, even a refusal) closes the breaker, another
//! retryable failure opens it again for longer.
//!
//! State is per process (each replica learns for itself); it holds no lease
//! and no secret. Must not import: http, sqlx.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::LeaseSettings;
use crate::telemetry::metrics;

/// What a vendor call told the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The vendor answered (done, or refused for a reason of its own).
    Answered,
    /// Unreachable or timed out: worth retrying later.
    Retryable,
}

/// What the expiry worker may do with a connection's next due lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Call the vendor (closed breaker, or this call is the probe).
    Call,
    /// Do not call: record the lease as failing until `until`.
    Defer { message: String, until: OffsetDateTime },
}

/// An open breaker, as `lessor status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBreaker {
    pub connection: String,
    /// First failure of the run of failures that opened it.
    pub since: OffsetDateTime,
    /// When the next probe may go out.
    pub until: OffsetDateTime,
    /// The last failure's message.
    pub last_error: String,
}

#[derive(Debug, Default)]
struct State {
    /// Consecutive retryable failures.
    failures: u32,
    /// When the current run of failures began.
    since: Option<OffsetDateTime>,
    last_error: String,
    /// Open until then, with the pause that was used.
    open: Option<(OffsetDateTime, Duration)>,
    /// A probe call is out.
    probing: bool,
}

/// One connection's breaker.
#[derive(Debug)]
pub struct Breaker {
    connection: String,
    threshold: u32,
    base: Duration,
    max: Duration,
    /// Revocations in flight for this connection.
    pub concurrency: usize,
    state: Mutex<State>,
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next due lease goes to the vendor. When the pause has
    /// passed, the first caller gets `Call` as the probe and the others are
    /// deferred until it reports.
    pub fn admit(&self, now: OffsetDateTime) -> Admit {
        let mut s = self.state();
        let Some((until, period)) = s.open else {
            return Admit::Call;
        };
        if now >= until && !s.probing {
            s.probing = true;
            return Admit::Call;
        }
        // A probe is out: whatever waits behind it comes back one pause later
        // (the probe's outcome closes the breaker or sets a new pause).
        let until = if now >= until { now + period } else { until };
        Admit::Defer { message: self.message(&s), until }
    }

    /// Whether the pause is over and no probe is out: the next lease is the
    /// probe and should go alone.
    pub fn half_open(&self, now: OffsetDateTime) -> bool {
        let s = self.state();
        matches!(s.open, Some((until, _)) if now >= until && !s.probing)
    }

    /// A probe call ended without reaching the vendor (nothing observed):
    /// let the next lease probe instead.
    pub fn probe_abandoned(&self) {
        self.state().probing = false;
    }

    /// Records a vendor call's outcome.
    pub fn observe(&self, outcome: Observed, error: &str, now: OffsetDateTime) {
        let mut s = self.state();
        match outcome {
            Observed::Answered => {
                if s.open.is_some() {
                    tracing::info!(connection = %self.connection, "vendor reachable again; circuit breaker closed");
                    metrics().connection_breaker_open.with_label_values(&[self.connection.as_str()]).set(0);
                }
                *s = State::default();
            }
            Observed::Retryable => {
                s.failures = s.failures.saturating_add(1);
                s.since.get_or_insert(now);
                s.last_error = error.to_owned();
                let period = match s.open {
                    // A failed probe: pause for longer.
                    Some((_, p)) if s.probing => Some(p.saturating_mul(2).min(self.max)),
                    // Already open (a call admitted before it opened).
                    Some(_) => None,
                    None if s.failures >= self.threshold => Some(self.base),
                    None => None,
                };
                if let Some(p) = period {
                    s.open = Some((now + p, p));
                    s.probing = false;
                    tracing::warn!(connection = %self.connection, failures = s.failures, pause = %crate::fmt_duration(p),
                        error = %error, "circuit breaker open: not calling the vendor until the probe");
                    metrics().connection_breaker_open.with_label_values(&[self.connection.as_str()]).set(1);
                }
            }
        }
    }

    fn message(&self, s: &State) -> String {
        let since = s
            .since
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        format!("connection `{}` unreachable since {since}: {}", self.connection, s.last_error)
    }

    /// The breaker if it is open.
    pub fn open(&self) -> Option<OpenBreaker> {
        let s = self.state();
        let (until, _) = s.open?;
        Some(OpenBreaker {
            connection: self.connection.clone(),
            since: s.since.unwrap_or(until),
            until,
            last_error: s.last_error.clone(),
        })
    }
}

/// Every connection's breaker, by connection name.
#[derive(Debug, Clone)]
pub struct Breakers {
    by_connection: Arc<BTreeMap<String, Arc<Breaker>>>,
    /// For a connection that is not configured (leases of a removed one).
    fallback: Arc<Breaker>,
}

impl Breakers {
    /// Breakers for `connections` (name, own revocation concurrency if set).
    pub fn new<'a>(settings: &LeaseSettings, connections: impl IntoIterator<Item = (&'a str, Option<usize>)>) -> Breakers {
        let make = |name: &str, concurrency: Option<usize>| {
            Arc::new(Breaker {
                connection: name.to_owned(),
                threshold: settings.breaker_threshold.max(1),
                base: settings.breaker_base,
                max: settings.breaker_max.max(settings.breaker_base),
                concurrency: concurrency.unwrap_or(settings.revoke_concurrency).max(1),
                state: Mutex::new(State::default()),
            })
        };
        let by_connection: BTreeMap<String, Arc<Breaker>> = connections
            .into_iter()
            .map(|(name, c)| {
                // Create the label at zero, so the first opening shows.
                metrics().connection_breaker_open.with_label_values(&[name]).set(0);
                (name.to_owned(), make(name, c))
            })
            .collect();
        Breakers { by_connection: Arc::new(by_connection), fallback: make("(unconfigured)", None) }
    }

    /// The breaker of `connection` (a shared one for unconfigured names, so
    /// labels stay bounded).
    pub fn get(&self, connection: &str) -> &Arc<Breaker> {
        self.by_connection.get(connection).unwrap_or(&self.fallback)
    }

    /// The breakers that are open now, by connection.
    pub fn open(&self) -> Vec<OpenBreaker> {
        self.by_connection.values().filter_map(|b| b.open()).collect()
    }
}

impl super::LeaseService {
    /// Uses `breakers` (with each connection's configured concurrency).
    pub fn with_breakers(mut self, breakers: Breakers) -> Self {
        self.breakers = breakers;
        self
    }
}

pub use crate::store::connection_of;

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        let s = LeaseSettings {
            breaker_threshold: 3,
            breaker_base: Duration::from_secs(2),
            breaker_max: Duration::from_secs(5),
            ..LeaseSettings::default()
        };
        Breakers::new(&s, [("pg", Some(4)), ("token", None)])
    }

    #[test]
    fn opens_after_consecutive_retryable_failures_and_probes_once() {
        let b = breakers();
        let pg = b.get("pg");
        assert_eq!((pg.concurrency, b.get("token").concurrency), (4, 16));
        let t0 = OffsetDateTime::now_utc();
        pg.observe(Observed::Retryable, "refused", t0);
        pg.observe(Observed::Retryable, "refused", t0);
        // A vendor answer in between resets the count.
        pg.observe(Observed::Answered, "", t0);
        for _ in 0..2 {
            pg.observe(Observed::Retryable, "refused", t0);
        }
        assert_eq!(pg.admit(t0), Admit::Call, "two in a row is under the threshold");
        pg.observe(Observed::Retryable, "cannot reach PostgreSQL: refused", t0);
        let until = t0 + Duration::from_secs(2);
        match pg.admit(t0) {
            Admit::Defer { message, until: u } => {
                assert_eq!(u, until);
                assert!(message.starts_with("connection `pg` unreachable since "), "{message}");
                assert!(message.ends_with(": cannot reach PostgreSQL: refused"), "{message}");
            }
            a => panic!("{a:?}"),
        }
        assert!(b.get("token").open().is_none() && b.open().len() == 1, "other connections are unaffected");
        // Half-open: one probe, the rest wait behind it.
        assert!(pg.half_open(until));
        assert_eq!(pg.admit(until), Admit::Call);
        assert!(!pg.half_open(until));
        assert!(matches!(pg.admit(until), Admit::Defer { .. }));
        // A failed probe doubles the pause, capped.
        pg.observe(Observed::Retryable, "refused", until);
        assert_eq!(pg.open().unwrap().until, until + Duration::from_secs(4));
        let t2 = until + Duration::from_secs(4);
        assert_eq!(pg.admit(t2), Admit::Call);
        pg.observe(Observed::Retryable, "refused", t2);
        assert_eq!(pg.open().unwrap().until, t2 + Duration::from_secs(5), "capped at breaker_max");
        // A successful probe closes it.
        let t3 = t2 + Duration::from_secs(5);
        assert_eq!(pg.admit(t3), Admit::Call);
        pg.observe(Observed::Answered, "", t3);
        assert!(pg.open().is_none());
        assert_eq!(pg.admit(t3), Admit::Call);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_lease_probe() {
        let b = breakers();
        let pg = b.get("pg");
        let t0 = OffsetDateTime::now_utc();
        for _ in 0..3 {
            pg.observe(Observed::Retryable, "refused", t0);
        }
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(pg.admit(t1), Admit::Call);
        pg.probe_abandoned();
        assert!(pg.half_open(t1));
    }

    #[test]
    fn roles_map_to_their_connection() {
        assert_eq!(connection_of("pg/app"), "pg");
        assert_eq!(connection_of("odd"), "odd");
        let b = breakers();
        assert_eq!(b.get("gone").connection, "(unconfigured)");
    }
}
