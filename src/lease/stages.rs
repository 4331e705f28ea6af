//! Where an issue's time goes: the wall time of each stage of the issue
//! path, per plugin in `lessor_issue_stage_seconds{plugin, stage}` and in
//! the vendor benchmarks. With a vendor that takes milliseconds, `vendor`
//! is nearly all of it; lessor's own stages say what lessor adds.
//!
//! Must not import: http, store, server (the lease service fills it in).

use std::time::Duration;

use crate::telemetry::metrics;

/// Wall time of each stage of one successful issue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IssueStages {
    /// Everything before the lease is written: the request's checks, the
    /// policy decision, quotas and the decision's audit entry.
    pub checks: Duration,
    /// Writing the pending lease (its commit; its sync runs during the
    /// vendor call).
    pub record: Duration,
    /// The plugin's issue call.
    pub vendor: Duration,
    /// Writing the lease active (its commit).
    pub activate: Duration,
    /// Waiting, after the vendor returned, for the pending lease to be on
    /// disk (zero when its sync finished during the vendor call).
    pub durable: Duration,
}

impl IssueStages {
    /// The `stage` label's values, in the issue path's order.
    pub const NAMES: [&'static str; 5] = ["checks", "record", "vendor", "activate", "durable"];

    /// Each stage with its label.
    pub fn each(&self) -> [(&'static str, Duration); 5] {
        let [a, b, c, d, e] = Self::NAMES;
        [(a, self.checks), (b, self.record), (c, self.vendor), (d, self.activate), (e, self.durable)]
    }

    /// The stages together.
    pub fn total(&self) -> Duration {
        self.each().iter().fold(Duration::ZERO, |t, (_, d)| t.saturating_add(*d))
    }

    /// Adds each stage to `lessor_issue_stage_seconds` of `plugin`.
    pub(super) fn observe(&self, plugin: &str) {
        for (stage, d) in self.each() {
            metrics().issue_stage_seconds.with_label_values(&[plugin, stage]).observe(d.as_secs_f64());
        }
    }
}
