//! Metrics (Prometheus, names `lessor_*`, bounded labels: plugin, role,
//! state, outcome, reason, configured issuer) and log setup.
//!
//! Labels never carry lease ids, subjects, claims or anything a caller
//! chooses freely; role and issuer labels come from the config.
//!
//! Must not import: store, lease, http, audit, config, policy (every layer
//! reports here).

use std::sync::OnceLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub leases: IntGaugeVec,
    pub issued: IntCounterVec,
    pub renewed: IntCounterVec,
    pub revocations: IntCounterVec,
    pub issue_seconds: HistogramVec,
    /// Wall time of each stage of an issue, by plugin and stage (checks,
    /// record, vendor, activate, durable; `lease::IssueStages`).
    pub issue_stage_seconds: HistogramVec,
    pub policy_seconds: HistogramVec,
    pub auth_failures: IntCounterVec,
    /// Refused authentications answered late (their network was over its budget).
    pub auth_failures_delayed: IntCounter,
    pub policy_denials: IntCounterVec,
    pub jwks_refreshes: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub quota_rejections: IntCounterVec,
    pub replicas: IntGauge,
    pub policy_versions: IntGauge,
    /// Seconds from a lease's expiry to its confirmed revocation, by plugin.
    pub revocation_lag: HistogramVec,
    /// Active leases whose expiry falls within the next hour.
    pub expiring: IntGaugeVec,
    /// Each quota's limit (`role` set for per-role quotas only).
    pub quota_limit: IntGaugeVec,
    /// What each quota counts now (owner: the fullest workload).
    pub quota_usage: IntGaugeVec,
    /// Audit entries that could not be written.
    pub audit_write_failures: IntCounter,
    /// When a connection's root credential (a CA certificate, an admin
    /// password) stops working, as a unix timestamp.
    pub credential_expiry: IntGaugeVec,
    /// Age of a connection's active root credential, seconds.
    pub connection_credential_age: IntGaugeVec,
    /// Lease rows the expiry worker could not decode and set aside.
    pub lease_rows_undecodable: IntCounter,
    /// Ended leases deleted by retention.
    pub leases_pruned: IntCounter,
    /// 1 while a connection's revocation circuit breaker is open.
    pub connection_breaker_open: IntGaugeVec,
    /// Vendor objects without a live lease the reconciler revoked (or failed to).
    pub reconcile_strays: IntCounterVec,
    /// Active leases whose vendor object the last reconcile pass did not find.
    pub reconcile_missing: IntGaugeVec,
    /// Customer tokens that work, by account and state (active, retiring).
    pub customer_tokens: IntGaugeVec,
    /// Active customer tokens with a warning, by account and warning
    /// (expires_soon, not_rotated). Never a token's name or id.
    pub customer_token_warnings: IntGaugeVec,
    /// Introspections by outcome (active, inactive, unknown, malformed,
    /// unauthenticated).
    pub customer_token_introspections: IntCounterVec,
    /// Token uses not recorded (queue full, store write failed).
    pub customer_token_uses_dropped: IntCounter,
    /// People's sign-ins by configured provider, way (browser, device),
    /// outcome (ok, refused) and refusal reason (a fixed set; `none` when
    /// ok). Never a person's name, email or subject.
    pub people_sign_ins: IntCounterVec,
}

/// Outcomes of issue and renew requests (`outcome` label).
pub const REQUEST_OUTCOMES: [&str; 6] = ["ok", "denied", "invalid", "quota", "conflict", "error"];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let leases = IntGaugeVec::new(
        Opts::new("lessor_leases", "Leases that are not yet ended, by plugin, role and state"),
        &["plugin", "role", "state"],
    )?;
    let issued = IntCounterVec::new(
        Opts::new("lessor_issued_total", "Issue requests by plugin, role, outcome and API (native, vault)"),
        &["plugin", "role", "outcome", "api"],
    )?;
    let renewed = IntCounterVec::new(
        Opts::new("lessor_renewed_total", "Renew requests by plugin, role, outcome and API (native, vault)"),
        &["plugin", "role", "outcome", "api"],
    )?;
    let revocations = IntCounterVec::new(
        Opts::new("lessor_revocations_total", "Revocation attempts by plugin, role, reason and outcome"),
        &["plugin", "role", "reason", "outcome"],
    )?;
    let issue_seconds = HistogramVec::new(
        HistogramOpts::new("lessor_issue_duration_seconds", "Time to issue a credential, by plugin")
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        &["plugin"],
    )?;
    let issue_stage_seconds = HistogramVec::new(
        HistogramOpts::new(
            "lessor_issue_stage_seconds",
            "Time spent in each stage of an issue (checks, record, vendor, activate, durable), by plugin",
        )
        .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        &["plugin", "stage"],
    )?;
    let policy_seconds = HistogramVec::new(
        HistogramOpts::new("lessor_policy_evaluation_seconds", "Time to evaluate policy, by action")
            .buckets(vec![0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005]),
        &["action"],
    )?;
    let auth_failures_delayed = IntCounter::new(
        "lessor_auth_failures_delayed_total",
        "Refused authentications answered late because their source network (/24, /64) was over limits.auth_failures_per_second",
    )?;
    let auth_failures = IntCounterVec::new(
        Opts::new(
            "lessor_auth_failures_total",
            "Refused workload tokens by configured issuer (`unknown` when the token names none) and reason",
        ),
        &["issuer", "reason"],
    )?;
    let policy_denials = IntCounterVec::new(
        Opts::new("lessor_policy_denials_total", "Requests denied by policy, by action and role"),
        &["action", "role"],
    )?;
    let jwks_refreshes = IntCounterVec::new(
        Opts::new("lessor_jwks_refreshes_total", "Key set fetches by configured issuer and outcome"),
        &["issuer", "outcome"],
    )?;
    let policy_reloads = IntCounterVec::new(
        Opts::new("lessor_policy_reloads_total", "Policy reloads by outcome"),
        &["outcome"],
    )?;
    let quota_rejections = IntCounterVec::new(
        Opts::new("lessor_quota_rejections_total", "Issue requests (and Vault API logins, `vault_login`) refused by a quota or rate limit, by which"),
        &["quota"],
    )?;
    let replicas = IntGauge::new("lessor_replicas", "lessor processes alive on this store (heartbeat within claim_timeout)")?;
    let policy_versions = IntGauge::new(
        "lessor_policy_versions",
        "Distinct policy set versions among live replicas; more than 1 means replicas decide differently",
    )?;
    let revocation_lag = HistogramVec::new(
        HistogramOpts::new(
            "lessor_revocation_lag_seconds",
            "Time from a lease's expiry to its confirmed revocation (retries included), by plugin",
        )
        .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]),
        &["plugin"],
    )?;
    let expiring = IntGaugeVec::new(
        Opts::new("lessor_leases_expiring_next_hour", "Active leases that expire within the next hour, by plugin and role"),
        &["plugin", "role"],
    )?;
    let quota_limit = IntGaugeVec::new(
        Opts::new("lessor_quota_limit", "Configured quota limits (unset when unlimited); role only for per-role quotas"),
        &["quota", "role"],
    )?;
    let quota_usage = IntGaugeVec::new(
        Opts::new(
            "lessor_quota_usage",
            "What each quota counts now: live leases in total, per role, and of the fullest workload (owner)",
        ),
        &["quota", "role"],
    )?;
    let audit_write_failures =
        IntCounter::new("lessor_audit_write_failures_total", "Audit entries that could not be written")?;
    let credential_expiry = IntGaugeVec::new(
        Opts::new(
            "lessor_connection_credential_expiry_timestamp_seconds",
            "When a connection's root credential ends or is due for review (the earlier of a pki CA's notAfter and the connection's review_by), unix seconds",
        ),
        &["connection"],
    )?;
    let connection_credential_age = IntGaugeVec::new(
        Opts::new("lessor_connection_credential_age_seconds", "Age of a connection's active root credential, by connection"),
        &["connection"],
    )?;
    let lease_rows_undecodable = IntCounter::new(
        "lessor_lease_rows_undecodable_total",
        "Due lease rows that failed to decode (unknown state, corrupt column) and were set aside by id",
    )?;
    let leases_pruned =
        IntCounter::new("lessor_leases_pruned_total", "Ended leases deleted after the retention period")?;
    let connection_breaker_open = IntGaugeVec::new(
        Opts::new(
            "lessor_connection_breaker_open",
            "1 while a connection's revocation circuit breaker is open (its vendor is not called; its due leases wait for the probe)",
        ),
        &["connection"],
    )?;
    let reconcile_strays = IntCounterVec::new(
        Opts::new(
            "lessor_reconcile_strays_total",
            "Vendor objects without a live lease (lease ended, or no lease row) the reconciler revoked (outcome revoked) or failed to revoke (failed), by connection",
        ),
        &["connection", "outcome"],
    )?;
    let reconcile_missing = IntGaugeVec::new(
        Opts::new(
            "lessor_reconcile_missing",
            "Active leases whose vendor object the last reconcile pass did not find (reported, not revoked), by connection",
        ),
        &["connection"],
    )?;
    let customer_tokens = IntGaugeVec::new(
        Opts::new("lessor_customer_tokens", "Customer API tokens that work, by account and state (active, retiring)"),
        &["account", "state"],
    )?;
    let customer_token_warnings = IntGaugeVec::new(
        Opts::new(
            "lessor_customer_token_warnings",
            "Active customer API tokens with a warning, by account and warning (expires_soon, not_rotated)",
        ),
        &["account", "warning"],
    )?;
    let customer_token_introspections = IntCounterVec::new(
        Opts::new(
            "lessor_customer_token_introspections_total",
            "Customer token introspections by outcome (active, inactive, unknown, malformed, unauthenticated)",
        ),
        &["outcome"],
    )?;
    // Every outcome from the start, so a dashboard's rate() has a series
    // before the first introspection.
    for o in ["active", "inactive", "unknown", "malformed", "unauthenticated"] {
        customer_token_introspections.with_label_values(&[o]);
    }
    let customer_token_uses_dropped = IntCounter::new(
        "lessor_customer_token_uses_dropped_total",
        "Customer token uses not recorded (usage queue full, or the store write failed)",
    )?;
    let people_sign_ins = IntCounterVec::new(
        Opts::new(
            "lessor_people_sign_ins_total",
            "People's sign-ins by configured provider, way (browser, device), outcome (ok, refused) and refusal reason",
        ),
        &["provider", "via", "outcome", "reason"],
    )?;
    let build_info = IntGaugeVec::new(Opts::new("lessor_build_info", "Build information"), &["version"])?;
    build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    for c in [
        Box::new(leases.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(issued.clone()),
        Box::new(renewed.clone()),
        Box::new(revocations.clone()),
        Box::new(issue_seconds.clone()),
        Box::new(issue_stage_seconds.clone()),
        Box::new(policy_seconds.clone()),
        Box::new(auth_failures.clone()),
        Box::new(auth_failures_delayed.clone()),
        Box::new(policy_denials.clone()),
        Box::new(jwks_refreshes.clone()),
        Box::new(policy_reloads.clone()),
        Box::new(quota_rejections.clone()),
        Box::new(replicas.clone()),
        Box::new(policy_versions.clone()),
        Box::new(revocation_lag.clone()),
        Box::new(expiring.clone()),
        Box::new(quota_limit.clone()),
        Box::new(quota_usage.clone()),
        Box::new(audit_write_failures.clone()),
        Box::new(credential_expiry.clone()),
        Box::new(connection_credential_age.clone()),
        Box::new(lease_rows_undecodable.clone()),
        Box::new(leases_pruned.clone()),
        Box::new(connection_breaker_open.clone()),
        Box::new(reconcile_strays.clone()),
        Box::new(reconcile_missing.clone()),
        Box::new(customer_tokens.clone()),
        Box::new(customer_token_warnings.clone()),
        Box::new(customer_token_introspections.clone()),
        Box::new(customer_token_uses_dropped.clone()),
        Box::new(people_sign_ins.clone()),
        Box::new(build_info),
    ] {
        registry.register(c)?;
    }
    Ok(Metrics {
        registry,
        leases,
        issued,
        renewed,
        revocations,
        issue_seconds,
        issue_stage_seconds,
        policy_seconds,
        auth_failures,
        auth_failures_delayed,
        policy_denials,
        jwks_refreshes,
        policy_reloads,
        quota_rejections,
        replicas,
        policy_versions,
        revocation_lag,
        expiring,
        quota_limit,
        quota_usage,
        audit_write_failures,
        credential_expiry,
        connection_credential_age,
        lease_rows_undecodable,
        leases_pruned,
        connection_breaker_open,
        reconcile_strays,
        reconcile_missing,
        customer_tokens,
        customer_token_warnings,
        customer_token_introspections,
        customer_token_uses_dropped,
        people_sign_ins,
    })
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    // Fixed names and label sets: construction cannot fail at run time, and a
    // test (`metrics_build`) proves it.
    METRICS.get_or_init(|| build().expect("fixed metric definitions are valid"))
}

impl Metrics {
    /// `issuer` is the issuer's name in the config.
    pub fn jwks_refresh(&self, issuer: &str, outcome: &str) {
        self.jwks_refreshes.with_label_values(&[issuer, outcome]).inc();
    }

    /// A refused workload token. `issuer` is the configured issuer's name,
    /// or `unknown` when the token names none (never the raw `iss`).
    pub fn auth_failure(&self, issuer: &str, reason: &str) {
        self.auth_failures.with_label_values(&[issuer, reason]).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let enc = prometheus::TextEncoder::new();
        enc.encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

/// Installs the log subscriber: `RUST_LOG` (default `info`), text or JSON.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_build() {
        let m = super::build().unwrap();
        m.issued.with_label_values(&["pki", "pki/web", "ok", "native"]).inc();
        assert!(m.render().contains("lessor_issued_total{api=\"native\",outcome=\"ok\",plugin=\"pki\",role=\"pki/web\"} 1"));
        assert!(m.render().contains("lessor_audit_write_failures_total 0"), "a plain counter is exported from the start");
    }
}
