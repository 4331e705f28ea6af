//! Metric series the lease service owns beyond per-request counters: the
//! label sets created at start (so the first increment shows in `rate()`),
//! and the gauges refreshed from the store at scrape time, so they are right
//! on every replica and after restarts. Those reads are of the counts the
//! store keeps with each lease change ([`crate::store::LeaseStore::counts`]):
//! a scrape costs O(roles x states), never O(leases).

use time::OffsetDateTime;

use super::LeaseService;
use crate::policy::Action;
use crate::store::{EndReason, LeaseState};
use crate::telemetry::{metrics, REQUEST_OUTCOMES};

/// How far ahead `lessor_leases_expiring_next_hour` looks.
const EXPIRING_WINDOW: time::Duration = time::Duration::hours(1);

impl LeaseService {
    /// Creates every bounded label set of the lease counters and histograms
    /// at zero (per configured role and plugin), so a series exists before
    /// its first event and `increase()` sees that event.
    pub fn init_metrics(&self) {
        let m = metrics();
        for role in self.catalog.roles.values() {
            let (plugin, name) = (role.kind.as_str(), role.name.as_str());
            for o in REQUEST_OUTCOMES {
                for api in crate::principal::APIS {
                    m.issued.with_label_values(&[plugin, name, o, api]);
                    m.renewed.with_label_values(&[plugin, name, o, api]);
                }
            }
            let outcomes: &[&str] =
                if role.plugin.capabilities().can_revoke() { &["ok", "error"] } else { &["not_revocable"] };
            for reason in [EndReason::Expired, EndReason::Revoked, EndReason::Orphaned] {
                for o in outcomes {
                    m.revocations.with_label_values(&[plugin, name, reason.as_str(), o]);
                }
            }
            m.issue_seconds.with_label_values(&[plugin]);
            for stage in super::IssueStages::NAMES {
                m.issue_stage_seconds.with_label_values(&[plugin, stage]);
            }
            m.revocation_lag.with_label_values(&[plugin]);
            for a in [Action::Issue, Action::Renew, Action::Revoke, Action::Read] {
                m.policy_denials.with_label_values(&[a.as_str(), name]);
            }
        }
        for a in Action::ALL {
            m.policy_seconds.with_label_values(&[a.as_str()]);
        }
        // Decisions about no role (admin) are labelled `lessor`.
        m.policy_denials.with_label_values(&[Action::Admin.as_str(), "lessor"]);
        for q in ["owner", "role", "total", "rate", "vault_login"] {
            m.quota_rejections.with_label_values(&[q]);
        }
        for o in ["ok", "error"] {
            m.policy_reloads.with_label_values(&[o]);
        }
    }

    /// Refreshes the store-backed gauges: leases by state, leases expiring
    /// within the hour, quota limits and usage, and each connection's
    /// root-credential expiry. A failing store read is logged and leaves
    /// that gauge as it was.
    pub async fn refresh_gauges(&self) {
        let m = metrics();
        let roles = || self.catalog.roles.values();
        let mut live_by_role = std::collections::BTreeMap::<String, i64>::new();
        match self.store.counts().await {
            Ok(counts) => {
                m.leases.reset();
                for role in roles() {
                    for s in [LeaseState::Pending, LeaseState::Active, LeaseState::RevokeFailed] {
                        m.leases.with_label_values(&[role.kind.as_str(), role.name.as_str(), s.as_str()]).set(0);
                    }
                }
                for (role, plugin, state, n) in counts {
                    m.leases.with_label_values(&[plugin.as_str(), role.as_str(), state.as_str()]).set(n);
                    *live_by_role.entry(role).or_default() += n;
                }
                self.refresh_quotas(&live_by_role).await;
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count leases"),
        }
        match self.store.expiring(OffsetDateTime::now_utc() + EXPIRING_WINDOW).await {
            Ok(rows) => {
                m.expiring.reset();
                for role in roles() {
                    m.expiring.with_label_values(&[role.kind.as_str(), role.name.as_str()]).set(0);
                }
                for (role, plugin, n) in rows {
                    m.expiring.with_label_values(&[plugin.as_str(), role.as_str()]).set(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count expiring leases"),
        }
        m.credential_expiry.reset();
        for (name, plugin) in &self.catalog.connections {
            // The earlier of what the plugin knows (a CA's notAfter) and the
            // owner's review date for a managed root credential.
            let review = self.roots.as_ref().and_then(|r| r.review_deadline(name));
            let ends = match plugin.credential_expiry().await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!(connection = %name, error = %e, "metrics: cannot read the root credential's expiry");
                    None
                }
            };
            if let Some(at) = [ends, review].into_iter().flatten().min() {
                m.credential_expiry.with_label_values(&[name.as_str()]).set(at.unix_timestamp());
            }
        }
    }

    /// Quota limits (only those that are set) and what each counts now.
    async fn refresh_quotas(&self, live_by_role: &std::collections::BTreeMap<String, i64>) {
        let m = metrics();
        m.quota_limit.reset();
        m.quota_usage.reset();
        let q = &self.quotas;
        let gauge = |quota: &str, role: &str, limit: u64, usage: Option<i64>| {
            m.quota_limit.with_label_values(&[quota, role]).set(i64::try_from(limit).unwrap_or(i64::MAX));
            if let Some(n) = usage {
                m.quota_usage.with_label_values(&[quota, role]).set(n);
            }
        };
        if q.max_active_total > 0 {
            gauge("total", "", q.max_active_total, Some(live_by_role.values().sum()));
        }
        for role in self.catalog.roles.values() {
            let limit = role.cfg.max_active.unwrap_or(q.max_active_per_role);
            if limit > 0 {
                gauge("role", &role.name, limit, Some(live_by_role.get(&role.name).copied().unwrap_or(0)));
            }
        }
        if q.max_active_per_owner > 0 {
            match self.store.max_live_per_owner().await {
                Ok(n) => gauge("owner", "", q.max_active_per_owner, Some(n)),
                Err(e) => tracing::warn!(error = %e, "metrics: cannot count leases per workload"),
            }
        }
        if q.issues_per_minute_per_owner > 0 {
            // Per replica and per workload: a limit worth showing, no usage.
            gauge("rate", "", u64::from(q.issues_per_minute_per_owner), None);
        }
    }
}
