//! Metrics, alert rules and the dashboard: `promtool` checks and unit-tests
//! the rules in `examples/observability/`; a scripted scenario against the
//! real binary moves every counter and histogram by exactly what it did; and
//! every metric the rules and dashboard name exists in `/metrics`.
//!
//! The scenario runs the `lessor` binary (its own process, so its metrics
//! are its own: tests in this binary share one registry and run in
//! parallel, which would blur exact deltas).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::{spawn_until, stop};
use crate::postgres::{pg_toml, start_pg, PG_POLICY};
use crate::support::{config_text, copy_dir, Daemon, Issuer, Key};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/observability")
}

/// Runs `promtool` with `args` in the examples directory. Fails (never
/// skips) when promtool is missing.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).current_dir(examples()).output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`promtool` is not on PATH; install Debian's `prometheus` package, which ships it \
             (`apt-get install prometheus`), then run the tests again"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "lessor-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "lessor-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a test case that fires it.
    let rules = std::fs::read_to_string(examples().join("lessor-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(examples().join("lessor-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert_eq!(alerts.len(), 11, "{alerts:?}");
    for a in alerts {
        let firing = tests.split("alertname: ").skip(1).any(|case| {
            case.starts_with(a) && case.lines().nth(1).is_some_and(|l| !l.contains("exp_alerts: []"))
        });
        assert!(firing, "no promtool case fires `{a}`");
    }
}

/// A `lessor serve` child process, killed if the test fails before `stop`.
struct Lessor {
    child: Option<Child>,
    url: String,
    http: reqwest::Client,
    admin: String,
}

impl Lessor {
    /// Starts the binary on a fresh directory with the test config plus
    /// `extra` and the extra policy `policy`.
    fn start(dir: &Path, config: String, policy: &str) -> Lessor {
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
        if !policy.is_empty() {
            std::fs::write(dir.join("policies/test-extra.cedar"), policy).unwrap();
        }
        // The policies were copied after `config_text`: admit its issuer now.
        if let Some(url) = config.lines().find_map(|l| l.strip_prefix("issuer = \"")).and_then(|r| r.strip_suffix('"')) {
            crate::support::admit_test_issuer(&dir.join("policies"), url);
        }
        std::fs::write(dir.join("lessor.toml"), config).unwrap();
        let (child, url) =
            spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &dir.join("lessor.log"), "lessor listening on ");
        let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        Lessor { child: Some(child), url, http: reqwest::Client::new(), admin }
    }

    async fn scrape(&self) -> Metrics {
        let r = self.http.get(format!("{}/metrics", self.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        Metrics::parse(&r.text().await.unwrap())
    }

    async fn issue(&self, jwt: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}/v1/leases", self.url)).bearer_auth(jwt).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn lease(&self, id: &str) -> Value {
        let r = self.http.get(format!("{}/v1/leases/{id}", self.url)).bearer_auth(&self.admin).send().await.unwrap();
        r.json().await.unwrap()
    }

    async fn wait_state(&self, id: &str, state: &str) -> Value {
        Daemon::eventually(Duration::from_secs(30), || async {
            let l = self.lease(id).await;
            (l["state"] == state).then_some(l)
        })
        .await
        .unwrap_or_else(|| panic!("lease {id} never reached `{state}`"))
    }

    fn stop(mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }
}

impl Drop for Lessor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One scrape: samples by name and label set, plus the families' types.
struct Metrics {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    families: BTreeMap<String, String>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        let mut families = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            samples.insert((name.to_owned(), labels), value.parse().unwrap());
        }
        Metrics { samples, families }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let l = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_owned(), l)).copied()
    }

    /// The sample's value, 0 when absent (a counter not yet touched).
    fn v(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// How much a sample moved between two scrapes.
fn delta(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.v(name, labels) - before.v(name, labels)
}

/// A sample's name, labels and expected move.
type Expect<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Asserts each (name, labels, expected delta).
fn assert_deltas(before: &Metrics, after: &Metrics, cases: &[Expect]) {
    let mut wrong = Vec::new();
    for (name, labels, want) in cases {
        let got = delta(before, after, name, labels);
        if got != *want {
            wrong.push(format!("{name}{labels:?}: moved by {got}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "metrics did not move as they should:\n{}", wrong.join("\n"));
}

/// Seconds from a lease's expiry to its end, from its JSON view.
fn lag_of(lease: &Value) -> f64 {
    let t = |k: &str| {
        let s = lease[k].as_str().unwrap_or_else(|| panic!("{k} in {lease}"));
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    (t("ended_at") - t("expires_at")).as_seconds_f64()
}

fn issued(plugin: &'static str, role: &'static str, outcome: &'static str) -> [(&'static str, &'static str); 4] {
    [("api", "native"), ("outcome", outcome), ("plugin", plugin), ("role", role)]
}

#[tokio::test]
async fn a_scripted_scenario_moves_every_counter_and_histogram_by_what_happened() {
    let iss = Issuer::start().await;
    let mut pg = start_pg();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // pki/web may hold two live leases (a role quota to fill and to hit).
    let config = config_text(dir, &dir.join("policies"), &iss.url, &pg_toml(&pg, dir), "retry_max = \"1s\"")
        .replace("[connections.pki.roles.web]\n", "[connections.pki.roles.web]\nmax_active = 2\n");
    let d = Lessor::start(dir, config, PG_POLICY);
    let jwt = iss.token();
    let m0 = d.scrape().await;

    // Issue: a token, two certificates (30 min), two PostgreSQL roles.
    let (s, a) = d.issue(&jwt, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{a}");
    for _ in 0..2 {
        let (s, v) = d.issue(&jwt, json!({"role": "pki/web", "ttl": "30m"})).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, p) = d.issue(&jwt, json!({"role": "pg/app"})).await;
    assert_eq!(s, 201, "{p}");
    // Deny (a feature branch), then the role quota.
    let dev = iss.sign(&iss.gh_claims("acme/api", "refs/heads/dev"));
    let (s, v) = d.issue(&dev, json!({"role": "pki/web"})).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web"})).await;
    assert_eq!(s, 429, "{v}");
    // Refused tokens: forged signature (configured issuer), an unknown
    // issuer, no token at all.
    let mut forger = Key::generate();
    forger.kid = iss.key.kid.clone();
    let (s, _) = d.issue(&iss.sign_with(&forger, &iss.gh_claims("acme/api", "refs/heads/main")), json!({"role": "pki/web"})).await;
    assert_eq!(s, 401);
    let mut stranger = iss.gh_claims("acme/api", "refs/heads/main");
    stranger.insert("iss".into(), json!("https://issuer.invalid"));
    let (s, _) = d.issue(&iss.sign(&stranger), json!({"role": "pki/web"})).await;
    assert_eq!(s, 401);
    let r = d.http.post(format!("{}/v1/leases", d.url)).json(&json!({"role": "pki/web"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Renew: a PostgreSQL role (ok) and a token (its plugin cannot: conflict).
    let pid = p["lease_id"].as_str().unwrap();
    let r = d.http.post(format!("{}/v1/leases/{pid}/renew", d.url)).bearer_auth(&jwt).json(&json!({"ttl": "20m"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let aid = a["lease_id"].as_str().unwrap();
    let r = d.http.post(format!("{}/v1/leases/{aid}/renew", d.url)).bearer_auth(&jwt).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    // Revoke the token by its owner.
    let r = d.http.delete(format!("{}/v1/leases/{aid}", d.url)).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Expire: a 2 s token, revoked by the expiry worker.
    let (s, x) = d.issue(&jwt, json!({"role": "token/orders", "ttl": "2s"})).await;
    assert_eq!(s, 201, "{x}");
    let xl = d.wait_state(x["lease_id"].as_str().unwrap(), "expired").await;
    let m1 = d.scrape().await;

    let pki = |o| issued("pki", "pki/web", o);
    let token = |o| issued("token", "token/orders", o);
    let pgl = |o| issued("postgres", "pg/app", o);
    assert_deltas(&m0, &m1, &[
        ("lessor_issued_total", &token("ok"), 2.0),
        ("lessor_issued_total", &pki("ok"), 2.0),
        ("lessor_issued_total", &pki("denied"), 1.0),
        ("lessor_issued_total", &pki("quota"), 1.0),
        ("lessor_issued_total", &pki("error"), 0.0),
        ("lessor_issued_total", &pgl("ok"), 1.0),
        ("lessor_issue_duration_seconds_count", &[("plugin", "token")], 2.0),
        ("lessor_issue_duration_seconds_count", &[("plugin", "pki")], 2.0),
        ("lessor_issue_duration_seconds_count", &[("plugin", "postgres")], 1.0),
        // Decisions: 7 issues reached policy (the quota is checked after
        // it), the pg renew, the owner's revoke.
        ("lessor_policy_evaluation_seconds_count", &[("action", "issue")], 7.0),
        ("lessor_policy_evaluation_seconds_count", &[("action", "renew")], 1.0),
        ("lessor_policy_evaluation_seconds_count", &[("action", "revoke")], 1.0),
        ("lessor_policy_denials_total", &[("action", "issue"), ("role", "pki/web")], 1.0),
        ("lessor_quota_rejections_total", &[("quota", "role")], 1.0),
        ("lessor_auth_failures_total", &[("issuer", "test"), ("reason", "signature")], 1.0),
        ("lessor_auth_failures_total", &[("issuer", "unknown"), ("reason", "issuer")], 1.0),
        ("lessor_auth_failures_total", &[("issuer", "unknown"), ("reason", "missing")], 1.0),
        ("lessor_renewed_total", &pgl("ok"), 1.0),
        ("lessor_renewed_total", &token("conflict"), 1.0),
        ("lessor_revocations_total", &[("outcome", "ok"), ("plugin", "token"), ("reason", "revoked"), ("role", "token/orders")], 1.0),
        ("lessor_revocations_total", &[("outcome", "ok"), ("plugin", "token"), ("reason", "expired"), ("role", "token/orders")], 1.0),
        ("lessor_revocation_lag_seconds_count", &[("plugin", "token")], 1.0),
        ("lessor_revocation_lag_seconds_count", &[("plugin", "pki")], 0.0),
    ]);
    // Each successful issue's stages are counted once per stage, and they
    // fit in its duration (which also holds the role lookup and the
    // outcome's audit entry).
    for (plugin, n) in [("token", 2.0), ("pki", 2.0), ("postgres", 1.0)] {
        let mut stages = 0.0;
        for stage in ["checks", "record", "vendor", "activate", "durable"] {
            let labels = [("plugin", plugin), ("stage", stage)];
            assert_eq!(delta(&m0, &m1, "lessor_issue_stage_seconds_count", &labels), n, "{plugin}, stage {stage}");
            stages += delta(&m0, &m1, "lessor_issue_stage_seconds_sum", &labels);
        }
        let whole = delta(&m0, &m1, "lessor_issue_duration_seconds_sum", &[("plugin", plugin)]);
        assert!(stages > 0.0 && stages <= whole, "{plugin}: stages took {stages} s of the issues' {whole} s");
    }
    let lag = delta(&m0, &m1, "lessor_revocation_lag_seconds_sum", &[("plugin", "token")]);
    assert!((lag - lag_of(&xl)).abs() < 0.002, "observed lag {lag}, lease {xl}");
    // Key fetches: exactly what the issuer served.
    let fetches = iss.fetches.load(std::sync::atomic::Ordering::SeqCst) as f64;
    assert!(fetches >= 1.0);
    assert_eq!(m1.v("lessor_jwks_refreshes_total", &[("issuer", "test"), ("outcome", "ok")]), fetches);
    assert_eq!(m1.get("lessor_jwks_refreshes_total", &[("issuer", "test"), ("outcome", "error")]), Some(0.0));

    // Gauges: live leases, what expires within the hour, quota use.
    let leases = |plugin, role, state| m1.get("lessor_leases", &[("plugin", plugin), ("role", role), ("state", state)]);
    assert_eq!(leases("pki", "pki/web", "active"), Some(2.0));
    assert_eq!(leases("token", "token/orders", "active"), Some(0.0));
    assert_eq!(leases("postgres", "pg/app", "active"), Some(1.0));
    assert_eq!(leases("postgres", "pg/app", "revoke_failed"), Some(0.0), "revoke_failed is exported at 0");
    let expiring = |plugin, role| m1.get("lessor_leases_expiring_next_hour", &[("plugin", plugin), ("role", role)]);
    assert_eq!(expiring("pki", "pki/web"), Some(2.0));
    assert_eq!(expiring("postgres", "pg/app"), Some(1.0), "renewed to 20 min");
    assert_eq!(expiring("token", "token/orders"), Some(0.0));
    assert_eq!(m1.get("lessor_quota_limit", &[("quota", "role"), ("role", "pki/web")]), Some(2.0));
    assert_eq!(m1.get("lessor_quota_usage", &[("quota", "role"), ("role", "pki/web")]), Some(2.0));
    assert_eq!(m1.get("lessor_quota_limit", &[("quota", "role"), ("role", "token/orders")]), Some(10000.0));
    assert_eq!(m1.get("lessor_quota_limit", &[("quota", "total"), ("role", "")]), Some(1_000_000.0));
    assert_eq!(m1.get("lessor_quota_usage", &[("quota", "total"), ("role", "")]), Some(3.0));
    assert_eq!(m1.get("lessor_quota_limit", &[("quota", "owner"), ("role", "")]), None, "unlimited quotas are not exported");
    assert_eq!(m1.get("lessor_audit_write_failures_total", &[]), Some(0.0));
    assert_eq!(m1.get("lessor_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    // The pki connection's root credential: its CA's notAfter.
    let ca_pem = d.http.get(format!("{}/v1/pki/pki/web/ca", d.url)).send().await.unwrap().text().await.unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let not_after = pem.parse_x509().unwrap().validity().not_after.timestamp() as f64;
    assert_eq!(m1.get("lessor_connection_credential_expiry_timestamp_seconds", &[("connection", "pki")]), Some(not_after));
    assert_eq!(m1.get("lessor_connection_credential_expiry_timestamp_seconds", &[("connection", "token")]), None);

    // Fail, then retry: a 2 s PostgreSQL role expires while PostgreSQL is down.
    let (s, q) = d.issue(&jwt, json!({"role": "pg/app", "ttl": "2s"})).await;
    assert_eq!(s, 201, "{q}");
    let qid = q["lease_id"].as_str().unwrap();
    pg.stop().unwrap();
    d.wait_state(qid, "revoke_failed").await;
    let m2 = d.scrape().await;
    assert_eq!(m2.get("lessor_leases", &[("plugin", "postgres"), ("role", "pg/app"), ("state", "revoke_failed")]), Some(1.0));
    let failed = &[("outcome", "error"), ("plugin", "postgres"), ("reason", "expired"), ("role", "pg/app")];
    assert!(delta(&m1, &m2, "lessor_revocations_total", failed) >= 1.0);
    assert_eq!(delta(&m1, &m2, "lessor_revocation_lag_seconds_count", &[("plugin", "postgres")]), 0.0, "no lag until revoked");
    pg.restart().unwrap();
    let done = d.wait_state(qid, "expired").await;
    let m3 = d.scrape().await;
    let attempts = done["revoke_attempts"].as_f64().unwrap();
    assert!(attempts >= 1.0, "{done}");
    assert_deltas(&m1, &m3, &[
        ("lessor_issued_total", &pgl("ok"), 1.0),
        ("lessor_revocations_total", failed, attempts),
        ("lessor_revocations_total", &[("outcome", "ok"), ("plugin", "postgres"), ("reason", "expired"), ("role", "pg/app")], 1.0),
        ("lessor_revocation_lag_seconds_count", &[("plugin", "postgres")], 1.0),
    ]);
    // The lag observed is the lease's own: expiry to the end of its retry.
    let observed = delta(&m1, &m3, "lessor_revocation_lag_seconds_sum", &[("plugin", "postgres")]);
    assert!((observed - lag_of(&done)).abs() < 0.002, "observed {observed}, lease {done}");
    assert_eq!(m3.get("lessor_leases", &[("plugin", "postgres"), ("role", "pg/app"), ("state", "revoke_failed")]), Some(0.0));
    let text = d.http.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("lse_") && !text.contains("repo:acme") && !text.contains("issuer.invalid"), "no lease ids, subjects or raw iss in labels");
    d.stop();
}

/// Metric names in a rules file or dashboard: `lessor_` and what follows.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("lessor_") {
        if i > 0 && text[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        out.insert(name);
    }
    out
}

#[tokio::test]
async fn every_metric_the_alerts_and_dashboard_use_exists_in_metrics() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A people provider (never contacted here): its sign-in counters start at 0.
    let secret = dir.join("oidc-secret");
    std::fs::write(&secret, "s3cret").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let people = format!(
        "[people]\n[people.providers.corp]\nissuer = \"https://login.example.com\"\nclient_id = \"lessor\"\nclient_secret_file = \"{}\"\n",
        secret.display()
    );
    let d = Lessor::start(dir, config_text(dir, &dir.join("policies"), &iss.url, &people, ""), "");
    // One refused token: failures are counted per reason as they happen.
    let (s, _) = d.issue("not-a-jwt", json!({"role": "pki/web"})).await;
    assert_eq!(s, 401);
    let m = d.scrape().await;
    // Per-account customer-token gauges exist only where `[customer_tokens]`
    // holds tokens (tests/it/customer_tokens.rs scrapes them); this daemon
    // has none, so they are checked to be registered instead.
    let telemetry = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry.rs")).unwrap();
    let only_with_data = |name: &str| {
        ["lessor_customer_tokens", "lessor_customer_token_warnings"].contains(&name) && telemetry.contains(&format!("\"{name}\""))
    };
    let exported = |name: &str| {
        m.families.contains_key(name)
            || only_with_data(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix).is_some_and(|base| m.families.get(base).is_some_and(|t| t == "histogram"))
            })
    };
    let rules = std::fs::read_to_string(examples().join("lessor-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(examples().join("lessor-dashboard.json")).unwrap();
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    for (file, text) in [("lessor-alerts.yml", &rules), ("lessor-dashboard.json", &dashboard)] {
        let names = names_in(text);
        assert!(names.len() >= 7, "{file}: {names:?}");
        let missing: Vec<_> = names.iter().filter(|n| !exported(n)).collect();
        assert!(missing.is_empty(), "{file} uses metrics lessor does not export: {missing:?}\nexported: {:?}", m.families.keys());
    }
    // And the dashboard has a panel for every family lessor exports.
    let shown = names_in(&dashboard);
    let unshown: Vec<_> = m
        .families
        .keys()
        .filter(|f| f.starts_with("lessor_"))
        .filter(|f| !shown.iter().any(|n| n == *f || n.strip_suffix("_bucket") == Some(f.as_str())))
        .collect();
    assert!(unshown.is_empty(), "the dashboard shows nothing of {unshown:?}");
    d.stop();
}
