//! The scope of one plugin call: its deadline and its cancellation.
//!
//! The core runs every plugin call (`issue`, `renew`, `revoke`, `validate`,
//! `list_objects`, `validate_root`, `rotate_root`, `install_root`) inside
//! [`bounded`], which sets a tokio task-local [`CallScope`] for the call's
//! future: its deadline and a [`CancellationToken`] that is cancelled when
//! the call ends for any reason (it returned, timed out, or its caller
//! dropped it). The trait's method signatures do not change; a plugin that
//! makes several vendor round trips reads the scope between them:
//!
//! ```text
//! lessor_plugin::call::check("DROP ROLE")?; // deadline passed: stop here, retryable
//! let step = lessor_plugin::call::remaining().unwrap_or(DEFAULT).min(MY_STEP_TIMEOUT);
//! ```
//!
//! A task the plugin spawns does not inherit a task-local: it takes
//! [`current`] before spawning and runs under [`CallScope::scope`], or
//! watches [`CallScope::cancellation`].
//!
//! Outside a call (a plugin's own background work, a test calling the plugin
//! directly) there is no scope: [`current`] is `None` and [`check`] passes.
//!
//! Must not import: anything of the core (this is the SDK).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
pub use tokio_util::sync::CancellationToken;

use crate::PluginError;

/// Longest bound [`bounded`] accepts; longer ones are cut to it, so a
/// deadline is always a representable instant.
pub const MAX_CALL: Duration = Duration::from_secs(24 * 3600);

/// One plugin call's deadline and cancellation.
#[derive(Debug, Clone)]
pub struct CallScope {
    op: &'static str,
    deadline: Instant,
    cancel: CancellationToken,
}

tokio::task_local! {
    static SCOPE: CallScope;
}

impl CallScope {
    /// A scope ending `limit` from now (at most [`MAX_CALL`]), with a fresh
    /// token. The core makes these through [`bounded`].
    pub fn new(op: &'static str, limit: Duration) -> CallScope {
        let now = Instant::now();
        let deadline = now.checked_add(limit.min(MAX_CALL)).unwrap_or(now);
        CallScope { op, deadline, cancel: CancellationToken::new() }
    }

    /// The call this scope bounds (`issue`, `revoke`, `rotate_root`, ...).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// When the core stops waiting for the call.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Cancelled when the call ends: past its deadline, when the core gives
    /// up on it, or when it returned. Clone it into spawned work.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the call should stop: cancelled or past its deadline.
    pub fn is_over(&self) -> bool {
        self.cancel.is_cancelled() || self.remaining().is_zero()
    }

    /// Runs `fut` (e.g. a task the plugin spawns for this call) inside this
    /// scope, so [`current`] and [`check`] see it there too.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        SCOPE.scope(self, fut).await
    }
}

/// The scope of the call running on this task, if any.
pub fn current() -> Option<CallScope> {
    SCOPE.try_with(|s| s.clone()).ok()
}

/// The current call's deadline, if inside a call.
pub fn deadline() -> Option<Instant> {
    SCOPE.try_with(|s| s.deadline).ok()
}

/// Time left in the current call, if inside a call. Size a step's own
/// vendor timeout with `remaining().unwrap_or(default).min(default)`.
pub fn remaining() -> Option<Duration> {
    SCOPE.try_with(|s| s.remaining()).ok()
}

/// The current call's cancellation token, if inside a call.
pub fn cancellation() -> Option<CancellationToken> {
    SCOPE.try_with(|s| s.cancel.clone()).ok()
}

/// Between the steps of a call: `Err` (retryable, naming the call and the
/// step not started) once the call is cancelled or past its deadline, so a
/// plugin stops before starting a step the core will not wait for. `Ok`
/// outside a call.
pub fn check(step: &str) -> Result<(), PluginError> {
    match current() {
        Some(s) if s.is_over() => Err(PluginError::Retryable(format!(
            "`{}` reached its deadline before {step}; that step was not started",
            s.op
        ))),
        _ => Ok(()),
    }
}

/// A call that did not finish within its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("`{op}` did not finish within {}", humanize(*.limit))]
pub struct Elapsed {
    pub op: &'static str,
    pub limit: Duration,
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// For the core: runs one plugin call `op` under a new [`CallScope`] ending
/// `limit` from now. Past the deadline the scope's token is cancelled and
/// the call's future dropped: `Err(Elapsed)`. The token is cancelled as
/// well when the call returns or when this future is dropped.
pub async fn bounded<F: Future>(op: &'static str, limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let scope = CallScope::new(op, limit);
    let deadline = scope.deadline;
    let _cancel_on_exit = scope.cancel.clone().drop_guard();
    match tokio::time::timeout_at(deadline, SCOPE.scope(scope, fut)).await {
        Ok(v) => Ok(v),
        Err(_) => Err(Elapsed { op, limit }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_sees_its_deadline_and_is_cancelled_when_it_ends() {
        assert!(current().is_none() && check("anything").is_ok());
        let seen = bounded("revoke", Duration::from_secs(10), async {
            let s = current().expect("inside a call");
            assert_eq!(s.op(), "revoke");
            let left = remaining().unwrap();
            assert!(left <= Duration::from_secs(10) && left > Duration::from_secs(9), "{left:?}");
            assert_eq!(deadline(), Some(s.deadline()));
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(remaining().unwrap() <= left - Duration::from_millis(300));
            assert!(!cancellation().unwrap().is_cancelled());
            check("step two").unwrap();
            s.cancellation().clone()
        })
        .await
        .unwrap();
        // The call returned: its token is cancelled for anything it left behind.
        assert!(seen.is_cancelled());
        assert!(current().is_none());

        // Past the deadline: the core gets Elapsed, spawned work sees the
        // cancellation, and `check` refuses the next step.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = bounded("rotate_root", Duration::from_millis(200), async move {
            let s = current().unwrap();
            let token = s.cancellation().clone();
            tokio::spawn(s.scope(async move {
                token.cancelled().await;
                let _ = tx.send(check("ALTER ROLE").unwrap_err().to_string());
            }));
            std::future::pending::<()>().await
        })
        .await;
        assert_eq!(out.unwrap_err(), Elapsed { op: "rotate_root", limit: Duration::from_millis(200) });
        assert_eq!(out.unwrap_err().to_string(), "`rotate_root` did not finish within 200ms");
        let msg = rx.await.unwrap();
        assert!(msg.contains("`rotate_root` reached its deadline before ALTER ROLE"), "{msg}");
    }
}
