//! The lease engine at scale on the embedded store: mass expiry is revoked
//! promptly while the API keeps answering, and a restart with many leases
//! serves at once (at start the store counts the live leases in one pass,
//! and keeps nothing per lease).

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;

use crate::support::{Daemon, Issuer, Opts};

/// Writes `n` active `token/orders` leases straight into the SQLite file in
/// one statement (the API would take minutes in a debug build).
async fn seed(db: &std::path::Path, n: i64, expires_at_ms: i64, tag: &str) {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let sql = format!(
        "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n})
         INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state,
                             issued_at, expires_at, max_expires_at, handle)
         SELECT printf('lse_{tag}%028x', i), 'token/orders', 'token', 'https://seed.example', 'seed-' || (i % 97),
                '{{}}', '[]', '[]', 'active', {now_ms}, {expires_at_ms}, {expires_at_ms} + 3600000, NULL
         FROM seq"
    );
    sqlx::query(&sql).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_leases_expiring_together_are_revoked_promptly_while_the_api_answers() {
    let _heavy = crate::support::heavy().await;
    let iss = Issuer::start().await;
    let opts = Opts {
        issuer_url: iss.url.clone(),
        leases_toml: "revoke_concurrency = 64\nbatch_size = 1000".into(),
        extra_toml: "[quotas]\nmax_active_total = 0\nmax_active_per_role = 0\nmax_active_per_owner = 0\nissues_per_minute_per_owner = 0".into(),
        ..Default::default()
    };
    let mut d = Daemon::start_with(opts.clone()).await;
    d.stop().await;
    // All expire within the same second, 3 s from now.
    let expiry = (time::OffsetDateTime::now_utc().unix_timestamp() + 3) * 1000;
    seed(&d.dir.join("lessor.db"), 10_000, expiry, "a").await;
    let d = Daemon::start_in(&d.dir, &opts).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut worst_health = Duration::ZERO;
    let mut issued_meanwhile = 0;
    let done_at = loop {
        let t = Instant::now();
        let r = d.http.get(format!("{}/v1/health", d.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        worst_health = worst_health.max(t.elapsed());
        let (s, _) = d.issue(&iss.token(), json!({"role": "pki/web"})).await;
        assert_eq!(s, 201, "issuing works during mass expiry");
        issued_meanwhile += 1;
        let (_, v) = d.get("/v1/admin/leases?state=active&role=token/orders&limit=1", &d.admin).await;
        let (_, f) = d.get("/v1/admin/leases?state=revoke_failed&limit=1", &d.admin).await;
        assert_eq!(f["leases"].as_array().unwrap().len(), 0, "no revocation failed");
        if v["leases"].as_array().unwrap().is_empty() {
            break time::OffsetDateTime::now_utc();
        }
        assert!(Instant::now() < deadline, "10,000 leases not revoked within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lag = (done_at.unix_timestamp_nanos() / 1_000_000) as i64 - expiry;
    eprintln!("10,000 leases: all revoked {lag} ms after expiry; worst health {worst_health:?}; {issued_meanwhile} issues meanwhile");
    // Debug build on 2 cores: the release bench measures the real figure.
    assert!(lag < 20_000, "all revoked {lag} ms after expiry");
    assert!(worst_health < Duration::from_secs(2), "health took {worst_health:?} during mass expiry");
    assert!(issued_meanwhile > 0);
    let (_, v) = d.get("/v1/admin/leases?state=expired&limit=10000", &d.admin).await;
    assert_eq!(v["leases"].as_array().unwrap().len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_100k_leases_serves_its_first_request_within_a_second() {
    // A wall-clock claim: 0.29 s alone in a debug build, 1.57 s once beside
    // the three-replica burst (a fresh-clone CI on a slow machine).
    let _heavy = crate::support::heavy().await;
    let iss = Issuer::start().await;
    let opts = Opts {
        issuer_url: iss.url.clone(),
        extra_toml: "[quotas]\nmax_active_total = 0\nmax_active_per_role = 0\nmax_active_per_owner = 0\nissues_per_minute_per_owner = 0".into(),
        ..Default::default()
    };
    let mut d = Daemon::start_with(opts.clone()).await;
    d.stop().await;
    let later = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;
    seed(&d.dir.join("lessor.db"), 100_000, later, "b").await;
    let t = Instant::now();
    let d = Daemon::start_in(&d.dir, &opts).await;
    let r = d.http.get(format!("{}/v1/health", d.url)).send().await.unwrap();
    let first = t.elapsed();
    assert_eq!(r.status().as_u16(), 200);
    eprintln!("100,000 leases: first request served {first:?} after start");
    assert!(first < Duration::from_secs(1), "first request served {first:?} after start");
    let (s, _) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);
}

/// The same mass expiry on the PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_leases_expiring_together_on_postgres() {
    let _heavy = crate::support::heavy().await;
    let pg = lessor_postgres::testkit::TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    pg.psql("postgres", "CREATE DATABASE lessor").unwrap();
    let iss = Issuer::start().await;
    let opts = Opts {
        issuer_url: iss.url.clone(),
        store: Some(pg.dsn("postgres", pg.superuser_password(), "lessor")),
        leases_toml: "revoke_concurrency = 64\nbatch_size = 1000".into(),
        extra_toml: "[quotas]\nmax_active_total = 0\nmax_active_per_role = 0\nmax_active_per_owner = 0\nissues_per_minute_per_owner = 0".into(),
        ..Default::default()
    };
    let d = Daemon::start_with(opts).await;
    let expiry = (time::OffsetDateTime::now_utc().unix_timestamp() + 3) * 1000;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    pg.psql(
        "lessor",
        &format!(
            "INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state, issued_at, expires_at, max_expires_at)
             SELECT 'lse_pg' || lpad(to_hex(i), 28, '0'), 'token/orders', 'token', 'https://seed.example', 'seed-' || (i % 97),
                    '{{}}', '[]', '[]', 'active', {now_ms}, {expiry}, {expiry} + 3600000
             FROM generate_series(1, 10000) AS i"
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_at = loop {
        let r = d.http.get(format!("{}/v1/health", d.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (s, _) = d.issue(&iss.token(), json!({"role": "pki/web"})).await;
        assert_eq!(s, 201, "issuing works during mass expiry");
        let left = pg.psql("lessor", "SELECT count(*) FROM leases WHERE role = 'token/orders' AND state <> 'expired'").unwrap();
        if left == "0" {
            break time::OffsetDateTime::now_utc();
        }
        assert!(Instant::now() < deadline, "10,000 leases not revoked within 60 s ({left} left)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lag = (done_at.unix_timestamp_nanos() / 1_000_000) as i64 - expiry;
    eprintln!("PostgreSQL store, 10,000 leases: all revoked {lag} ms after expiry");
    assert!(lag < 20_000, "all revoked {lag} ms after expiry");
}
