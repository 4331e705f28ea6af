//! The audit log end to end: one entry per event with its fields, no secret
//! in it, `audit hash` finds a token's uses, `audit verify` names the first
//! tampered line (edit, removal, swap, cut mid-line, cut tail), rotation on
//! SIGHUP continues the chain, and a sink that cannot be written refuses
//! issuance (503) with nothing issued.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::binary::{spawn_until, stop};
use crate::postgres::{pg_daemon, start_pg};
use crate::support::{config_text, copy_dir, Daemon, Issuer, Opts};

const BIN: &str = env!("CARGO_BIN_EXE_lessor");

fn entries(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn find<'a>(es: &'a [Value], action: &str, outcome: &str, lease: &str) -> Vec<&'a Value> {
    es.iter()
        .filter(|e| e["action"] == action && e["outcome"] == outcome && (lease.is_empty() || e["lease_id"] == lease))
        .collect()
}

/// Runs `lessor <args>` with `stdin`; returns (exit code, stdout).
fn lessor(args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(BIN).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn contains(hay: &str, needle: &str) -> bool {
    !needle.is_empty() && hay.contains(needle)
}

#[tokio::test]
async fn a_scenario_writes_one_entry_per_event_and_no_secret() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let (mut d, _aux) = pg_daemon(&iss, &pg, "").await;
    let audit = d.dir.join("audit.log");
    let jwt = iss.token();
    let subject = "repo:acme/api:ref:refs/heads/main";

    // Issue (with a client request id and a free-form param), renew, revoke.
    let r = d
        .http
        .post(format!("{}/v1/leases", d.url))
        .bearer_auth(&jwt)
        .header("x-request-id", "it-req-1")
        .json(&json!({"role": "pg/app", "ttl": "1m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(r.headers()["x-request-id"], "it-req-1");
    let v: Value = r.json().await.unwrap();
    let pg_id = v["lease_id"].as_str().unwrap().to_owned();
    let password = v["credential"]["password"].as_str().unwrap().to_owned();
    let dsn = v["credential"]["dsn"].as_str().unwrap().to_owned();
    let (s, r) = d.post(&format!("/v1/leases/{pg_id}/renew"), &jwt, json!({"ttl": "30m"})).await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = d.delete(&format!("/v1/leases/{pg_id}"), &jwt).await;
    assert_eq!(s, 200, "{r}");

    // A certificate that expires, its private key a canary.
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web", "ttl": "2s"})).await;
    assert_eq!(s, 201, "{v}");
    let pki_id = v["lease_id"].as_str().unwrap().to_owned();
    let key_lines: Vec<String> = v["credential"]["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_owned)
        .collect();

    // Refusals: a feature branch (policy), an unknown role, free-form
    // params, a bad token, an unusable request id: all client strings.
    let dev = iss.sign(&iss.gh_claims("acme/api", "refs/heads/dev"));
    let (s, _) = d.issue(&dev, json!({"role": "pki/web"})).await;
    assert_eq!(s, 403);
    let (s, _) = d.issue(&jwt, json!({"role": "CANARY-ROLE-9b1c"})).await;
    assert_eq!(s, 404);
    let (s, _) = d.issue(&jwt, json!({"role": "token/orders", "params": {"note": "CANARY-PARAM-7f3a"}})).await;
    assert!(s == 201 || s == 400, "{s}");
    let (s, _) = d.issue("CANARY-BAD-TOKEN-41d2", json!({"role": "pki/web"})).await;
    assert_eq!(s, 401);
    let r = d.http.get(format!("{}/v1/roles", d.url)).bearer_auth(&jwt).header("x-request-id", "no spaces CANARY-RID").send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));

    // The expiry worker ends the certificate's lease and audits it.
    let expired = Daemon::eventually(Duration::from_secs(15), || async {
        let es = entries(&audit);
        (!find(&es, "expire", "ok", &pki_id).is_empty()).then_some(es)
    })
    .await
    .expect("an expire entry for the certificate");
    let es = expired;

    // Issue: audited before (pending, with every field: the allowing
    // decision and the authentication are part of it) and after (ok: the
    // same request and lease, nothing repeated).
    let pending = find(&es, "issue", "pending", &pg_id);
    assert_eq!(pending.len(), 1, "{es:#?}");
    let ok = find(&es, "issue", "ok", &pg_id);
    assert_eq!(ok.len(), 1);
    let e = pending[0];
    assert!(e["seq"].as_u64() < ok[0]["seq"].as_u64());
    assert_eq!(ok[0]["request_id"], "it-req-1");
    assert!(ok[0]["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(e["type"], "event");
    assert_eq!(e["request_id"], "it-req-1");
    assert_eq!(e["actor"]["kind"], "workload");
    assert_eq!(e["actor"]["issuer"], iss.url.as_str());
    assert_eq!(e["actor"]["subject"], subject);
    assert_eq!(e["actor"]["claims_policy"], "test");
    assert_eq!(e["role"], "pg/app");
    assert_eq!(e["scopes"], json!(["orders.read"]));
    assert_eq!(e["ttl_seconds"], 60);
    assert_eq!(e["policies"], json!(["test-pg-app"]));
    assert_eq!(e["reasons"], json!(["acme's main branch may use the app database"]));
    assert_eq!(e["source"], "127.0.0.1");
    assert!(e["details"]["credential"].as_str().unwrap().starts_with("hmac-sha256:"));
    assert!(e["time"].as_str().unwrap().ends_with('Z'));
    // No separate decision or authentication entry for an issue.
    assert!(!es.iter().any(|e| e["request_id"] == "it-req-1" && (e["action"] == "decide" || e["action"] == "authenticate")));
    // Authentication, renew (before and after), revoke, expiry.
    assert_eq!(find(&es, "renew", "pending", &pg_id).len(), 1);
    let renewed = find(&es, "renew", "ok", &pg_id);
    assert_eq!(renewed.len(), 1);
    assert!(renewed[0]["ttl_seconds"].as_i64().unwrap() > 25 * 60);
    let revoked = find(&es, "revoke", "ok", &pg_id);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["actor"]["subject"], subject);
    let exp = find(&es, "expire", "ok", &pki_id);
    assert_eq!(exp[0]["actor"]["name"], "expiry-worker");
    assert_eq!(exp[0]["role"], "pki/web");
    // The denial: decision and outcome.
    let denied: Vec<_> = es.iter().filter(|e| e["action"] == "issue" && e["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["error_kind"], "policy_denied");
    assert_eq!(denied[0]["actor"]["subject"], "repo:acme/api:ref:refs/heads/dev");
    assert!(es.iter().any(|e| e["action"] == "decide" && e["outcome"] == "deny" && e["request_id"] == denied[0]["request_id"]));
    // The unknown role and the bad token are there, hashed.
    let unknown: Vec<_> = es.iter().filter(|e| e["action"] == "issue" && e["error_kind"] == "unknown_role").collect();
    assert!(unknown[0]["role"].as_str().unwrap().starts_with("hmac-sha256:"));
    let bad: Vec<_> = es.iter().filter(|e| e["action"] == "authenticate" && e["outcome"] == "failed").collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["error_kind"], "malformed");

    // `audit hash` (value on stdin) gives the HMAC the log holds.
    let key = d.dir.join("audit-hmac.key");
    let key = key.to_str().unwrap();
    let (code, out) = lessor(&["audit", "hash", "--key-file", key], &format!("{jwt}\n"));
    assert_eq!(code, 0, "{out}");
    let h = out.trim();
    assert!(h.starts_with("hmac-sha256:") && h.len() == 12 + 64, "{h}");
    assert_eq!(e["actor"]["subject"], subject);
    let uses = es.iter().filter(|e| e["details"]["credential"] == h).count();
    assert!(uses >= 4, "every request with the JWT is found by its hash ({uses})");
    let (_, bad_hash) = lessor(&["audit", "hash", "--key-file", key], "CANARY-BAD-TOKEN-41d2");
    assert_eq!(bad[0]["details"]["credential"], bad_hash.trim());
    let (_, role_hash) = lessor(&["audit", "hash", "--key-file", key], "CANARY-ROLE-9b1c");
    assert_eq!(unknown[0]["role"], role_hash.trim());

    d.stop().await;
    // Canaries: no token, credential or client string in the file.
    let text = std::fs::read_to_string(&audit).unwrap();
    let mut canaries = vec![
        jwt.clone(),
        jwt.rsplit('.').next().unwrap().to_owned(),
        password,
        dsn,
        "CANARY-ROLE-9b1c".into(),
        "CANARY-PARAM-7f3a".into(),
        "CANARY-BAD-TOKEN-41d2".into(),
        "CANARY-RID".into(),
        d.admin.clone(),
    ];
    canaries.extend(key_lines);
    for c in &canaries {
        assert!(!contains(&text, c), "a secret or client string reached the audit log: {c}");
    }

    // The whole file verifies, pinned to the deployment's key; query finds the lease.
    let file = audit.to_str().unwrap();
    let pubkey = d.dir.join("audit-signing.key.pub");
    let (code, out) = lessor(&["audit", "verify", file, "--public-key", pubkey.to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the chain head the daemon recorded is in the file"), "{out}");
    let (code, out) = lessor(&["audit", "query", file, "--lease", &pg_id, "--action", "renew"], "");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 2, "renew pending + ok: {out}");
    let (_, out) = lessor(&["audit", "query", file, "--subject", subject, "--role", "pki/web", "--since", "1h"], "");
    assert!(out.contains(&pki_id) && out.contains("\"outcome\":\"pending\""), "{out}");
    let (code, _) = lessor(&["audit", "query", file, "--lease", &pg_id, "--until", "2000-01-01T00:00:00Z"], "");
    assert_eq!(code, 1, "nothing before 2000");
}

/// A daemon (the real binary) that wrote entries, was rotated with
/// rename + SIGHUP, and stopped: returns (dir, rotated file, current file).
async fn rotated_log(tmp: &Path) -> (PathBuf, PathBuf) {
    let iss = Issuer::start().await;
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &tmp.join("policies"));
    std::fs::write(tmp.join("lessor.toml"), config_text(tmp, &tmp.join("policies"), &iss.url, "", "")).unwrap();
    let (child, url) = spawn_until(&["serve", "--config", "lessor.toml"], tmp, &[], &tmp.join("lessor.log"), "lessor listening on ");
    let http = reqwest::Client::new();
    let jwt = iss.token();
    let issue = || async {
        let r = http.post(format!("{url}/v1/leases")).bearer_auth(&jwt).json(&json!({"role": "token/orders"})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
    };
    for _ in 0..3 {
        issue().await;
    }
    let current = tmp.join("audit.log");
    let rotated = tmp.join("audit.log.1");
    std::fs::rename(&current, &rotated).unwrap();
    assert!(Command::new("kill").arg("-HUP").arg(child.id().to_string()).status().unwrap().success());
    Daemon::eventually(Duration::from_secs(10), || async { current.exists().then_some(()) }).await.expect("a new file after SIGHUP");
    for _ in 0..3 {
        issue().await;
    }
    stop(child);
    (rotated, current)
}

fn verify(file: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit", "verify", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    lessor(&args, "")
}

fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

#[tokio::test]
async fn verify_names_the_first_tampered_line_and_rotation_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (rotated, current) = rotated_log(dir).await;
    let pubkey = dir.join("audit-signing.key.pub");
    let pin = ["--public-key", pubkey.to_str().unwrap()];

    // Both files verify; the new one continues the old one's chain.
    let (code, out) = verify(&rotated, &pin);
    assert_eq!(code, 0, "{out}");
    let after = ["--after", rotated.to_str().unwrap(), "--public-key", pubkey.to_str().unwrap()];
    let (code, out) = verify(&current, &after);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the chain head the daemon recorded is in the file"), "{out}");
    let old = entries(&rotated);
    let new = entries(&current);
    assert_eq!(old.last().unwrap()["reason"], "rotate");
    assert_eq!(new[0]["seq"].as_u64().unwrap(), old.last().unwrap()["seq"].as_u64().unwrap() + 1);
    assert_eq!(new[0]["prev"], old.last().unwrap()["hash"]);
    assert!(new.iter().any(|e| e["action"] == "audit.reopen" && e["outcome"] == "ok"));
    assert_eq!(new.last().unwrap()["reason"], "shutdown");
    // The wrong predecessor is caught at line 1.
    let (code, out) = verify(&rotated, &["--after", current.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 1:"), "{out}");

    let lines = lines_of(&current);
    assert!(lines.len() >= 10, "{}", lines.len());
    let work = dir.join("t");
    std::fs::create_dir(&work).unwrap();
    let case = |name: &str, lines: &[String]| {
        let p = work.join(name);
        write_lines(&p, lines);
        p
    };

    // Edit one field of line 5.
    let mut edited = lines.clone();
    let e: Value = serde_json::from_str(&edited[4]).unwrap();
    let field = format!("\"time\":\"{}\"", e["time"].as_str().unwrap());
    edited[4] = edited[4].replace(&field, "\"time\":\"2020-01-01T00:00:00Z\"");
    assert_ne!(edited[4], lines[4]);
    let (code, out) = verify(&case("edited", &edited), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("line 5: its content does not match its hash: the line was edited"), "{out}");

    // Remove line 6.
    let mut removed = lines.clone();
    removed.remove(5);
    let (code, out) = verify(&case("removed", &removed), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("line 6: sequence") && out.contains("removed"), "{out}");

    // Swap lines 4 and 5.
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    let (code, out) = verify(&case("swapped", &swapped), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("line 4: sequence") && out.contains("reordered"), "{out}");

    // Cut mid-line.
    let p = case("cut", &lines);
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() - 20]).unwrap();
    let (code, out) = verify(&p, &[]);
    assert_eq!(code, 1);
    assert!(out.contains(&format!("line {}: cut mid-line", lines.len())), "{out}");

    // Drop the tail (whole lines, ending before the last checkpoint): the
    // head record the daemon kept gives it away.
    let short = case("short", &lines[..lines.len() - 3]);
    let mut head = short.as_os_str().to_owned();
    head.push(".head");
    std::fs::copy(dir.join("audit.log.head"), &head).unwrap();
    let (code, out) = verify(&short, &pin);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("line {}: the file ends at sequence", lines.len() - 2)) && out.contains("the tail was removed"), "{out}");
    // The intact copy with the same head verifies.
    let intact = case("intact", &lines);
    let mut head2 = intact.as_os_str().to_owned();
    head2.push(".head");
    std::fs::copy(dir.join("audit.log.head"), &head2).unwrap();
    let (code, out) = verify(&intact, &pin);
    assert_eq!(code, 0, "{out}");

    // A checkpoint signed by another key is refused when the key is pinned.
    let other = work.join("other.pub");
    std::fs::write(&other, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    let (code, out) = verify(&intact, &["--no-head", "--public-key", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 1: checkpoint is signed by key"), "{out}");
}

/// The audit bytes one issued credential costs: every entry of its request
/// (authentication, decision, issue pending, issue ok). Was 1,990 bytes
/// (four entries) before the decision and the authentication were folded
/// into `issue pending` and `issue ok` stopped repeating it.
#[tokio::test]
async fn an_issued_credential_costs_half_the_audit_bytes_it_did() {
    let iss = Issuer::start().await;
    let mut d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let mut per_credential = Vec::new();
    for i in 0..5 {
        let rid = format!("bytes-{i}");
        let r = d
            .http
            .post(format!("{}/v1/leases", d.url))
            .bearer_auth(&jwt)
            .header("x-request-id", &rid)
            .json(&json!({"role": "token/orders", "ttl": "10m"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        per_credential.push(rid);
    }
    d.stop().await;
    let text = std::fs::read_to_string(d.dir.join("audit.log")).unwrap();
    let mut sizes = Vec::new();
    for rid in &per_credential {
        let needle = format!("\"request_id\":\"{rid}\"");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&needle)).collect();
        let actions: Vec<String> = lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!("{} {}", v["action"].as_str().unwrap(), v["outcome"].as_str().unwrap())
            })
            .collect();
        assert_eq!(actions, ["issue pending", "issue ok"], "{lines:#?}");
        sizes.push(lines.iter().map(|l| l.len() + 1).sum::<usize>());
    }
    let avg = sizes.iter().sum::<usize>() / sizes.len();
    eprintln!("audit bytes per issued credential: {avg} ({sizes:?})");
    assert!(avg < 1220, "{avg} audit bytes per credential");
}

/// `[audit] max_file_size`: the daemon rotates by itself; `audit verify
/// <dir>` checks the series end to end and names the file and line of an
/// edit in a middle file.
#[tokio::test]
async fn a_size_rotated_series_verifies_end_to_end_and_names_an_edited_middle_file() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    let extra = "[audit]\nmax_file_size = \"4KB\"\n";
    std::fs::write(dir.join("lessor.toml"), config_text(dir, &dir.join("policies"), &iss.url, extra, "")).unwrap();
    let (child, url) = spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &dir.join("lessor.log"), "lessor listening on ");
    let http = reqwest::Client::new();
    let jwt = iss.token();
    for _ in 0..12 {
        let r = http.post(format!("{url}/v1/leases")).bearer_auth(&jwt).json(&json!({"role": "token/orders"})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    stop(child);
    let rotated = lessor::audit::writer::rotated_files(&dir.join("audit.log"));
    assert!(rotated.len() >= 3, "{rotated:?}");
    let pubkey = dir.join("audit-signing.key.pub");
    let (code, out) = lessor(&["audit", "verify", dir.to_str().unwrap(), "--public-key", pubkey.to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("ok: {} files form one chain", rotated.len() + 1)), "{out}");
    assert!(out.contains("the chain head the daemon recorded is in the file"), "{out}");

    let middle = &rotated[1].1;
    let mut lines = lines_of(middle);
    lines[1] = lines[1].replacen("\"time\":\"", "\"time\":\"1", 1);
    write_lines(middle, &lines);
    let (code, out) = lessor(&["audit", "verify", dir.to_str().unwrap()], "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("FAIL {}: line 2: its content does not match its hash", middle.display())), "{out}");
}

async fn refuses_with(audit_file: &str) {
    let iss = Issuer::start().await;
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: format!("\n[audit]\nfile = \"{audit_file}\"\n"),
        ..Default::default()
    })
    .await;
    let before = metric(&d, "lessor_audit_write_failures_total").await;
    let jwt = iss.token();
    for role in ["pki/web", "token/orders"] {
        let (s, v) = d.issue(&jwt, json!({"role": role})).await;
        assert_eq!(s, 503, "{v}");
        assert_eq!(v["error"]["code"], "audit_unavailable", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("audit log unavailable: "), "{msg}");
        assert!(!v.to_string().contains("credential"), "{v}");
    }
    // Nothing was issued: no lease, no certificate serial, no token.
    assert!(d.leases().await.is_empty());
    assert!(d.crl_serials("pki/web").await.is_empty());
    assert!(metric(&d, "lessor_audit_write_failures_total").await > before);
}

async fn metric(d: &Daemon, name: &str) -> f64 {
    let text = d.http.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn a_full_disk_refuses_issuance_and_issues_nothing() {
    // Writes to /dev/full fail with ENOSPC.
    assert!(Path::new("/dev/full").exists(), "this test needs /dev/full");
    refuses_with("/dev/full").await;
}

#[tokio::test]
async fn an_unwritable_audit_path_refuses_issuance() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("no-such-dir").join("audit.log");
    refuses_with(path.to_str().unwrap()).await;
}
