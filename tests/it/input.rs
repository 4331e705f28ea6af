//! Hostile input: absurd durations and times on every field that takes one,
//! on every endpoint, answer a 4xx JSON error naming the field and never
//! panic the daemon; config files with absurd durations are refused at
//! load; renewal refuses what it must (0s, past expiry, ended leases);
//! duplicate `Authorization` headers are a 400; every error is JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use lessor::config::{Config, LeaseSettings, RoleConfig};
use lessor::lease::{LeaseError, LeaseService};
use lessor::plugins::{Catalog, Role};
use lessor::policy::{PolicyEngine, RoleInfo};
use lessor::principal::{Actor, RequestMeta};
use lessor::store::{EndReason, Lease, LeaseState};
use lessor_plugin::{Capabilities, Revocation, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginError, RenewRequest, Validation};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::binary::{spawn_until, stop};
use crate::support::{config_text, copy_dir, Daemon, Issuer, Opts};

/// Duration texts no field may accept.
fn absurd_durations() -> Vec<String> {
    let mut v: Vec<String> = [
        "0s",
        "-1s",
        "-5m",
        "1e309",
        "18446744073709551616s", // 2^64 s
        "10000000000000000000s", // over 2^63 s: wrapped negative before
        "100000y",
        "１０m", // fullwidth digits
        "٣m",   // Arabic-Indic digit
        "",
        "   ",
        "10m\u{0}",
        "NaN",
        "inf",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("9".repeat(60_000)); // huge, yet under the body limit
    v.push("1s".repeat(5_000));
    v
}

/// Unix times (JSON numbers) no `now` may accept.
const ABSURD_TIMES: &[&str] =
    &["-1", "9223372036854775807", "-9223372036854775808", "18446744073709551616", "1.5", "253402300800", "\"１０\"", "\"\""];

struct Sent {
    what: String,
    status: u16,
    body: Value,
}

async fn send(http: &reqwest::Client, method: reqwest::Method, url: &str, token: &str, body: Option<String>) -> Sent {
    let mut r = http.request(method.clone(), url).bearer_auth(token);
    if let Some(b) = &body {
        r = r.header("content-type", "application/json").body(b.clone());
    }
    let what = format!("{method} {url} {}", body.as_deref().map(|b| &b[..b.len().min(120)]).unwrap_or(""));
    let resp = r.send().await.unwrap_or_else(|e| panic!("{what}: the connection failed (a panic?): {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {status} is not JSON: {text:?}"));
    Sent { what, status, body }
}

fn assert_refused(s: &Sent, field: &str) {
    assert!((400..500).contains(&s.status), "{}: expected a 4xx, got {}: {}", s.what, s.status, s.body);
    assert!(s.body["error"]["code"].is_string() && s.body["error"]["message"].is_string(), "{}: {}", s.what, s.body);
    assert_eq!(s.body["error"]["field"], field, "{}: {}", s.what, s.body);
}

#[tokio::test]
async fn absurd_durations_and_times_are_refused_on_every_endpoint_without_a_panic() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(dir.join("lessor.toml"), config_text(dir, &dir.join("policies"), &iss.url, "", "")).unwrap();
    let log = dir.join("lessor.log");
    let (child, url) = spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &log, "lessor listening on ");
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let jwt = iss.token();
    let post = reqwest::Method::POST;

    let r = send(&http, post.clone(), &format!("{url}/v1/leases"), &jwt, Some(json!({"role": "pki/web"}).to_string())).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let lease = r.body["lease_id"].as_str().unwrap().to_owned();
    let principal = json!({"issuer": iss.url, "subject": "repo:acme/api:ref:refs/heads/main",
                           "repository_owner": "acme", "ref": "refs/heads/main"});

    let renew = format!("/v1/leases/{lease}/renew");
    let (jwt_s, admin_s) = (jwt.as_str(), admin.as_str());
    let mut n = 0;
    for v in absurd_durations() {
        let s = Value::String(v.clone());
        // (path, token, body, field)
        let cases: Vec<(&str, &str, Value, &str)> = vec![
            ("/v1/leases", jwt_s, json!({"role": "token/orders", "ttl": s}), "ttl"),
            ("/v1/leases", jwt_s, json!({"role": "pki/web", "ttl": s}), "ttl"),
            (renew.as_str(), jwt_s, json!({"ttl": s}), "ttl"),
            (renew.as_str(), admin_s, json!({"ttl": s}), "ttl"),
            ("/v1/admin/revoke", admin_s, json!({"issued_within": s}), "issued_within"),
            ("/v1/admin/revoke", admin_s, json!({"role": "pki/web", "issued_within": s}), "issued_within"),
            ("/v1/policy/explain", admin_s, json!({"role": "pki/web", "principal": principal, "ttl": s}), "ttl"),
        ];
        for (path, token, body, field) in cases {
            let got = send(&http, post.clone(), &format!("{url}{path}"), token, Some(body.to_string())).await;
            assert_refused(&got, field);
            n += 1;
        }
    }
    for t in ABSURD_TIMES {
        let body = format!(r#"{{"role": "pki/web", "principal": {principal}, "ttl": "5m", "now": {t}}}"#);
        let got = send(&http, post.clone(), &format!("{url}/v1/policy/explain"), &admin, Some(body)).await;
        assert_refused(&got, "now");
        n += 1;
    }
    // A number JSON itself cannot hold: refused before any field is read,
    // still a JSON 400.
    let body = format!(r#"{{"role": "pki/web", "principal": {principal}, "now": 1e309}}"#);
    let got = send(&http, post.clone(), &format!("{url}/v1/policy/explain"), &admin, Some(body)).await;
    assert_eq!((got.status, got.body["error"]["code"].as_str()), (400, Some("invalid_json")), "{}", got.body);
    // Numbers in the lease list filters and connection versions.
    for v in ["-1", "4294967296", "1e309", "１０"] {
        let got = send(&http, reqwest::Method::GET, &format!("{url}/v1/admin/leases?limit={v}"), &admin, None).await;
        assert_refused(&got, "limit");
        n += 1;
    }
    for v in ["-1.5", "9223372036854775808", "\"１\"", "1e309"] {
        let body = format!(r#"{{"version": {v}}}"#);
        let got = send(&http, post.clone(), &format!("{url}/v1/admin/connections/pki/verify"), &admin, Some(body)).await;
        assert!((400..500).contains(&got.status) && got.body["error"]["code"].is_string(), "{}: {}", got.what, got.body);
        n += 1;
    }
    assert!(n > 120, "{n} requests");

    // Nothing changed: the lease is as issued, still active; the daemon answers.
    let got = send(&http, reqwest::Method::GET, &format!("{url}/v1/leases/{lease}"), &jwt, None).await;
    assert_eq!((got.status, got.body["state"].as_str()), (200, Some("active")), "{}", got.body);
    let jobs = send(&http, reqwest::Method::GET, &format!("{url}/v1/admin/leases"), &admin, None).await;
    assert_eq!(jobs.body["leases"].as_array().map(Vec::len), Some(1), "no revocation job ran: {}", jobs.body);
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "the daemon panicked:\n{text}");
}

#[test]
fn config_files_with_absurd_durations_are_refused_at_load_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cases = [
        ("", "revoke_timeout = \"100000y\"", "revoke_timeout", "100-year"),
        ("", "claim_timeout = \"18446744073709551616s\"", "claim_timeout", "not a duration"),
        ("", "retry_max = \"１０m\"", "retry_max", "ASCII"),
        ("[connections.pki.roles.forever]\nmax_ttl = \"100000y\"\n", "", "max_ttl", "100-year"),
        ("[connections.pki.roles.forever]\nmax_ttl = \"1h\"\ndefault_ttl = \"1e309\"\n", "", "default_ttl", "not a duration"),
    ];
    for (extra, leases, key, why) in cases {
        let text = config_text(p, &p.join("policies"), "https://issuer.test", extra, leases);
        let e = Config::from_toml(&text).map(|_| ()).expect_err(key).to_string();
        assert!(e.contains(key) && e.contains(why), "{key}: {e}");
    }
    // The limit itself is accepted.
    let text = config_text(p, &p.join("policies"), "https://issuer.test", "", "revoke_timeout = \"100y\"");
    Config::from_toml(&text).unwrap();
}

/// A renewable vendor that counts its renewals.
struct Renewable {
    renewals: AtomicUsize,
}

#[async_trait]
impl Plugin for Renewable {
    fn kind(&self) -> &str {
        "renewable"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: true, revocation: Revocation::Immediate }
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        Ok(Validation { identity: "renewable".into(), details: BTreeMap::new(), warnings: vec![] })
    }
    async fn issue(&self, _: IssueRequest) -> Result<Issued, PluginError> {
        Err(PluginError::Unsupported("issue".into()))
    }
    async fn renew(&self, r: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        Ok(r.expires_at)
    }
    async fn revoke(&self, _: &LeaseRef) -> Result<(), PluginError> {
        Ok(())
    }
}

/// A lease service on a renewable role (max 1h), with no expiry worker:
/// a lease past its expiry stays `active` in the store, as it does between
/// two ticks.
async fn renewable_service() -> (LeaseService, Arc<Renewable>, tempfile::TempDir) {
    let plugin = Arc::new(Renewable { renewals: AtomicUsize::new(0) });
    let dir = tempfile::tempdir().unwrap();
    let store = lessor::store::open(&format!("sqlite://{}", dir.path().join("l.db").display())).await.unwrap();
    let info = RoleInfo {
        name: "ren/r".into(),
        connection: "ren".into(),
        plugin: "renewable".into(),
        environment: "staging".into(),
        scopes: vec![],
        max_ttl_seconds: 3600,
    };
    let cfg: RoleConfig = toml::from_str("max_ttl = \"1h\"\ndefault_ttl = \"10m\"").unwrap();
    let role = Role {
        name: "ren/r".into(),
        connection: "ren".into(),
        short: "r".into(),
        kind: "renewable".into(),
        plugin: plugin.clone(),
        cfg,
        info: info.clone(),
    };
    let catalog = Catalog {
        roles: BTreeMap::from([("ren/r".to_string(), Arc::new(role))]),
        connections: BTreeMap::from([("ren".to_string(), plugin.clone() as Arc<dyn Plugin>)]),
        scopes: BTreeMap::new(),
    };
    let engine = PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), vec![info]).unwrap();
    let svc = LeaseService::new(store, Arc::new(catalog), Arc::new(engine), LeaseSettings::default());
    (svc, plugin, dir)
}

async fn active_lease(svc: &LeaseService, id: &str, expires_in: time::Duration) -> Lease {
    let now = OffsetDateTime::now_utc();
    let l = Lease {
        id: LeaseId::new(id),
        role: "ren/r".into(),
        plugin: "renewable".into(),
        issuer: "i".into(),
        subject: "s".into(),
        claims: json!({}),
        scopes: vec![],
        policies: vec![],
        state: LeaseState::Pending,
        issued_at: now - time::Duration::minutes(1),
        expires_at: now + expires_in,
        max_expires_at: now + time::Duration::minutes(59),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    };
    svc.store.insert_pending(&l).await.unwrap();
    assert!(svc.store.activate(&l.id, &json!({}), l.expires_at).await.unwrap());
    svc.store.get(&l.id).await.unwrap().unwrap()
}

fn meta() -> RequestMeta {
    RequestMeta::internal()
}

fn admin() -> Actor {
    Actor::Admin { name: "test".into() }
}

fn bad_ttl(r: Result<Lease, LeaseError>) -> String {
    match r {
        Err(LeaseError::BadRequest { field: "ttl", message }) => message,
        Err(e) => panic!("expected a bad ttl, got {e}"),
        Ok(l) => panic!("expected a bad ttl, got a renewal to {}", l.expires_at),
    }
}

fn conflict(r: Result<Lease, LeaseError>) -> String {
    match r {
        Err(LeaseError::Conflict(m)) => m,
        Err(e) => panic!("expected a conflict, got {e}"),
        Ok(l) => panic!("expected a conflict, got a renewal to {}", l.expires_at),
    }
}

#[tokio::test]
async fn renewal_refuses_absurd_and_zero_ttls_before_the_vendor() {
    let (svc, plugin, _dir) = renewable_service().await;
    let l = active_lease(&svc, "lse_absurd", time::Duration::minutes(10)).await;
    let id = l.id.as_str();
    for (ttl, want) in [
        ("100000y", "100-year limit"),
        ("10000000000000000000s", "100-year limit"),
        ("18446744073709551616s", "not a duration"),
        ("0s", "at least 1s"),
        ("0ms", "at least 1s"),
        ("2h", "exceeds role `ren/r` max 1h"),
        ("１０m", "ASCII"),
    ] {
        let m = bad_ttl(svc.renew(&admin(), id, Some(ttl.into()), &meta()).await);
        assert!(m.contains(want), "{ttl}: {m}");
    }
    assert_eq!(plugin.renewals.load(Ordering::SeqCst), 0, "the vendor was never called");
    assert_eq!(svc.store.get(&l.id).await.unwrap().unwrap().expires_at, l.expires_at, "nothing changed");
    // A sane renewal goes through, within the max.
    let r = svc.renew(&admin(), id, Some("30m".into()), &meta()).await.unwrap();
    assert!(r.expires_at > l.expires_at && r.expires_at <= l.max_expires_at);
    assert_eq!(plugin.renewals.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_lease_past_its_expiry_but_not_yet_swept_is_not_renewed() {
    let (svc, plugin, _dir) = renewable_service().await;
    let l = active_lease(&svc, "lse_overdue", -time::Duration::seconds(2)).await;
    assert_eq!(l.state, LeaseState::Active, "the worker has not swept it");
    let m = conflict(svc.renew(&admin(), l.id.as_str(), Some("10m".into()), &meta()).await);
    assert!(m.contains("expired") && m.contains("request a new credential"), "{m}");
    assert_eq!(plugin.renewals.load(Ordering::SeqCst), 0, "the vendor was not asked to extend it");
    let after = svc.store.get(&l.id).await.unwrap().unwrap();
    assert_eq!((after.state, after.expires_at), (LeaseState::Active, l.expires_at), "not brought back");
    // The worker still finds it due.
    let now = OffsetDateTime::now_utc();
    let due = svc.store.due(now, now - time::Duration::hours(1), 10).await.unwrap();
    assert!(due.iter().any(|d| d.lease.id == l.id));
}

#[tokio::test]
async fn renewing_an_ended_lease_says_it_has_ended_with_its_state() {
    let (svc, _plugin, _dir) = renewable_service().await;
    let l = active_lease(&svc, "lse_ended", time::Duration::minutes(10)).await;
    svc.revoke(&admin(), l.id.as_str(), &meta()).await.unwrap();
    let m = conflict(svc.renew(&admin(), l.id.as_str(), None, &meta()).await);
    assert!(m.contains("has ended (state `revoked`, reason `revoked`)"), "{m}");
    assert!(!m.contains("being revoked"), "{m}");
    let l2 = active_lease(&svc, "lse_failing", time::Duration::minutes(10)).await;
    svc.store.record_failure(&l2.id, EndReason::Revoked, "down", OffsetDateTime::now_utc()).await.unwrap();
    let m = conflict(svc.renew(&admin(), l2.id.as_str(), None, &meta()).await);
    assert!(m.contains("is `revoke_failed`: its revocation (as `revoked`) is being retried"), "{m}");
}

#[tokio::test]
async fn two_authorization_headers_are_a_400() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = format!("Bearer {}", iss.token());
    let admin = format!("Bearer {}", d.admin);
    for (a, b) in [(&jwt, &admin), (&admin, &jwt), (&jwt, &jwt)] {
        let r = d
            .http
            .get(format!("{}/v1/roles", d.url))
            .header("authorization", a.as_str())
            .header("authorization", b.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["field"], "authorization", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("one Authorization header"), "{v}");
    }
    // One header still works.
    let (s, _) = d.get("/v1/roles", &iss.token()).await;
    assert_eq!(s, 200);
}

type Call = (u16, Value);

async fn call(rb: reqwest::RequestBuilder) -> Call {
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (s, serde_json::from_str::<Value>(&text).unwrap_or_else(|_| panic!("{s}: not JSON: {text:?}")))
}

fn json_error(status: u16, r: &Call, code: &str) {
    assert_eq!(r.0, status, "{}", r.1);
    assert_eq!(r.1["error"]["code"], code, "{}", r.1);
    assert!(r.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.1);
}

#[tokio::test]
async fn method_not_allowed_is_json() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let r = call(d.http.delete(format!("{}/v1/roles", d.url)).bearer_auth(iss.token())).await;
    json_error(405, &r, "method_not_allowed");
    let r = call(d.http.put(format!("{}/v1/leases", d.url)).bearer_auth(iss.token())).await;
    json_error(405, &r, "method_not_allowed");
}

#[tokio::test]
async fn body_header_and_query_limits_answer_json() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    // 413 on a raw body (introspection reads bytes, not JSON).
    let r = call(d.http.post(format!("{}/v1/token/introspect", d.url)).body("token=".to_owned() + &"x".repeat(70_000))).await;
    json_error(413, &r, "too_large");
    // 431.
    let r = call(d.http.get(format!("{}/v1/health", d.url)).header("x-pad", "p".repeat(40 * 1024))).await;
    json_error(431, &r, "headers_too_large");
    // A query string that does not parse names its field.
    let r = call(d.http.get(format!("{}/v1/admin/leases?limit=lots", d.url)).bearer_auth(&d.admin)).await;
    json_error(400, &r, "invalid_request");
    assert_eq!(r.1["error"]["field"], "limit");
}

#[tokio::test]
async fn an_unknown_job_is_a_job_not_found() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let (s, v) = d.get("/v1/admin/jobs/job_nope", &d.admin).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["message"], "job `job_nope` not found");
}

#[tokio::test]
async fn renewing_a_revoked_lease_says_it_ended_with_its_state() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web"})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["lease_id"].as_str().unwrap();
    let (s, _) = d.delete(&format!("/v1/leases/{id}"), &jwt).await;
    assert_eq!(s, 200);
    let (s, v) = d.post(&format!("/v1/leases/{id}/renew"), &jwt, json!({})).await;
    assert_eq!(s, 409, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("has ended (state `revoked`, reason `revoked`)") && !m.contains("being revoked"), "{m}");
}

#[tokio::test]
async fn an_unknown_role_does_not_list_the_configured_ones() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let (s, v) = d.issue(&iss.token(), json!({"role": "pki/nope"})).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["field"], "role");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("role `pki/nope` does not exist"), "{m}");
    assert!(!m.contains("pki/web") && !m.contains("token/orders"), "{m}");
}

#[tokio::test]
async fn bulk_revoke_and_explain_refuse_durations_that_overflowed_or_wrapped() {
    let iss = Issuer::start().await;
    let policy = r#"
@id("no-day-long-certs")
@reason("web certificates last at most a day")
forbid(principal, action == Lessor::Action::"issue", resource == Lessor::Role::"pki/web")
when { context.ttl_seconds > 86400 };
"#;
    let d = Daemon::start_with(Opts { issuer_url: iss.url.clone(), policy: policy.into(), ..Default::default() }).await;
    // Was a panic (overflow subtracting 100000 years from now): the
    // connection dropped.
    let (s, v) = d.post("/v1/admin/revoke", &d.admin, json!({"issued_within": "100000y"})).await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("issued_within")), "{v}");
    let (s, v) = d.post("/v1/admin/revoke", &d.admin, json!({"issued_within": "0s"})).await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("issued_within")), "{v}");
    // Was "allowed": 2^63 s wrapped negative, so the forbid did not fire.
    let case = |ttl: &str| {
        json!({"role": "pki/web", "ttl": ttl,
               "principal": {"issuer": iss.url, "subject": "repo:acme/api:ref:refs/heads/main",
                             "repository_owner": "acme", "ref": "refs/heads/main"}})
    };
    let (s, v) = d.post("/v1/policy/explain", &d.admin, case("25h")).await;
    assert_eq!((s, v["allowed"].as_bool()), (200, Some(false)), "the forbid fires: {v}");
    for ttl in ["9223372036854775808s", "18446744073709551615s", "100000y"] {
        let (s, v) = d.post("/v1/policy/explain", &d.admin, case(ttl)).await;
        assert_eq!((s, v["error"]["field"].as_str()), (400, Some("ttl")), "{ttl}: {v}");
    }
    let (s, v) = d.post("/v1/policy/explain", &d.admin, case("5m")).await;
    assert_eq!((s, v["allowed"].as_bool()), (200, Some(true)), "{v}");
}

#[tokio::test]
async fn renewing_a_postgres_lease_with_absurd_ttls_is_a_400_and_changes_nothing() {
    let iss = Issuer::start().await;
    let pg = crate::postgres::start_pg();
    let (d, _aux) = crate::postgres::pg_daemon(&iss, &pg, "").await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "pg/app", "ttl": "5m"})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["lease_id"].as_str().unwrap().to_owned();
    let secs = |v: &Value| {
        let t = v["expires_at"].as_str().unwrap();
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap().unix_timestamp()
    };
    let expires_at = secs(&v);
    let path = format!("/v1/leases/{id}/renew");
    for ttl in ["100000y", "10000000000000000000s", "0s", "２m", "2h"] {
        let (s, r) = d.post(&path, &jwt, json!({"ttl": ttl})).await;
        assert_eq!(s, 400, "{ttl}: {r}");
        assert_eq!(r["error"]["field"], "ttl", "{ttl}: {r}");
    }
    let (_, l) = d.get(&format!("/v1/leases/{id}"), &jwt).await;
    assert_eq!((l["state"].as_str(), secs(&l)), (Some("active"), expires_at), "{l}");
    let (s, r) = d.post(&path, &jwt, json!({"ttl": "30m"})).await;
    assert_eq!(s, 200, "the daemon still renews: {r}");
}
