//! One revocation, in two steps: [`LeaseService::reach`] asks the vendor
//! to take the credential back (and tells the connection's breaker what it
//! answered); [`LeaseService::record`] writes the outcome to the store, the
//! metrics and the audit log. [`LeaseService::revoke_lease_by`] runs both.
//!
//! Split because they bound different things: the expiry worker holds one
//! of a connection's `revoke_concurrency` slots (the vendor's load) only
//! while it reaches the vendor, and records outcomes beside the next calls
//! ([`super::expiry`]), so the store's round trips no longer cap how fast a
//! vendor is asked. A lease reached and not yet recorded is still live in
//! the store: after a crash it is revoked again (revocation is idempotent).

use std::sync::Arc;

use lessor_plugin::PluginError;
use time::OffsetDateTime;

use super::{breaker, rfc3339, with_lease, LeaseError, LeaseService};
use crate::audit::{ActorInfo, Event};
use crate::plugins::Role;
use crate::principal::RequestMeta;
use crate::store::{EndReason, Lease, LeaseState};
use crate::telemetry::metrics;

/// What the vendor was found to say about a lease, before it is recorded.
pub(super) enum Reached {
    /// The lease's role is no longer configured: nothing can be called.
    NoRole(String),
    /// Its plugin cannot revoke (the credential ends at its expiry).
    NotRevocable(Arc<Role>),
    /// The vendor took the credential back at this time.
    Revoked(Arc<Role>, OffsetDateTime),
    /// The vendor failed, or did not answer within `revoke_timeout`.
    Failed(Arc<Role>, String),
    /// A pending lease was activated since it was read: an issued
    /// credential, not an orphan. Nothing to record.
    Activated,
}

/// What one recorded revocation attempt came to.
enum Attempt {
    /// The lease ended in this state.
    Ended(LeaseState),
    /// The vendor failed; retried later.
    Failed(String),
    /// Its plugin cannot revoke: the lease is over for lessor, the
    /// credential stays valid until `expires_at` ([`Lease::unrevocable`]).
    Unsupported,
}

impl LeaseService {
    /// Takes one lease's credential back, records the outcome in the store
    /// and the audit log (`expire` for expiries, `revoke` otherwise).
    pub async fn revoke_lease_by(
        &self,
        lease: &Lease,
        reason: EndReason,
        actor: ActorInfo,
        meta: Option<&RequestMeta>,
    ) -> Result<LeaseState, LeaseError> {
        let reached = self.reach(lease, reason).await?;
        self.record(lease, reason, reached, actor, meta).await
    }

    /// Asks the vendor to take `lease`'s credential back; records nothing
    /// but the breaker's observation (and, for an orphan, that the sweep
    /// took the pending lease, so activation refuses it from then on).
    pub(super) async fn reach(&self, lease: &Lease, reason: EndReason) -> Result<Reached, LeaseError> {
        if reason == EndReason::Orphaned && lease.state == LeaseState::Pending && !self.store.mark_orphaned(&lease.id).await? {
            tracing::debug!(lease_id = %lease.id, "pending lease was activated before the orphan sweep took it");
            return Ok(Reached::Activated);
        }
        let Some(role) = self.catalog.role(&lease.role).cloned() else {
            return Ok(Reached::NoRole(format!(
                "role `{}` is no longer configured; add it back so its leases can be revoked",
                lease.role
            )));
        };
        if !role.plugin.capabilities().can_revoke() {
            return Ok(Reached::NotRevocable(role));
        }
        let (outcome, seen) = match self.call_revoke(&role, lease).await {
            Ok(Ok(())) => (Ok(()), breaker::Observed::Answered),
            Ok(Err(e @ PluginError::Retryable(_))) => (Err(e.to_string()), breaker::Observed::Retryable),
            Ok(Err(e)) => (Err(e.to_string()), breaker::Observed::Answered),
            Err(timed_out) => (Err(timed_out), breaker::Observed::Retryable),
        };
        let at = OffsetDateTime::now_utc();
        let error = outcome.as_ref().err().map_or("", String::as_str);
        self.breakers.get(&role.connection).observe(seen, error, at);
        Ok(match outcome {
            Ok(()) => Reached::Revoked(role, at),
            Err(msg) => Reached::Failed(role, msg),
        })
    }

    /// The plugin's `revoke` of `lease`: its answer, or (`Err`) why there
    /// was none. A vendor that hangs must not hold the expiry worker (or,
    /// with replicas, this replica's claim) forever: past `revoke_timeout`
    /// the attempt is a failure like any other and is retried later.
    pub(super) async fn call_revoke(&self, role: &Role, lease: &Lease) -> Result<Result<(), PluginError>, String> {
        let lref = super::lease_ref(lease, role);
        let limit = self.settings.revoke_timeout;
        lessor_plugin::call::bounded("revoke", limit, role.plugin.revoke(&lref))
            .await
            .map_err(|_| format!("revocation did not finish within {}", crate::fmt_duration(limit)))
    }

    /// Records what [`Self::reach`] found: the store, the revocation
    /// metrics, and one audit entry (`expire` for expiries, `revoke`
    /// otherwise; `error` when the store could not take the outcome).
    pub(super) async fn record(
        &self,
        lease: &Lease,
        reason: EndReason,
        reached: Reached,
        actor: ActorInfo,
        meta: Option<&RequestMeta>,
    ) -> Result<LeaseState, LeaseError> {
        // What revocation means at this vendor (`immediate`, `published`,
        // `at_expiry`), so the audit log tells the truth per vendor.
        let revocation = match &reached {
            Reached::NotRevocable(role) | Reached::Revoked(role, _) | Reached::Failed(role, _) => {
                Some(role.plugin.capabilities().revocation.mode())
            }
            Reached::NoRole(_) => None,
            Reached::Activated => return Ok(LeaseState::Active),
        };
        let action = if reason == EndReason::Expired { "expire" } else { "revoke" };
        let audit = |outcome: &'static str| {
            let ev = with_lease(Event::new(action, outcome), lease)
                .request(meta)
                .actor(actor.clone())
                .detail("end_reason", reason.as_str());
            match revocation {
                Some(mode) => ev.detail("revocation", mode),
                None => ev,
            }
        };
        let result = self.record_outcome(lease, reason, reached).await;
        let ev = match &result {
            Ok(Attempt::Failed(msg)) => {
                audit("failed").error("revoke_failed", msg.clone()).detail("attempts", lease.attempts + 1)
            }
            Ok(Attempt::Ended(state)) => audit("ok").detail("state", state.as_str()),
            // Not "ok": nothing was taken back, the credential lives on.
            Ok(Attempt::Unsupported) => audit("revoke_unsupported")
                .detail("state", LeaseState::Expired.as_str())
                .detail("valid_until", rfc3339(lease.expires_at)),
            Err(e) => {
                let (kind, text) = e.audit_kind();
                audit("error").error(&kind, text.unwrap_or_default())
            }
        };
        self.audit.note(ev);
        result.map(|a| match a {
            Attempt::Ended(s) => s,
            Attempt::Failed(_) => LeaseState::RevokeFailed,
            Attempt::Unsupported => LeaseState::Expired,
        })
    }

    async fn record_outcome(&self, lease: &Lease, reason: EndReason, reached: Reached) -> Result<Attempt, LeaseError> {
        let count = |kind: &str, role: &str, outcome: &str| {
            metrics().revocations.with_label_values(&[kind, role, reason.as_str(), outcome]).inc();
        };
        // Expiry -> confirmed end, for leases that ended by running out.
        let lag = |role: &Role, ended: bool, at: OffsetDateTime| {
            if ended && reason == EndReason::Expired {
                let secs = (at - lease.expires_at).as_seconds_f64().max(0.0);
                metrics().revocation_lag.with_label_values(&[role.kind.as_str()]).observe(secs);
            }
        };
        match reached {
            Reached::Activated => Ok(Attempt::Ended(LeaseState::Active)),
            Reached::NoRole(msg) => {
                // Labels from the stored lease: a role that was configured once.
                count(lease.plugin.as_str(), lease.role.as_str(), "error");
                self.fail(lease, reason, &msg).await?;
                Ok(Attempt::Failed(msg))
            }
            Reached::NotRevocable(role) => {
                count(role.kind.as_str(), role.name.as_str(), "not_revocable");
                let now = OffsetDateTime::now_utc();
                if reason == EndReason::Expired || now >= lease.expires_at {
                    // Nothing to take back: the credential ended by itself.
                    let ended = self.store.finish(&lease.id, EndReason::Expired, now).await?;
                    lag(&role, ended, now);
                    return Ok(Attempt::Ended(LeaseState::Expired));
                }
                // Asked to revoke what cannot be revoked: say so. The lease is
                // over for lessor; the credential stays valid until it expires.
                self.store.finish_unrevocable(&lease.id, reason, now).await?;
                tracing::warn!(lease_id = %lease.id, role = %role.name, reason = reason.as_str(), valid_until = %lease.expires_at,
                    "revocation asked, but the plugin cannot revoke: the credential stays valid until it expires");
                Ok(Attempt::Unsupported)
            }
            Reached::Revoked(role, at) => {
                let ended = self.store.finish(&lease.id, reason, at).await?;
                count(role.kind.as_str(), role.name.as_str(), "ok");
                lag(&role, ended, at);
                tracing::debug!(lease_id = %lease.id, role = %role.name, reason = reason.as_str(), "lease ended");
                Ok(Attempt::Ended(reason.final_state()))
            }
            Reached::Failed(role, msg) => {
                count(role.kind.as_str(), role.name.as_str(), "error");
                tracing::warn!(lease_id = %lease.id, role = %role.name, error = %msg, attempts = lease.attempts + 1,
                    "revocation failed, will retry");
                self.fail(lease, reason, &msg).await?;
                Ok(Attempt::Failed(msg))
            }
        }
    }

    async fn fail(&self, lease: &Lease, reason: EndReason, msg: &str) -> Result<(), LeaseError> {
        let delay = super::backoff(self.settings.retry_base, self.settings.retry_max, lease.attempts);
        let at = OffsetDateTime::now_utc() + delay;
        self.store.record_failure(&lease.id, reason, msg, at).await?;
        Ok(())
    }
}
