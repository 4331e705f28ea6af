//! Customer token introspection (`cargo bench --bench customer_tokens`):
//! latency of `POST /v1/introspect` over HTTP (keep-alive, resource-server
//! Basic auth, form body) against the issue's target (p99 < 2 ms on this
//! machine), the CPU each introspection costs, and the same with the cache
//! off (every introspection one store read) as a ratio. Not a test: it
//! prints each figure next to its target.
//!
//! The daemon runs in this process (`server::start`, like the tests), on
//! SQLite with lessor's defaults; the load generator shares the machine,
//! so "CPU per introspection" is daemon + client. Part 3 calls the service
//! directly (no HTTP): the daemon's own share.
//!
//! `LESSOR_BENCH_REQUESTS=N` changes the requests per round (default 20,000).

#[path = "support/mod.rs"]
mod support;
use support::{copy_dir, cpu_seconds, cpus, loadavg, pct};

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use lessor::config::Config;
use lessor::customer_tokens::{CreateRequest, UseInfo};
use lessor::principal::{Person, RequestMeta};
use lessor::server::Running;
use secrecy::{ExposeSecret, SecretString};

const TOKENS: usize = 1_000;
const SECRET: &str = "bench-resource-server-secret-0123456789abcdef";

struct Report {
    rows: Vec<[String; 4]>,
}

impl Report {
    fn row(&mut self, what: &str, ours: String, target: &str, pass: Option<bool>) {
        let verdict = match pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "",
        };
        println!("  {what}: {ours}   [{target}] {verdict}");
        self.rows.push([what.to_owned(), ours, target.to_owned(), verdict.to_owned()]);
    }

    fn print(&self) {
        let w: Vec<usize> = (0..4).map(|i| self.rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
        println!();
        println!("lessor customer token introspection: summary ({} CPUs, load average {})", cpus(), loadavg());
        for r in &self.rows {
            println!("  {:<w0$}  {:>w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3], w0 = w[0], w1 = w[1], w2 = w[2]);
        }
    }
}

async fn daemon(dir: &Path, cache_ttl: &str) -> Running {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(dir.join("rs.secret"), SECRET).expect("secret");
    let text = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
data_dir = "{dir}"
policies = "{dir}/policies"
[scopes."invoices.read"]
allows = "Read invoices."
denies = "Cannot change or send invoices."
[scopes."customers.read"]
allows = "Read customers."
denies = "Cannot change customers."
[connections.api]
plugin = "token"
environment = "production"
[connections.api.roles.customers]
max_ttl = "1h"
scopes = ["invoices.read", "customers.read"]
[customer_tokens]
roles = ["api/customers"]
introspection_cache_ttl = "{cache_ttl}"
[customer_tokens.resource_servers.bench]
secret_file = "{dir}/rs.secret"
"#,
        db = dir.join("lessor.db").display(),
        dir = dir.display(),
    );
    let cfg = Config::from_toml(&text).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    lessor::server::start(cfg, listener).await.expect("start")
}

async fn tokens(r: &Running) -> Vec<String> {
    let ct = r.customer_tokens.as_ref().expect("customer tokens");
    let p = Person {
        provider: "dev".into(),
        issuer: "http://idp".into(),
        subject: "carol".into(),
        email: "carol@example.com".into(),
        name: "Carol".into(),
        groups: vec!["account:acme".into()],
    };
    let mut out = Vec::with_capacity(TOKENS);
    for i in 0..TOKENS {
        let req = CreateRequest {
            name: format!("token {i}"),
            environment: None,
            scopes: vec!["invoices.read".into()],
            expires_in: None,
            confirm: false,
        };
        out.push(ct.create(&p, &RequestMeta::internal(), "acme", &req).await.expect("create").token.expose_secret().to_owned());
    }
    out
}

struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

/// `n` introspections over HTTP from `clients` concurrent keep-alive
/// clients, cycling through `tokens`.
async fn http_round(url: &str, tokens: &Arc<Vec<String>>, n: usize, clients: usize) -> Run {
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("bench:{SECRET}")));
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (url, tokens, basic) = (url.to_owned(), tokens.clone(), basic.clone());
        set.spawn(async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
            let mut lat = Vec::with_capacity(n / clients + 1);
            let mut i = c;
            while i < n {
                let t = &tokens[i % tokens.len()];
                let started = Instant::now();
                let r = http
                    .post(format!("{url}/v1/introspect"))
                    .header("authorization", &basic)
                    .form(&[("token", t.as_str())])
                    .send()
                    .await
                    .expect("introspect");
                assert_eq!(r.status(), 200);
                let body = r.bytes().await.expect("body");
                assert!(body.starts_with(b"{\"active\":true"), "{}", String::from_utf8_lossy(&body));
                lat.push(started.elapsed().as_secs_f64() * 1000.0);
                i += clients;
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r.expect("client"));
    }
    let secs = start.elapsed().as_secs_f64();
    Run { rate: n as f64 / secs, p50_ms: pct(&mut lat, 0.5), p99_ms: pct(&mut lat, 0.99), cpu_us: (cpu_seconds() - cpu) * 1e6 / n as f64 }
}

/// `n` introspections calling the service directly (no HTTP, no client).
async fn service_round(r: &Running, tokens: &[String], n: usize) -> Run {
    let ct = r.customer_tokens.as_ref().expect("customer tokens");
    let rs = ct.resource_server("bench", &SecretString::from(SECRET.to_owned())).expect("resource server").clone();
    let secrets: Vec<SecretString> = tokens.iter().map(|t| SecretString::from(t.clone())).collect();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    let cpu = cpu_seconds();
    for i in 0..n {
        let t = Instant::now();
        let info = UseInfo { source: std::net::IpAddr::from([127, 0, 0, 1]), user_agent: "bench".into() };
        let a = ct.introspect(&rs, &secrets[i % secrets.len()], info).await.expect("introspect");
        assert!(a.is_some());
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let secs = start.elapsed().as_secs_f64();
    Run { rate: n as f64 / secs, p50_ms: pct(&mut lat, 0.5), p99_ms: pct(&mut lat, 0.99), cpu_us: (cpu_seconds() - cpu) * 1e6 / n as f64 }
}

fn show(r: &Run) -> String {
    format!("p50 {:.3} ms, p99 {:.3} ms, {:.0}/s, {:.0} us CPU each", r.p50_ms, r.p99_ms, r.rate, r.cpu_us)
}

const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("LESSOR_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut rep = Report { rows: Vec::new() };
    println!("lessor customer token introspection ({} CPUs; client and daemon in one process; load average {} at start)", cpus(), loadavg());

    // Two daemons: the cache on (1s, the default) and off (0s: one SQLite
    // read per introspection); rounds interleaved so both see the same load.
    let (tmp_on, tmp_off) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let on = daemon(tmp_on.path(), "1s").await;
    let off = daemon(tmp_off.path(), "0s").await;
    let (url_on, url_off) = (format!("http://{}", on.addr), format!("http://{}", off.addr));
    let toks_on = Arc::new(tokens(&on).await);
    let toks_off = Arc::new(tokens(&off).await);
    println!("\n[1] POST /v1/introspect over HTTP, {TOKENS} tokens, 1 keep-alive client; {ROUNDS} interleaved rounds of {n} requests, cache on and off");
    http_round(&url_on, &toks_on, 2_000, 1).await;
    http_round(&url_off, &toks_off, 2_000, 1).await;
    let (mut r_on, mut r_off) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let a = http_round(&url_on, &toks_on, n, 1).await;
        println!("    round {round} cache on:  {}; load average {}", show(&a), loadavg());
        let b = http_round(&url_off, &toks_off, n, 1).await;
        println!("    round {round} cache off: {}; load average {}", show(&b), loadavg());
        r_on.push(a);
        r_off.push(b);
    }
    let p99_on = median(r_on.iter().map(|r| r.p99_ms).collect());
    let p99_best = r_on.iter().map(|r| r.p99_ms).fold(f64::INFINITY, f64::min);
    let p50_on = median(r_on.iter().map(|r| r.p50_ms).collect());
    let cpu_on = median(r_on.iter().map(|r| r.cpu_us).collect());
    let p99_off = median(r_off.iter().map(|r| r.p99_ms).collect());
    let cpu_off = median(r_off.iter().map(|r| r.cpu_us).collect());
    rep.row(
        "1. introspection over HTTP, cache on: median p99 (best round); p50",
        format!("{p99_on:.3} ms ({p99_best:.3}); {p50_on:.3} ms"),
        "p99 < 2 ms",
        Some(p99_on < 2.0),
    );
    rep.row("1. CPU per introspection (daemon + client, HTTP), cache on", format!("{cpu_on:.0} us"), "context", None);
    rep.row(
        "1. cache off / on (ratio of median p99; of CPU)",
        format!("{:.2}x; {:.2}x", p99_off / p99_on, cpu_off / cpu_on),
        "context",
        None,
    );
    let four = http_round(&url_on, &toks_on, n, 4).await;
    println!("    4 clients, cache on: {}; load average {}", show(&four), loadavg());
    rep.row("1. 4 clients, cache on: p99; rate", format!("{:.3} ms; {:.0}/s", four.p99_ms, four.rate), "context", None);

    println!("\n[2] The daemon's share: the service called directly (format check, cache, state at the clock, use queued)");
    service_round(&on, &toks_on, 2_000).await;
    let svc = service_round(&on, &toks_on, n).await;
    println!("    {}", show(&svc));
    rep.row("2. introspection in the service: p99; CPU each (incl. the usage writer)", format!("{:.4} ms; {:.1} us", svc.p99_ms, svc.cpu_us), "context", None);
    for r in [on, off] {
        r.customer_tokens.as_ref().expect("ct").usage().flush().await;
        r.shutdown().await;
    }
    rep.print();
}
