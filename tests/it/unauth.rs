//! Unauthenticated traffic is not a lever: `/metrics` and the quotas read
//! the store's counts (never the leases), unauthenticated routes shed
//! load instead of holding store connections, every request has a timeout,
//! JWT segments are decoded exactly as the library decodes them, and a
//! failing issuer's JWKS is fetched once per failure window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use lessor::config::KeySource;
use lessor::identity::jwks::{IssuerKeys, KeyLookup};
use lessor::identity::KeyTimes;
use lessor::store::{EndReason, Lease, LeaseFilter, LeaseState, Store};
use lessor_plugin::LeaseId;
use serde_json::{json, Value};
use sqlx::Connection;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Daemon, Issuer, Key, Opts};

const NO_QUOTAS: &str =
    "[quotas]\nmax_active_total = 1000000\nmax_active_per_role = 0\nmax_active_per_owner = 0\nissues_per_minute_per_owner = 0";

/// Writes `n` active `token/orders` leases (100 owners) straight into the
/// SQLite file in one statement (lessor stopped: it counts them at start).
async fn seed(c: &mut sqlx::SqliteConnection, n: i64, expires_at_ms: i64) {
    let now_ms = OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let sql = format!(
        "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n})
         INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state,
                             issued_at, expires_at, max_expires_at, handle)
         SELECT printf('lse_u%028x', i), 'token/orders', 'token', 'https://seed.example', 'seed-' || (i % 100),
                '{{}}', '[]', '[]', 'active', {now_ms}, {expires_at_ms}, {expires_at_ms} + 3600000, NULL
         FROM seq"
    );
    sqlx::query(&sql).execute(&mut *c).await.unwrap();
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<i64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_quotas_at_100k_leases_read_the_counts_not_the_leases() {
    let iss = Issuer::start().await;
    let opts = Opts { issuer_url: iss.url.clone(), extra_toml: NO_QUOTAS.into(), ..Default::default() };
    let mut d = Daemon::start_with(opts.clone()).await;
    d.stop().await;
    let db = d.dir.join("lessor.db");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let in_30m = (OffsetDateTime::now_utc().unix_timestamp() + 1800) * 1000;
    seed(&mut c, 100_000, in_30m).await;
    c.close().await.unwrap();

    // Counted from the leases once, at start.
    let t = Instant::now();
    let mut d = Daemon::start_in(&d.dir, &opts).await;
    eprintln!("start with 100,000 leases (counted): {:?} (debug build)", t.elapsed());
    let scrape = |d: &Daemon| {
        let (http, url) = (d.http.clone(), d.url.clone());
        async move { http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap() }
    };
    let m = scrape(&d).await;
    let active = "lessor_leases{plugin=\"token\",role=\"token/orders\",state=\"active\"}";
    assert_eq!(metric(&m, active), Some(100_000), "{m}");
    assert_eq!(metric(&m, "lessor_leases_expiring_next_hour{plugin=\"token\",role=\"token/orders\"}"), Some(100_000));
    assert_eq!(metric(&m, "lessor_quota_usage{quota=\"total\",role=\"\"}"), Some(100_000));
    let t = Instant::now();
    for _ in 0..20 {
        scrape(&d).await;
    }
    eprintln!("/metrics at 100,000 leases: {:?} per scrape (debug build)", t.elapsed() / 20);

    // A scrape and a quota read lessor's counts, not the leases: with the
    // leases deleted behind its back (an edit lessor cannot see) both still
    // say 100,000, and the total quota refuses at 100,000; a restart counts
    // again.
    d.stop().await;
    let quota = "[quotas]\nmax_active_total = 100000\nmax_active_per_role = 0\nmax_active_per_owner = 0\nissues_per_minute_per_owner = 0";
    let opts = Opts { extra_toml: quota.into(), ..opts };
    let mut d = Daemon::start_in(&d.dir, &opts).await;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query("DELETE FROM leases WHERE id LIKE 'lse_u%'").execute(&mut c).await.unwrap();
    c.close().await.unwrap();
    assert_eq!(metric(&scrape(&d).await, active), Some(100_000), "the scrape reads the counts");
    let (s, v) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 429, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("holds 100000 live leases"), "{v}");
    d.stop().await;
    let d = Daemon::start_in(&d.dir, &opts).await;
    assert_eq!(metric(&scrape(&d).await, active).unwrap_or(0), 0, "counted again at start");
    let (s, v) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");
}

fn lease(id: &str, role: &str, subject: &str, expires_in: i64) -> Lease {
    let now = OffsetDateTime::now_utc();
    Lease {
        id: LeaseId::new(id),
        role: role.into(),
        plugin: role.split('/').next().unwrap_or("token").into(),
        issuer: "https://iss".into(),
        subject: subject.into(),
        claims: json!({}),
        scopes: vec![],
        policies: vec![],
        state: LeaseState::Pending,
        issued_at: now,
        expires_at: now + time::Duration::seconds(expires_in),
        max_expires_at: now + time::Duration::seconds(expires_in + 7200),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    }
}

/// Asserts that every count the store keeps equals a count of the leases.
async fn assert_counts_match(s: &Arc<dyn Store>, when: &str) {
    let mut all = Vec::new();
    for st in [LeaseState::Pending, LeaseState::Active, LeaseState::RevokeFailed] {
        all.extend(s.list(&LeaseFilter { state: Some(st), limit: 100_000, ..Default::default() }).await.unwrap());
    }
    let mut want = BTreeMap::<(String, String, String), i64>::new();
    let mut owners = BTreeMap::<(String, String), i64>::new();
    for l in &all {
        *want.entry((l.role.clone(), l.plugin.clone(), l.state.as_str().to_owned())).or_default() += 1;
        *owners.entry((l.issuer.clone(), l.subject.clone())).or_default() += 1;
    }
    let got: BTreeMap<_, _> =
        s.counts().await.unwrap().into_iter().map(|(r, p, st, n)| ((r, p, st.as_str().to_owned()), n)).collect();
    assert_eq!(got, want, "{when}: counts by state");
    let horizon = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let minute = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000).div_euclid(60_000);
    let mut exp_want = BTreeMap::<(String, String), i64>::new();
    for l in all.iter().filter(|l| l.state == LeaseState::Active && minute(l.expires_at) <= minute(horizon)) {
        *exp_want.entry((l.role.clone(), l.plugin.clone())).or_default() += 1;
    }
    let exp_got: BTreeMap<_, _> = s.expiring(horizon).await.unwrap().into_iter().map(|(r, p, n)| ((r, p), n)).collect();
    assert_eq!(exp_got, exp_want, "{when}: expiring within the hour");
    assert_eq!(s.max_live_per_owner().await.unwrap(), owners.values().copied().max().unwrap_or(0), "{when}: fullest owner");
    let total = s.count_live(&LeaseFilter::default()).await.unwrap();
    assert_eq!(total, all.len() as i64, "{when}: total");
    for role in ["token/orders", "pki/web"] {
        let n = s.count_live(&LeaseFilter { role: Some(role.into()), ..Default::default() }).await.unwrap();
        assert_eq!(n, all.iter().filter(|l| l.role == role).count() as i64, "{when}: role {role}");
    }
    for ((issuer, subject), n) in &owners {
        let f = LeaseFilter { issuer: Some(issuer.clone()), subject: Some(subject.clone()), ..Default::default() };
        assert_eq!(s.count_live(&f).await.unwrap(), *n, "{when}: owner {subject}");
        // The quotas' one read says the same as the three counts.
        for role in ["token/orders", "pki/web", "none/such"] {
            let q = s.quota_counts(issuer, subject, role).await.unwrap();
            let r = all.iter().filter(|l| l.role == role).count() as i64;
            assert_eq!((q.owner, q.role, q.total), (*n, r, all.len() as i64), "{when}: quota counts {subject} {role}");
        }
    }
    let q = s.quota_counts("https://iss", "nobody", "none/such").await.unwrap();
    assert_eq!((q.owner, q.role, q.total), (0, 0, all.len() as i64), "{when}: quota counts of a stranger");
}

/// Every lease transition keeps the counts exact.
async fn counts_follow_every_change(s: Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    let id = LeaseId::new;
    assert_counts_match(&s, "empty").await;
    s.insert_pending(&lease("c1", "token/orders", "alice", 600)).await.unwrap();
    s.insert_pending(&lease("c2", "token/orders", "bob", 600)).await.unwrap();
    s.insert_pending(&lease("c3", "pki/web", "alice", 7200)).await.unwrap();
    assert_counts_match(&s, "pending").await;
    s.activate(&id("c1"), &json!({}), now + time::Duration::minutes(10)).await.unwrap();
    s.activate(&id("c2"), &json!({}), now + time::Duration::minutes(10)).await.unwrap();
    s.activate(&id("c3"), &json!({}), now + time::Duration::hours(2)).await.unwrap();
    assert_counts_match(&s, "activated").await;
    // Renewal moves a lease into the next hour and another out of it.
    s.renew(&id("c1"), now, now + time::Duration::minutes(90)).await.unwrap();
    s.renew(&id("c3"), now, now + time::Duration::minutes(20)).await.unwrap();
    assert_counts_match(&s, "renewed").await;
    s.record_failure(&id("c2"), EndReason::Expired, "vendor down", now + time::Duration::seconds(30)).await.unwrap();
    assert_counts_match(&s, "failed").await;
    s.finish(&id("c2"), EndReason::Expired, now).await.unwrap();
    s.finish(&id("c2"), EndReason::Expired, now).await.unwrap();
    s.finish(&id("c3"), EndReason::Revoked, now).await.unwrap();
    assert_counts_match(&s, "finished").await;
    s.schedule_revocation(&LeaseFilter { subject: Some("alice".into()), ..Default::default() }, now).await.unwrap();
    assert_counts_match(&s, "scheduled").await;
}

#[tokio::test]
async fn sqlite_counts_follow_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let s = lessor::store::open(&format!("sqlite://{}", dir.path().join("c.db").display())).await.unwrap();
    counts_follow_every_change(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_counts_follow_every_change_and_agree_across_replicas_under_concurrency() {
    let (_pg, dsn) = crate::store::pg_store_db();
    let a: Arc<dyn Store> = Arc::new(lessor::store::postgres::PgStore::open(&dsn).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(lessor::store::postgres::PgStore::open(&dsn).await.unwrap());
    counts_follow_every_change(a.clone()).await;

    // Two replicas issuing, activating and ending leases at once: no lost
    // update, no error, and both read the same store-wide numbers.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let now = OffsetDateTime::now_utc();
            for i in 0..40 {
                let lid = format!("k{t}-{i}");
                s.insert_pending(&lease(&lid, "token/orders", &format!("w{}", i % 3), 600)).await.unwrap();
                s.activate(&LeaseId::new(&lid), &json!({}), now + time::Duration::minutes(10)).await.unwrap();
                if i % 4 == 0 {
                    s.finish(&LeaseId::new(&lid), EndReason::Revoked, now).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_counts_match(&a, "after concurrent writers (replica a)").await;
    let sorted = |mut v: lessor::store::LeaseCounts| {
        v.sort_by(|x, y| (&x.0, &x.1, x.2.as_str()).cmp(&(&y.0, &y.1, y.2.as_str())));
        v
    };
    assert_eq!(sorted(a.counts().await.unwrap()), sorted(b.counts().await.unwrap()), "replicas report the same numbers");
}

/// Sends an introspection request whose body never arrives: it holds its
/// route's concurrency slot until the request timeout answers it.
async fn stalled_introspection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /v1/token/introspect HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"tok")
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_unauthenticated_route_sheds_load_times_out_and_never_blocks_an_issue() {
    let iss = Issuer::start().await;
    let limits = "[limits]\nrequest_timeout = \"3s\"\nunauthenticated_route_concurrency = 2\nunauthenticated_concurrency = 3";
    let d = Daemon::start_with(Opts { issuer_url: iss.url.clone(), extra_toml: limits.into(), ..Default::default() }).await;
    // Once both stalled requests hold the route, a third is refused at once.
    // On a loaded machine the pair may reach its request timeout (3 s)
    // before a probe lands: then, that pair ended, a fresh one is stalled.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (refused, mut stalled) = 'filled: loop {
        let pair = vec![stalled_introspection(d.addr).await, stalled_introspection(d.addr).await];
        let ended = Instant::now() + Duration::from_millis(3_500);
        while Instant::now() < ended {
            let r = d.http.post(format!("{}/v1/token/introspect", d.url)).json(&json!({"token": "x"})).send().await.unwrap();
            if r.status().as_u16() == 503 {
                break 'filled (r.json::<Value>().await.unwrap(), pair);
            }
        }
        assert!(Instant::now() < deadline, "the route never filled up");
    };
    assert_eq!(refused["error"]["code"], "overloaded", "{refused}");

    // Issuance and the other unauthenticated routes still answer meanwhile.
    let t = Instant::now();
    let (s, v) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");
    assert!(t.elapsed() < Duration::from_secs(2), "issue took {:?} while introspection was saturated", t.elapsed());
    let r = d.http.get(format!("{}/metrics", d.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The stalled requests end with the request timeout, as JSON.
    for s in &mut stalled {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut chunk = [0u8; 1024];
            while !String::from_utf8_lossy(&buf).contains("}}") {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("the stalled request is answered");
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    }
}

fn b64(engine: &base64::engine::GeneralPurpose, v: &Value) -> String {
    engine.encode(serde_json::to_vec(v).unwrap())
}

/// `v` with a `pad` member grown until its encoding by `engine` satisfies `want`.
fn encoded_such_that(engine: &base64::engine::GeneralPurpose, v: &Value, want: impl Fn(&str) -> bool) -> String {
    let mut v = v.clone();
    for i in 0..64 {
        v["pad"] = json!("?".repeat(i));
        let s = b64(engine, &v);
        if want(&s) {
            return s;
        }
    }
    panic!("no encoding found");
}

#[tokio::test]
async fn padded_or_standard_base64_segments_are_refused_before_any_key_fetch() {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let good = iss.token();
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let mut claims = Value::Object(iss.gh_claims("acme/api", "refs/heads/main"));
    // A configured issuer, so a lenient reader would go on to fetch keys.
    let padded_header = encoded_such_that(&URL_SAFE, &header, |s| s.ends_with('='));
    let std_header = encoded_such_that(&STANDARD_NO_PAD, &header, |s| s.contains('/') || s.contains('+'));
    let padded_payload = encoded_such_that(&URL_SAFE, &claims, |s| s.ends_with('='));
    let std_payload = encoded_such_that(&STANDARD_NO_PAD, &claims, |s| s.contains('/') || s.contains('+'));
    // An unconfigured issuer behind a padded payload: refused for its
    // encoding, not read for its issuer.
    claims["iss"] = json!("https://evil.example");
    let padded_evil = encoded_such_that(&URL_SAFE, &claims, |s| s.ends_with('='));
    let cases = [
        (format!("{padded_header}.{}.{}", parts[1], parts[2]), "header is not unpadded base64url"),
        (format!("{std_header}.{}.{}", parts[1], parts[2]), "header is not unpadded base64url"),
        (format!("{}.{padded_payload}.{}", parts[0], parts[2]), "payload is not unpadded base64url"),
        (format!("{}.{std_payload}.{}", parts[0], parts[2]), "payload is not unpadded base64url"),
        (format!("{}.{padded_evil}.{}", parts[0], parts[2]), "payload is not unpadded base64url"),
    ];
    let fetched = iss.fetches.load(Ordering::SeqCst);
    for (jwt, want) in cases {
        let (s, v) = d.issue(&jwt, json!({"role": "token/orders"})).await;
        assert_eq!(s, 401, "{want}: {v}");
        assert_eq!(v["error"]["code"], "invalid_token");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "`{msg}` should contain `{want}`");
    }
    assert_eq!(iss.fetches.load(Ordering::SeqCst), fetched, "no key fetch for a token the library would not read");
    // The unmodified token still works.
    let (s, v) = d.issue(&good, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");
}

/// A JWKS endpoint that can be made to fail, counting its requests.
struct FlakyJwks {
    url: String,
    fail: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    kid: String,
}

async fn flaky_jwks() -> FlakyJwks {
    let key = Key::generate();
    let (fail, hits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let (f, h, jwk) = (fail.clone(), hits.clone(), key.jwk.clone());
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (f, h, jwk) = (f.clone(), h.clone(), jwk.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                if f.load(Ordering::SeqCst) {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"detail": "db password wrong"})))
                } else {
                    (axum::http::StatusCode::OK, axum::Json(json!({"keys": [jwk]})))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FlakyJwks { url, fail, hits, kid: key.kid }
}

fn keys_of(j: &FlakyJwks, times: KeyTimes) -> IssuerKeys {
    IssuerKeys::new("flaky", &j.url, KeySource::JwksUrl(format!("{}/jwks", j.url)), reqwest::Client::new(), times)
}

fn unavailable(l: KeyLookup) -> String {
    match l {
        KeyLookup::Unavailable(reason) => reason,
        KeyLookup::Found(_) => panic!("expected unavailable, got a key"),
        KeyLookup::UnknownKid => panic!("expected unavailable, got unknown kid"),
    }
}

#[tokio::test]
async fn a_failing_issuer_is_fetched_once_per_failure_window_and_clients_get_a_generic_reason() {
    let j = flaky_jwks().await;
    j.fail.store(true, Ordering::SeqCst);
    let keys = keys_of(&j, KeyTimes {
        ttl: Duration::from_secs(600),
        min_refetch: Duration::ZERO,
        failure_cache: Duration::from_secs(3600),
        max_stale: Duration::from_secs(86_400),
    });
    for _ in 0..50 {
        let reason = unavailable(keys.key(&j.kid).await);
        assert_eq!(reason, "the issuer's key set could not be fetched; try again later");
        for leak in ["127.0.0.1", "500", "password", "/jwks"] {
            assert!(!reason.contains(leak), "`{reason}` leaks `{leak}`");
        }
    }
    assert_eq!(j.hits.load(Ordering::SeqCst), 1, "one fetch for 50 requests within the failure window");
}

#[tokio::test]
async fn the_last_good_key_set_is_used_only_until_its_maximum_age() {
    let times = |max_stale| KeyTimes {
        ttl: Duration::from_secs(600),
        min_refetch: Duration::ZERO,
        failure_cache: Duration::ZERO,
        max_stale,
    };
    // Young enough: the issuer's outage is bridged.
    let j = flaky_jwks().await;
    let keys = keys_of(&j, times(Duration::from_secs(3600)));
    assert!(matches!(keys.key(&j.kid).await, KeyLookup::Found(_)));
    j.fail.store(true, Ordering::SeqCst);
    // An unknown kid drops the cached set and refetches, which fails.
    assert!(matches!(keys.key("rotated-in").await, KeyLookup::UnknownKid));
    assert!(matches!(keys.key(&j.kid).await, KeyLookup::Found(_)), "last good set within jwks_max_stale");

    // Too old: refused, with the reason.
    let j = flaky_jwks().await;
    let keys = keys_of(&j, times(Duration::from_nanos(1)));
    assert!(matches!(keys.key(&j.kid).await, KeyLookup::Found(_)));
    j.fail.store(true, Ordering::SeqCst);
    let _ = keys.key("rotated-in").await;
    let reason = unavailable(keys.key(&j.kid).await);
    assert!(reason.contains("could not be refreshed for more than") && reason.contains("jwks_max_stale"), "{reason}");
    // The issuer is back: keys are trusted again.
    j.fail.store(false, Ordering::SeqCst);
    assert!(matches!(keys.key(&j.kid).await, KeyLookup::Found(_)));
}

