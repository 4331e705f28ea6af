//! Unauthenticated traffic is not a lever: 50,000 requests with bad JWTs
//! against the real binary leave a few KB of audit log (the first few
//! failures in full, one summary), a flat RSS, a quiet INFO log, and a
//! workload keeps getting credentials meanwhile (p99 < 100 ms). It measures
//! latency, so `./test.sh` runs it alone after the rest of the suite.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::{spawn_until, stop};
use crate::support::{config_text, copy_dir, Issuer, Key};

const FLOOD: usize = 50_000;
const CLIENTS: usize = 16;

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `n` requests with bad JWTs from one client: junk, a well-formed token of
/// the configured issuer signed by the wrong key, and no token at all.
async fn flood_client(url: String, n: usize, forged: String) -> usize {
    let http = reqwest::Client::new();
    let mut refused = 0;
    for i in 0..n {
        let req = http.post(format!("{url}/v1/leases")).json(&json!({"role": "token/orders"}));
        let req = match i % 3 {
            0 => req.bearer_auth(format!("not.a.jwt{i}")),
            1 => req.bearer_auth(&forged),
            _ => req,
        };
        if let Ok(r) = req.send().await {
            if r.status().as_u16() == 401 {
                refused += 1;
            }
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_tokens_costs_a_few_kb_of_audit_and_issuance_goes_on() {
    let _heavy = crate::support::heavy().await;
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    // The brake on refused authentications is off here: this is the worst
    // case, a flood answered as fast as the machine can (the brake's own
    // test is `a_network_that_keeps_failing_is_answered_late`).
    let extra = "[quotas]\nmax_active_per_owner = 0\nissues_per_minute_per_owner = 0\n\
                 [limits]\nauth_failures_per_second = 0\n";
    std::fs::write(dir.join("lessor.toml"), config_text(dir, &dir.join("policies"), &iss.url, extra, "")).unwrap();
    let log = dir.join("lessor.log");
    let (child, url) =
        spawn_until(&["serve", "--config", "lessor.toml"], dir, &[("RUST_LOG", "info")], &log, "lessor listening on ");
    let pid = child.id();
    let audit = dir.join("audit.log");
    let jwt = iss.token();
    let http = reqwest::Client::new();
    let issue = |http: reqwest::Client, url: String, jwt: String| async move {
        let t = Instant::now();
        let r = http.post(format!("{url}/v1/leases")).bearer_auth(&jwt).json(&json!({"role": "token/orders"})).send().await.unwrap();
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(s, 201, "{v}");
        t.elapsed()
    };
    // Warm up: issues without a flood (the baseline) and a first wave of
    // bad tokens (connection pools, caches and allocator arenas reach their
    // working size).
    let mut quiet = Vec::new();
    for _ in 0..30 {
        quiet.push(issue(http.clone(), url.clone(), jwt.clone()).await);
    }
    quiet.sort();
    let mut wrong = Key::generate();
    wrong.kid = iss.key.kid.clone();
    let forged = iss.sign_with(&wrong, &iss.gh_claims("acme/api", "refs/heads/main"));
    flood_client(url.clone(), 2_000, forged.clone()).await;
    let rss_before = vm_rss_kb(pid);
    let log_before = file_len(&log);
    let audit_before = std::fs::read_to_string(&audit).unwrap();

    // The flood, and a workload issuing credentials all the while.
    let started = Instant::now();
    let flooding = Arc::new(AtomicBool::new(true));
    // The workload is another program: its client runs on its own thread
    // and runtime, not queued behind the flood's tasks in this process.
    let workload = {
        let (url, jwt, flooding) = (url.clone(), jwt.clone(), flooding.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let http = reqwest::Client::new();
                let mut lat = Vec::new();
                while flooding.load(Ordering::SeqCst) || lat.len() < 20 {
                    lat.push(issue(http.clone(), url.clone(), jwt.clone()).await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                lat
            })
        })
    };
    let clients: Vec<_> =
        (0..CLIENTS).map(|_| tokio::spawn(flood_client(url.clone(), FLOOD / CLIENTS, forged.clone()))).collect();
    let mut refused = 0;
    for c in clients {
        refused += c.await.unwrap();
    }
    let flood_time = started.elapsed();
    flooding.store(false, Ordering::SeqCst);
    let mut lat = workload.join().unwrap();
    let rss_after = vm_rss_kb(pid);
    let (s, metrics) = {
        let r = http.get(format!("{url}/metrics")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(s, 200);
    stop(child);

    assert_eq!(refused, FLOOD, "every bad request is a 401");
    // Metrics stay exact: every failure counted (warm-up included).
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("lessor_auth_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, FLOOD + 2_000, "{metrics}");

    // The audit log: the flood's entries are a few lines and summaries.
    let text = std::fs::read_to_string(&audit).unwrap();
    let added = text.strip_prefix(audit_before.as_str()).expect("the audit file was only appended to");
    let auth: Vec<&str> = added.lines().filter(|l| l.contains("\"action\":\"authenticate\"")).collect();
    let auth_bytes: usize = auth.iter().map(|l| l.len() + 1).sum();
    let summaries: Vec<Value> =
        auth.iter().filter(|l| l.contains("failed_summary")).map(|l| serde_json::from_str(l).unwrap()).collect();
    let total: u64 = summaries.iter().filter_map(|s| s["details"]["failures"].as_u64()).sum();
    eprintln!(
        "flood: {FLOOD} bad requests in {flood_time:?}; authentication audit bytes {auth_bytes} ({} lines); RSS {rss_before} kB -> {rss_after} kB",
        auth.len()
    );
    assert!(total >= FLOOD as u64, "the summaries count every failure: {summaries:?}");
    assert!(auth_bytes < 8 * 1024, "the flood wrote {auth_bytes} bytes of authentication entries:\n{}", auth.join("\n"));

    // RSS stays flat.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB during the flood"
    );

    // INFO is quiet: nothing per refused request; one line per credential.
    let log_text = std::fs::read_to_string(&log).unwrap();
    let flood_log = &log_text[log_before as usize..];
    let issued_lines = flood_log.lines().filter(|l| l.contains("credential issued")).count();
    let other: Vec<&str> = flood_log
        .lines()
        .filter(|l| !l.contains("credential issued") && !l.contains("token issued") && !l.contains("shutting down"))
        .collect();
    assert!(issued_lines >= lat.len(), "one INFO line per credential: {issued_lines} for {} issues", lat.len());
    assert!(other.len() < 20, "INFO lines during the flood besides issues:\n{}", other.join("\n"));

    // A workload still got its credentials during the flood, quickly.
    lat.sort();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    eprintln!(
        "flood: {} issues during the flood, p50 {:?}, p99 {p99:?} (without a flood: p50 {:?}, max {:?})",
        lat.len(),
        lat[lat.len() / 2],
        quiet[quiet.len() / 2],
        quiet[quiet.len() - 1]
    );
    assert!(p99 < Duration::from_millis(100), "issue p99 {p99:?} during the flood ({} issues)", lat.len());
}
