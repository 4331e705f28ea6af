//! PostgreSQL role issuance: lessor over HTTP vs the same statements sent
//! straight to the server, at the same concurrency (`cargo bench --bench
//! postgres`). Not a test: it reports numbers and their ratio.
//!
//! lessor's path per request: a fresh workload JWT verified, policy decided,
//! the lease written pending then active (SQLite, durable), and in one
//! PostgreSQL transaction CREATE ROLE ... PASSWORD <SCRAM verifier> VALID
//! UNTIL ... + GRANT orders_reader (a group role holding SELECT on orders). The raw path runs that same
//! transaction with a plaintext password (the server hashes it; lessor hashes
//! client-side instead), on one connection per client. Granting a group role
//! (not object privileges) keeps concurrent transactions from conflicting on
//! one ACL row ("tuple concurrently updated"), for both.

#[path = "support/mod.rs"]
mod support;
use support::{copy_dir, pct};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor::config::Config;
use lessor::identity::dev::{jwks_path, DevIssuer, DEV_AUDIENCE, DEV_ISSUER};
use lessor_postgres::testkit::TempPostgres;
use secrecy::ExposeSecret;

const CLIENTS: usize = 8;
const N: usize = 1600;
const ROUNDS: usize = 3;

/// The raw baseline. `verifier`: send what lessor sends, a SCRAM-SHA-256
/// verifier the client computes per role (the same statement); otherwise a
/// plaintext password that the server hashes (what most tools send).
async fn raw(pg: &TempPostgres, verifier: bool, round: usize) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    // One connection per client (the pool holds exactly CLIENTS).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .min_connections(CLIENTS as u32)
        .max_connections(CLIENTS as u32)
        .connect(&pg.dsn("postgres", pg.superuser_password(), "app"))
        .await
        .expect("connect");
    let start = Instant::now();
    for _ in 0..CLIENTS {
        let next = next.clone();
        let pool = pool.clone();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= N {
                    break;
                }
                let name = format!("raw_bench_{}_{round}_{i:032x}", verifier as u8);
                let pw: [u8; 32] = rand::random();
                let pw = if verifier {
                    let p = hex::encode(pw);
                    tokio::task::spawn_blocking(move || lessor_postgres::scram::verifier(p.as_bytes()).expect("verifier"))
                        .await
                        .expect("hash")
                } else {
                    hex::encode(pw)
                };
                let sql = format!(
                    "BEGIN; CREATE ROLE \"{name}\" LOGIN PASSWORD '{}' VALID UNTIL '2099-01-01T00:00:00Z'; \
                     GRANT orders_reader TO \"{name}\"; COMMIT",
                    pw
                );
                sqlx::raw_sql(&sql).execute(&pool).await.expect("create role");
            }
        });
    }
    while set.join_next().await.is_some() {}
    N as f64 / start.elapsed().as_secs_f64()
}

async fn lessor_rate(url: &str, role: &str, jwts: Vec<String>) -> (f64, f64, f64) {
    let http = reqwest::Client::new();
    let jwts = Arc::new(std::sync::Mutex::new(jwts));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, url, jwts, role) = (http.clone(), url.to_owned(), jwts.clone(), role.to_owned());
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(jwt) = jwts.lock().expect("lock").pop() else { break };
                let t = Instant::now();
                let r = http
                    .post(format!("{url}/v1/leases"))
                    .bearer_auth(jwt)
                    .json(&serde_json::json!({"role": role, "ttl": "10m"}))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r.expect("client"));
    }
    let rate = N as f64 / start.elapsed().as_secs_f64();
    (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

#[tokio::main]
async fn main() {
    let pg = TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    pg.psql("postgres", "CREATE DATABASE app").expect("create db");
    pg.psql("app", "CREATE TABLE orders (id int); CREATE ROLE orders_reader; GRANT SELECT ON orders TO orders_reader")
        .expect("create table");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(
        dir.join("policies/bench.cedar"),
        "@id(\"bench\")\npermit(principal, action == Lessor::Action::\"issue\", resource is Lessor::Role);\n",
    )
    .expect("policy");
    let dev = DevIssuer::load_or_create(dir).expect("dev issuer");
    std::fs::write(dir.join("pg.dsn"), pg.dsn("postgres", pg.superuser_password(), "app")).expect("dsn");
    let cfg = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
data_dir = "{dir}"
policies = "{dir}/policies"
[issuers.dev]
issuer = "{DEV_ISSUER}"
jwks_file = "{jwks}"
audiences = ["{DEV_AUDIENCE}"]
algorithms = ["ES256"]
preset = "github-actions"
[scopes."orders.read"]
allows = "Read orders."
[connections.token]
plugin = "token"
[connections.token.roles.plain]
max_ttl = "1h"

[connections.pg]
plugin = "postgres"
[connections.pg.config]
dsn_file = "{dir}/pg.dsn"
pool_size = {CLIENTS}
[connections.pg.roles.app]
max_ttl = "1h"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
[connections.pg.roles.app.config.grants]
"orders.read" = ["GRANT orders_reader TO {{{{name}}}}"]
"#,
        db = dir.join("lessor.db").display(),
        dir = dir.display(),
        jwks = jwks_path(dir).display(),
    );
    let cfg = Config::from_toml(&cfg).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = lessor::server::start(cfg, listener).await.expect("start");
    let url = format!("http://{}", running.addr);

    // Fresh workload JWTs are minted before each timed run.
    // Warm-up: connections, JWKS, caches.
    let warm: Vec<String> = (0..CLIENTS * 4)
        .map(|i| {
            let claims = DevIssuer::github_claims(&format!("acme/warm{i}"), "refs/heads/main", None);
            dev.mint(claims, Duration::from_secs(600)).expect("mint").expose_secret().to_owned()
        })
        .collect();
    let _ = lessor_rate_n(&url, warm).await;

    // LESSOR_BENCH_SKIP_RAW=1 measures lessor alone (for profiling).
    // Three rounds, alternating, reporting medians: runs on a shared 2-core
    // machine vary by several percent.
    let skip = std::env::var_os("LESSOR_BENCH_SKIP_RAW").is_some();
    let (mut raws, mut plains, mut rates, mut p50s, mut p99s) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        if !skip {
            raws.push(raw(&pg, true, round).await);
            plains.push(raw(&pg, false, round).await);
        }
        let jwts: Vec<String> = (0..N)
            .map(|i| {
                let claims = DevIssuer::github_claims(&format!("acme/svc{round}-{i}"), "refs/heads/main", None);
                dev.mint(claims, Duration::from_secs(600)).expect("mint").expose_secret().to_owned()
            })
            .collect();
        let (r, a, b) = lessor_rate(&url, "pg/app", jwts).await;
        rates.push(r);
        p50s.push(a);
        p99s.push(b);
    }
    let med = |v: &mut Vec<f64>| if v.is_empty() { f64::NAN } else { pct(v, 0.5) };
    let (raw_rate, raw_plain, rate, p50, p99) = (med(&mut raws), med(&mut plains), med(&mut rates), med(&mut p50s), med(&mut p99s));
    // The same path with a vendor that costs nothing (lessor-signed token):
    // lessor's own ceiling on this machine.
    let tok_jwts: Vec<String> = (0..N)
        .map(|i| {
            let claims = DevIssuer::github_claims(&format!("acme/tok{i}"), "refs/heads/main", None);
            dev.mint(claims, Duration::from_secs(600)).expect("mint").expose_secret().to_owned()
        })
        .collect();
    let (tok_rate, tok_p50, _) = lessor_rate(&url, "token/plain", tok_jwts).await;
    println!("PostgreSQL role issuance, {CLIENTS} concurrent clients, {N} roles per run, median of {ROUNDS} runs, {} CPU(s)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("  raw, same statements (SCRAM verifier made by the client): {raw_rate:8.0} roles/s");
    println!("  raw, plaintext password (the server hashes it):           {raw_plain:8.0} roles/s");
    println!("  lessor over HTTP (JWT, policy, durable lease, role):      {rate:8.0} roles/s  (p50 {p50:.1} ms, p99 {p99:.1} ms)");
    println!("  ratio lessor / raw same statements: {:.2}   lessor / raw plaintext: {:.2}", rate / raw_rate, rate / raw_plain);
    println!("  lessor alone, token role (no vendor call):                {tok_rate:8.0} issues/s (p50 {tok_p50:.1} ms)");
    println!(
        "  server sessions opened during the run: {}",
        pg.psql("postgres", "SELECT sum(sessions) FROM pg_stat_database").unwrap_or_default()
    );
    running.shutdown().await;
}

async fn lessor_rate_n(url: &str, jwts: Vec<String>) {
    let http = reqwest::Client::new();
    for jwt in jwts {
        let _ = http
            .post(format!("{url}/v1/leases"))
            .bearer_auth(jwt)
            .json(&serde_json::json!({"role": "pg/app", "ttl": "10m"}))
            .send()
            .await;
    }
}
