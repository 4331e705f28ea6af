//! The lease engine at scale (`cargo bench --bench engine`): issuance
//! throughput and latency over HTTP, the daemon's memory and start time with
//! a million leases in its store, and how fast leases that expire together
//! are revoked (token plugin, and PostgreSQL roles next to the vendor's own
//! rate), and (part 6) the Vault-compatible API next to the native one on
//! the same roles and load. Not a test: it prints each figure next to its
//! target.
//!
//! Parts 1, 4, 5 and 6 run the daemon in this process (`server::start`, like
//! the tests); parts 2 and 3 run the real `lessor serve` binary as a child,
//! so that its resident memory is the daemon's alone. Every daemon keeps
//! lessor's defaults (SQLite, `synchronous=FULL`, group commit) except where
//! the output says otherwise.
//!
//! `LESSOR_BENCH_PARTS=1,4` runs only some parts; `LESSOR_BENCH_LEASES=N`
//! seeds N leases instead of a million (for a quick look, not for figures).
//!
//! Why one file (about 860 lines): the six parts share the set-up (`Setup`),
//! the HTTP load loops and the report that prints each figure beside its
//! target; `LESSOR_BENCH_PARTS` picks parts, not files.

#[path = "support/mod.rs"]
mod support;
use support::{copy_dir, cpu_seconds, cpus, loadavg, pct};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lessor::config::Config;
use lessor::identity::dev::{jwks_path, DevIssuer, DEV_AUDIENCE, DEV_ISSUER};
use lessor::server::Running;
use lessor::store::{from_ms, to_ms, LeaseFilter, LeaseState, Store};
use lessor_postgres::testkit::TempPostgres;
use secrecy::ExposeSecret;
use sqlx::Connection;
use time::OffsetDateTime;

const CLIENTS: usize = 8;
/// Requests per timed issuance round, and rounds per plugin (median kept).
const ISSUES: usize = 8_000;
const ROUNDS: usize = 3;
/// Leases expiring together in part 4, and PostgreSQL roles in part 5.
const MASS: usize = 10_000;
const PG_LEASES: usize = 2_000;

// ---------------------------------------------------------------- report

struct Report {
    rows: Vec<[String; 4]>,
}

impl Report {
    /// A figure; `pass` is None when it has no target (context only).
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
        println!("lessor lease engine at scale: summary ({} CPUs)", cpus());
        for r in &self.rows {
            println!("  {:<w0$}  {:>w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3], w0 = w[0], w1 = w[1], w2 = w[2]);
        }
    }
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

// ---------------------------------------------------------------- setup

/// A daemon's directory: the example policies, the dev issuer (whose JWKS
/// file the config trusts) and the config text.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    dev: Arc<DevIssuer>,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
        let dev = Arc::new(DevIssuer::load_or_create(&dir).expect("dev issuer"));
        Setup { _tmp: tmp, dir, dev }
    }

    fn db(&self) -> PathBuf {
        self.dir.join("lessor.db")
    }

    /// The config: the example roles and policies (`pki/web`, `token/orders`,
    /// and `pg/readonly` when `pg` is set), quotas opened up for a million
    /// leases, `leases` under `[leases]` (empty: lessor's defaults).
    fn config(&self, leases: &str, pg: bool) -> String {
        let pg = if pg {
            format!(
                r#"
[connections.pg]
plugin = "postgres"
[connections.pg.config]
dsn_file = "{dir}/pg.dsn"
pool_size = {CLIENTS}
[connections.pg.roles.readonly]
max_ttl = "1h"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
[connections.pg.roles.readonly.config.grants]
"orders.read" = ["GRANT orders_reader TO {{{{name}}}}"]
"#,
                dir = self.dir.display()
            )
        } else {
            String::new()
        };
        format!(
            r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
data_dir = "{dir}"
policies = "{dir}/policies"

[leases]
{leases}

[quotas]
max_active_per_role = 0
max_active_total = 2000000

[issuers.dev]
issuer = "{DEV_ISSUER}"
jwks_file = "{jwks}"
audiences = ["{DEV_AUDIENCE}"]
algorithms = ["ES256"]
preset = "github-actions"

[scopes."orders.read"]
allows = "Read orders."

[connections.pki]
plugin = "pki"
environment = "staging"
[connections.pki.roles.web]
max_ttl = "1h"
default_ttl = "5m"
[connections.pki.roles.web.config]
allowed_names = ["spiffe://acme.internal/gh/{{repository}}", "{{repository_owner}}.svc.acme.internal"]
key_type = "p256"

[connections.token]
plugin = "token"
environment = "staging"
[connections.token.config]
algorithm = "ES256"
[connections.token.roles.orders]
max_ttl = "1h"
default_ttl = "5m"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
{pg}
"#,
            db = self.db().display(),
            dir = self.dir.display(),
            jwks = jwks_path(&self.dir).display(),
        )
    }

    async fn start(&self, leases: &str, pg: bool) -> (Running, String) {
        self.start_text(&self.config(leases, pg)).await
    }

    async fn start_text(&self, text: &str) -> (Running, String) {
        let cfg = Config::from_toml(text).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let running = lessor::server::start(cfg, listener).await.expect("start");
        let url = format!("http://{}", running.addr);
        (running, url)
    }

    /// `n` workload JWTs, each with its own `sub` and `jti` (a fresh
    /// workload per request), signed on every core before the timed window.
    fn jwts(&self, tag: &str, n: usize) -> Vec<String> {
        let per = n.div_ceil(cpus());
        let mut out = Vec::with_capacity(n);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..cpus())
                .map(|t| {
                    let dev = self.dev.clone();
                    s.spawn(move || {
                        (t * per..((t + 1) * per).min(n))
                            .map(|i| {
                                let mut claims = DevIssuer::github_claims(&format!("acme/{tag}-{i}"), "refs/heads/main", None);
                                claims.insert("jti".into(), format!("{tag}-{i}-{}", hex::encode(rand::random::<[u8; 8]>())).into());
                                dev.mint(claims, Duration::from_secs(900)).expect("mint").expose_secret().to_owned()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                out.extend(h.join().expect("signer"));
            }
        });
        out
    }
}

// ---------------------------------------------------------------- load

struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time this process (daemon and clients, when in-process) spent
    /// per request: what the rate would be on idle cores, as the machine
    /// is shared with other work.
    cpu_us: f64,
}

/// `jwts.len()` native issue requests for `role` (`POST /v1/leases`, one
/// JWT each) from CLIENTS concurrent clients, each reading the whole response.
async fn issue_load(http: &reqwest::Client, url: &str, role: &str, jwts: Vec<String>) -> Run {
    let body = serde_json::json!({"role": role, "ttl": "10m"});
    let reqs = jwts
        .into_iter()
        .map(|jwt| http.post(format!("{url}/v1/leases")).bearer_auth(jwt).json(&body).build().expect("request"))
        .collect();
    load(http, reqs, 201).await
}

/// Sends `reqs` from CLIENTS concurrent clients, each request answered
/// `status` and read whole.
async fn load(http: &reqwest::Client, reqs: Vec<reqwest::Request>, status: u16) -> Run {
    let n = reqs.len();
    let reqs = Arc::new(Mutex::new(reqs));
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, reqs) = (http.clone(), reqs.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(req) = reqs.lock().expect("lock").pop() else { break };
                let t = Instant::now();
                let r = http.execute(req).await.expect("request");
                let got = r.status().as_u16();
                let body = r.bytes().await.expect("body");
                assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r.expect("client"));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu) * 1e6 / n as f64;
    Run { rate, p50_ms: pct(&mut lat, 0.5), p99_ms: pct(&mut lat, 0.99), cpu_us }
}

// ---------------------------------------------------------------- part 1

async fn part1(rep: &mut Report) {
    println!("\n[1] Issuance over HTTP: {CLIENTS} concurrent clients, a fresh workload JWT per request (pre-signed before the timed window: the issuer signs them, not lessor), durable lease writes (SQLite, synchronous=FULL); median of {ROUNDS} rounds of {} requests", thousands(ISSUES as f64));
    let s = Setup::new();
    let (running, url) = s.start("", false).await;
    let http = reqwest::Client::new();
    for role in ["pki/web", "token/orders"] {
        issue_load(&http, &url, role, s.jwts(&format!("warm-{}", role.replace('/', "-")), 400)).await;
    }
    for (role, what) in [("pki/web", "pki: P-256 key generated + certificate signed"), ("token/orders", "token: ES256 token signed")] {
        let mut runs = Vec::new();
        for round in 0..ROUNDS {
            let jwts = s.jwts(&format!("{}-{round}", role.replace('/', "-")), ISSUES);
            let r = issue_load(&http, &url, role, jwts).await;
            println!(
                "    {role} round {round}: {:.0}/s p50 {:.2} ms p99 {:.2} ms; {:.0} us CPU per issue (daemon + clients); load average {}",
                r.rate, r.p50_ms, r.p99_ms, r.cpu_us, loadavg()
            );
            runs.push(r);
        }
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let m = &runs[runs.len() / 2];
        let (target, pass) = if role == "pki/web" {
            ("target >= 3,000 certificates/s; OpenBao 2.7.2 ~310/s login+issue, ~494/s reused login", Some(m.rate >= 3000.0))
        } else {
            ("no target (context: lessor's path without keygen)", None)
        };
        rep.row(&format!("1. issue {what}"), format!("{}/s", thousands(m.rate)), target, pass);
        rep.row(&format!("1. issue {role} latency p50 / p99"), format!("{:.2} / {:.2} ms", m.p50_ms, m.p99_ms), "", None);
        let best = runs.last().map(|r| r.rate).unwrap_or(f64::NAN);
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_us).collect();
        let cpu = pct(&mut cpu, 0.5);
        rep.row(
            &format!("1. issue {role}: best round; CPU per issue (daemon + clients) -> rate on {} idle cores", cpus()),
            format!("{}/s; {cpu:.0} us -> {}/s", thousands(best), thousands(cpus() as f64 * 1e6 / cpu)),
            "the machine is shared: see load average",
            None,
        );
    }
    running.shutdown().await;

    // What the audit log (on by default: hash chain, group writes) costs:
    // the same token load against a daemon with `[audit] sink = "off"`,
    // rounds alternating so both see the same machine load.
    let s_off = Setup::new();
    let (off, off_url) = s_off.start_text(&(s_off.config("", false) + "\n[audit]\nsink = \"off\"\n")).await;
    let s_on = Setup::new();
    let (on, on_url) = s_on.start("", false).await;
    issue_load(&http, &off_url, "token/orders", s_off.jwts("warm-off", 400)).await;
    issue_load(&http, &on_url, "token/orders", s_on.jwts("warm-on", 400)).await;
    let (mut r_on, mut r_off) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        r_off.push(issue_load(&http, &off_url, "token/orders", s_off.jwts(&format!("off-{round}"), ISSUES)).await.rate);
        r_on.push(issue_load(&http, &on_url, "token/orders", s_on.jwts(&format!("on-{round}"), ISSUES)).await.rate);
    }
    let (m_on, m_off) = (pct(&mut r_on, 0.5), pct(&mut r_off, 0.5));
    rep.row(
        "1. token issue with the audit log on / off (ratio)",
        format!("{}/s / {}/s ({:.2})", thousands(m_on), thousands(m_off), m_on / m_off),
        "the audit log's cost",
        None,
    );
    on.shutdown().await;
    off.shutdown().await;
    println!("    crypto floor per core: ~63 us ES256 verify + ~51 us P-256 keygen+sign = ~114 us, i.e. ~{:.0} certificates/s on {} cores with nothing else",
        cpus() as f64 * 1e6 / 114.0, cpus());
}

// ---------------------------------------------------------------- parts 2, 3

/// A `lessor serve` child process.
struct Daemon {
    child: Child,
    url: String,
    started: Instant,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn spawn_daemon(s: &Setup, log: &Path) -> Daemon {
    let port = free_port();
    let cfg = s.dir.join("lessor.toml");
    std::fs::write(&cfg, s.config("", false)).expect("config");
    let log = std::fs::File::create(log).expect("log");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("LESSOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn lessor");
    Daemon { child, url: format!("http://127.0.0.1:{port}"), started }
}

impl Daemon {
    /// Polls `GET /v1/health` until it answers 200; the time since spawn.
    async fn ready(&mut self, http: &reqwest::Client, log: &Path) -> Duration {
        loop {
            if let Ok(r) = http.get(format!("{}/v1/health", self.url)).send().await {
                if r.status().is_success() {
                    return self.started.elapsed();
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("lessor exited ({st}): {}", std::fs::read_to_string(log).unwrap_or_default());
            }
            assert!(self.started.elapsed() < Duration::from_secs(120), "lessor not ready after 120 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss(&self) -> (f64, f64) {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kb = |key: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .expect("VmRSS")
                / 1024.0
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Scrapes `/metrics` (where lessor counts leases by role and state for
/// its gauge) once a second for `secs`, while the expiry worker ticks;
/// returns the slowest scrape.
async fn scrape_for(http: &reqwest::Client, url: &str, secs: u64) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..secs {
        let t = Instant::now();
        let r = http.get(format!("{url}/metrics")).send().await.expect("metrics");
        assert!(r.status().is_success());
        let body = r.text().await.expect("metrics body");
        assert!(body.contains("lessor_"), "metrics text");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(t.elapsed())).await;
    }
    worst
}

/// Writes `n` active leases (half `pki/web`, half `token/orders`, expiring
/// in 30 to 31 days, with random ids and realistic claims and handles)
/// into the store in transactions of 100,000 rows, after
/// `lessor::store::open` has migrated it. Returns the time it took.
async fn seed(db: &Path, n: usize) -> Duration {
    let t = Instant::now();
    drop(lessor::store::open(&format!("sqlite://{}", db.display())).await.expect("open store"));
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.expect("connect");
    sqlx::query("PRAGMA cache_size = -262144").execute(&mut c).await.expect("pragma");
    let now_ms = to_ms(OffsetDateTime::now_utc());
    let far = now_ms + 30 * 86_400_000;
    const CHUNK: usize = 100_000;
    let mut from = 1;
    while from <= n {
        let to = (from + CHUNK - 1).min(n);
        let sql = format!(
            r#"WITH RECURSIVE seq(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM seq WHERE i < {to})
            INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state,
                                issued_at, expires_at, max_expires_at, handle)
            SELECT id,
                   CASE i % 2 WHEN 0 THEN 'pki/web' ELSE 'token/orders' END,
                   CASE i % 2 WHEN 0 THEN 'pki' ELSE 'token' END,
                   '{DEV_ISSUER}',
                   'repo:acme/svc' || i || ':ref:refs/heads/main',
                   '{{"actor":"dev","event_name":"push","ref":"refs/heads/main","ref_type":"branch","repository":"acme/svc' || i
                     || '","repository_owner":"acme","runner_environment":"github-hosted","workflow":"ci"}}',
                   CASE i % 2 WHEN 0 THEN '[]' ELSE '["orders.read"]' END,
                   CASE i % 2 WHEN 0 THEN '["gh-main-web"]' ELSE '["gh-acme-orders-tokens"]' END,
                   'active',
                   {now_ms} - (i * 7919) % 3600000,
                   {far} + (i * 104729) % 86400000,
                   {far} + (i * 104729) % 86400000 + 3600000,
                   CASE i % 2 WHEN 0 THEN '{{"serial":"' || lower(hex(randomblob(16))) || '"}}'
                        ELSE '{{"jti":"' || id || '","kid":"bench"}}' END
            FROM (SELECT i, 'lse_' || lower(hex(randomblob(16))) AS id FROM seq)"#
        );
        let mut tx = c.begin().await.expect("begin");
        sqlx::query(&sql).execute(&mut *tx).await.expect("seed");
        tx.commit().await.expect("commit");
        from = to + 1;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut c).await.expect("checkpoint");
    c.close().await.expect("close");
    t.elapsed()
}

struct Measured {
    start: Duration,
    rss_first: f64,
    rss_after: f64,
    hwm: f64,
    worst_scrape: Duration,
}

async fn measure_child(s: &Setup, http: &reqwest::Client, label: &str) -> (Daemon, Measured) {
    let log = s.dir.join(format!("lessor-{label}.log"));
    let mut d = spawn_daemon(s, &log);
    let start = d.ready(http, &log).await;
    let (rss_first, _) = d.rss();
    let worst_scrape = scrape_for(http, &d.url, 5).await;
    let (rss_after, hwm) = d.rss();
    println!(
        "    {label}: first request served {:.0} ms after spawn; VmRSS {rss_first:.1} MiB after it, {rss_after:.1} MiB after 5 s (peak {hwm:.1}); slowest /metrics {:.0} ms",
        start.as_secs_f64() * 1000.0,
        worst_scrape.as_secs_f64() * 1000.0
    );
    (d, Measured { start, rss_first, rss_after, hwm, worst_scrape })
}

async fn parts23(rep: &mut Report, n: usize) {
    println!("\n[2, 3] The real `lessor serve` binary (child process): start time and memory with 0 and {} leases", thousands(n as f64));
    let s = Setup::new();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    // First start: creates the seal key, admin token, CA and token key.
    let log = s.dir.join("lessor-first.log");
    let mut d = spawn_daemon(&s, &log);
    d.ready(&http, &log).await;
    d.stop();

    let (d, zero) = measure_child(&s, &http, "0 leases").await;
    d.stop();

    let took = seed(&s.db(), n).await;
    let size = std::fs::metadata(s.db()).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0);
    println!("    seeded {} leases in {:.1} s (sqlx, transactions of 100,000 rows); database {size:.0} MiB", thousands(n as f64), took.as_secs_f64());

    let (d, full) = measure_child(&s, &http, &format!("{} leases", thousands(n as f64))).await;
    // Issuing with the store full (quota counts, owner index) on the real binary.
    let jwts = s.jwts("full", 4_000);
    let r = issue_load(&http, &d.url, "token/orders", jwts).await;
    let (rss_load, hwm_load) = d.rss();
    println!("    {} leases: token issuance {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); VmRSS after it {rss_load:.1} MiB (peak {hwm_load:.1})",
        thousands(n as f64), r.rate, r.p50_ms, r.p99_ms);
    d.stop();

    let big = thousands(n as f64);
    rep.row("2. VmRSS, 0 leases, after first request", format!("{:.1} MiB", zero.rss_first), "", None);
    rep.row("2. VmRSS, 0 leases, after 5 s (worker + gauge)", format!("{:.1} MiB", zero.rss_after), "", None);
    rep.row(&format!("2. VmRSS, {big} leases, after first request"), format!("{:.1} MiB", full.rss_first), "target <= 150 MB", Some(full.rss_first * 1.048576 <= 150.0));
    rep.row(&format!("2. VmRSS, {big} leases, after 5 s (worker + gauge)"), format!("{:.1} MiB", full.rss_after), "target <= 150 MB", Some(full.rss_after * 1.048576 <= 150.0));
    rep.row(&format!("2. VmHWM (peak), {big} leases, after 5 s / after issuing"), format!("{:.1} / {:.1} MiB", full.hwm, hwm_load), "", None);
    rep.row(&format!("2. slowest /metrics scrape (lease gauge), 0 / {big}"), format!("{:.0} / {:.0} ms", zero.worst_scrape.as_secs_f64() * 1e3, full.worst_scrape.as_secs_f64() * 1e3), "", None);
    rep.row(&format!("2. token issuance with {big} leases in the store"), format!("{}/s p99 {:.1} ms", thousands(r.rate), r.p99_ms), "", None);
    rep.row("3. spawn -> first served request, 0 leases", format!("{:.0} ms", zero.start.as_secs_f64() * 1e3), "", None);
    rep.row(&format!("3. spawn -> first served request, {big} leases"), format!("{:.0} ms", full.start.as_secs_f64() * 1e3), "target < 2 s", Some(full.start < Duration::from_secs(2)));
}

// ---------------------------------------------------------------- parts 4, 5

struct Expiry {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Leases ended per second, from the common expiry to the last end.
    rate: f64,
    failed: usize,
}

/// Moves every active lease of `role` to one common expiry a few seconds
/// ahead (through the store's renew), waits until none is live, and reads
/// each lease's expiry and end time back from the store.
async fn expire_together(store: &Arc<dyn Store>, role: &str, n: usize) -> Expiry {
    let all = LeaseFilter { role: Some(role.to_owned()), limit: (n * 2) as u32, ..Default::default() };
    let active = store.list(&LeaseFilter { state: Some(LeaseState::Active), ..all.clone() }).await.expect("list");
    assert_eq!(active.len(), n, "active leases of {role}");
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let at = from_ms(to_ms(at)).expect("ms");
    let t = Instant::now();
    let now = OffsetDateTime::now_utc();
    let renewed = futures::stream::iter(active.iter().map(|l| store.renew(&l.id, now, at)))
        .buffer_unordered(512)
        .filter(|r| std::future::ready(matches!(r, Ok(true))))
        .count()
        .await;
    assert_eq!(renewed, n, "expiry moved on every lease");
    assert!(OffsetDateTime::now_utc() < at, "moving the expiry took {:?}; past the common expiry", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(180);
    let live = LeaseFilter { role: Some(role.to_owned()), ..Default::default() };
    loop {
        let left = store.count_live(&live).await.expect("count");
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} leases of {role} still live 180 s after their expiry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = store.list(&all).await.expect("list");
    let mut lag = Vec::with_capacity(n);
    let mut last = at;
    let mut failed = 0;
    for l in &ended {
        assert_eq!(l.expires_at, at, "lease {} kept its common expiry", l.id);
        assert_eq!(l.state, LeaseState::Expired, "lease {} ended as expired", l.id);
        failed += (l.attempts > 0) as usize;
        let end = l.ended_at.expect("ended_at recorded");
        last = last.max(end);
        lag.push((end - l.expires_at).as_seconds_f64() * 1000.0);
    }
    let span = (last - at).as_seconds_f64();
    Expiry {
        n: ended.len(),
        p50_ms: pct(&mut lag, 0.5),
        p99_ms: pct(&mut lag, 0.99),
        max_ms: pct(&mut lag, 1.0),
        rate: ended.len() as f64 / span.max(1e-3),
        failed,
    }
}

fn print_expiry(label: &str, e: &Expiry) {
    println!(
        "    {label}: {} leases ended, lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {:.0} revocations/s (from the common expiry to the last end), {} needed a retry",
        e.n, e.p50_ms, e.p99_ms, e.max_ms, e.rate, e.failed
    );
}

async fn part4(rep: &mut Report) {
    println!("\n[4] {} token leases expiring together (same expires_at, set through the store's renew after issuing them over HTTP); lag = ended_at - expires_at as recorded in the store", thousands(MASS as f64));
    let http = reqwest::Client::new();
    let settings: [(&str, &str); 2] =
        [("defaults (revoke_concurrency 16, batch_size 256, tick 500ms)", ""), ("revoke_concurrency = 64, batch_size = 1000", "revoke_concurrency = 64\nbatch_size = 1000")];
    for (label, leases) in settings {
        let s = Setup::new();
        let (running, url) = s.start(leases, false).await;
        let r = issue_load(&http, &url, "token/orders", s.jwts("mass", MASS)).await;
        println!("    issued {} token leases at {:.0}/s", thousands(MASS as f64), r.rate);
        let e = expire_together(&running.store, "token/orders", MASS).await;
        print_expiry(label, &e);
        rep.row(&format!("4. revocation lag p50 / p99, {label}"), format!("{:.0} / {:.0} ms", e.p50_ms, e.p99_ms), "target p99 < 1 s", Some(e.p99_ms < 1000.0));
        rep.row(&format!("4. revocations/s, {label}"), format!("{}/s", thousands(e.rate)), "", None);
        running.shutdown().await;
    }
}

/// Raw revocation of `n` roles over CLIENTS connections: `full` runs what
/// the plugin runs (NOLOGIN, terminate sessions, REASSIGN OWNED + DROP
/// OWNED + DROP ROLE in one transaction); otherwise DROP ROLE alone. The
/// roles are created first, untimed.
async fn raw_drop(pg: &TempPostgres, n: usize, full: bool, round: usize) -> f64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .min_connections(CLIENTS as u32)
        .max_connections(CLIENTS as u32)
        .connect(&pg.dsn("postgres", pg.superuser_password(), "app"))
        .await
        .expect("connect");
    let tag = if full { "full" } else { "drop" };
    let names: Vec<String> = (0..n).map(|i| format!("raw_{tag}_{round}_{i:032x}")).collect();
    // Create them (untimed), like lessor's: a login with a password, valid
    // until a date, granted the group role.
    futures::stream::iter(names.iter().map(|name| {
        let pool = pool.clone();
        async move {
            let sql = format!(
                "BEGIN; CREATE ROLE \"{name}\" LOGIN PASSWORD '{}' VALID UNTIL '2099-01-01T00:00:00Z'; GRANT orders_reader TO \"{name}\"; COMMIT",
                hex::encode(rand::random::<[u8; 32]>())
            );
            sqlx::raw_sql(&sql).execute(&pool).await.expect("create role");
        }
    }))
    .buffer_unordered(CLIENTS)
    .count()
    .await;
    let t = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let pool = pool.clone();
        async move {
            let mut c = pool.acquire().await.expect("acquire");
            if full {
                sqlx::raw_sql(&format!("BEGIN; ALTER ROLE \"{name}\" NOLOGIN; COMMIT")).execute(&mut *c).await.expect("nologin");
                sqlx::query("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1")
                    .bind(name)
                    .execute(&mut *c)
                    .await
                    .expect("terminate");
                sqlx::raw_sql(&format!(
                    "BEGIN; REASSIGN OWNED BY \"{name}\" TO postgres; DROP OWNED BY \"{name}\"; DROP ROLE \"{name}\"; COMMIT"
                ))
                .execute(&mut *c)
                .await
                .expect("drop");
            } else {
                sqlx::raw_sql(&format!("DROP ROLE \"{name}\"")).execute(&mut *c).await.expect("drop role");
            }
        }
    }))
    .buffer_unordered(CLIENTS)
    .count()
    .await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    pool.close().await;
    rate
}

async fn part5(rep: &mut Report) {
    println!(
        "\n[5] {} PostgreSQL role leases (pg plugin, pool_size {CLIENTS}, default lease settings) expiring together vs the same number of roles \
         dropped straight on the server over {CLIENTS} connections (a throwaway server with fsync=off, for both)",
        thousands(PG_LEASES as f64)
    );
    let pg = TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    pg.psql("postgres", "CREATE DATABASE app").expect("create db");
    pg.psql("app", "CREATE TABLE orders (id int); CREATE ROLE orders_reader; GRANT SELECT ON orders TO orders_reader")
        .expect("create table");
    let s = Setup::new();
    std::fs::write(s.dir.join("pg.dsn"), pg.dsn("postgres", pg.superuser_password(), "app")).expect("dsn");
    let (running, url) = s.start("", true).await;
    let http = reqwest::Client::new();
    let r = issue_load(&http, &url, "pg/readonly", s.jwts("pg", PG_LEASES)).await;
    println!("    issued {} PostgreSQL roles at {:.0}/s (p50 {:.1} ms)", thousands(PG_LEASES as f64), r.rate, r.p50_ms);
    let e = expire_together(&running.store, "pg/readonly", PG_LEASES).await;
    print_expiry("lessor, default lease settings", &e);
    let left = pg.psql("app", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lessor\\_%'").expect("count roles");
    assert_eq!(left, "0", "every lease's role is gone from PostgreSQL");
    running.shutdown().await;

    // Each raw run lasts well under a second: median of ROUNDS, alternating.
    let (mut fulls, mut drops) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        fulls.push(raw_drop(&pg, PG_LEASES, true, round).await);
        drops.push(raw_drop(&pg, PG_LEASES, false, round).await);
    }
    println!("    raw runs (roles/s): plugin's statements {fulls:.0?}, DROP ROLE alone {drops:.0?}");
    let (full, drop_only) = (pct(&mut fulls, 0.5), pct(&mut drops, 0.5));
    println!(
        "    raw, the plugin's statements in 3 round trips (NOLOGIN; terminate sessions; REASSIGN OWNED + DROP OWNED + DROP ROLE): {full:.0} roles/s \
         (the plugin sends one statement per round trip, 13 per role with its whoami / find-roles / role-gone checks)"
    );
    println!("    raw, DROP ROLE alone: {drop_only:.0} roles/s");
    rep.row("5. pg revocation lag p50 / p99 (2,000 together)", format!("{:.0} / {:.0} ms", e.p50_ms, e.p99_ms), "OpenBao: ~22 s past expiry for 2,100", None);
    rep.row("5. pg revocations/s, lessor", format!("{}/s", thousands(e.rate)), "OpenBao ~67/s", Some(e.rate > 67.0));
    rep.row("5. pg raw over 8 connections, plugin's statements / DROP ROLE alone (median of 3)", format!("{} / {}/s", thousands(full), thousands(drop_only)), "", None);
    rep.row("5. ratio lessor / raw (plugin's statements; DROP ROLE alone)", format!("{:.2}; {:.2}", e.rate / full, e.rate / drop_only), "", None);
}

// ---------------------------------------------------------------- part 6

/// The Vault-compatible API next to the native one: the same roles, the
/// same CLIENTS clients, rounds interleaved so both see the same machine.
/// (a) one identity per client, reused: a JWT on every native request, a
/// client token (from one login) on every Vault request; (b) a new
/// identity per credential: a fresh JWT per native request, a login then a
/// read per Vault credential.
async fn part6(rep: &mut Report) {
    println!("\n[6] Vault-compatible API vs native API: {CLIENTS} concurrent clients, median of {ROUNDS} interleaved rounds of {} credentials", thousands(ISSUES as f64));
    let s = Setup::new();
    let text = s.config("", false).replace("[quotas]\n", "[quotas]\nmax_active_per_owner = 0\nissues_per_minute_per_owner = 0\n")
        + "\n[vault_api]\n[vault_api.auth.jwt]\n[vault_api.mounts.pki]\nconnection = \"pki\"\n[vault_api.mounts.token]\nconnection = \"token\"\n";
    let (running, url) = s.start_text(&text).await;
    let http = reqwest::Client::new();
    let login = |jwt: String| http.put(format!("{url}/v1/auth/jwt/login")).json(&serde_json::json!({"role": "bench", "jwt": jwt})).build().expect("login");
    let mut tokens = Vec::new();
    for jwt in s.jwts("vault-clients", CLIENTS) {
        let r = http.execute(login(jwt)).await.expect("login");
        let v: serde_json::Value = r.json().await.expect("login body");
        tokens.push(v["auth"]["client_token"].as_str().expect("client token").to_owned());
    }
    let native_jwts = s.jwts("native-clients", CLIENTS);
    for (role, vault_path, method) in [("token/orders", "token/creds/orders", reqwest::Method::GET), ("pki/web", "pki/issue/web", reqwest::Method::PUT)] {
        let native = |jwts: &[String], n: usize| -> Vec<reqwest::Request> {
            (0..n)
                .map(|i| {
                    http.post(format!("{url}/v1/leases"))
                        .bearer_auth(&jwts[i % jwts.len()])
                        .json(&serde_json::json!({"role": role, "ttl": "10m"}))
                        .build()
                        .expect("request")
                })
                .collect()
        };
        let vault = |n: usize| -> Vec<reqwest::Request> {
            (0..n)
                .map(|i| {
                    http.request(method.clone(), format!("{url}/v1/{vault_path}"))
                        .header("X-Vault-Token", &tokens[i % tokens.len()])
                        .json(&serde_json::json!({"ttl": "10m"}))
                        .build()
                        .expect("request")
                })
                .collect()
        };
        load(&http, native(&native_jwts, 400), 201).await;
        load(&http, vault(400), 200).await;
        let (mut n_runs, mut v_runs) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let n = load(&http, native(&native_jwts, ISSUES), 201).await;
            let v = load(&http, vault(ISSUES), 200).await;
            println!(
                "    {role} round {round}: native {:.0}/s ({:.0} us CPU, p99 {:.2} ms), vault {:.0}/s ({:.0} us CPU, p99 {:.2} ms); load average {}",
                n.rate, n.cpu_us, n.p99_ms, v.rate, v.cpu_us, v.p99_ms, loadavg()
            );
            n_runs.push(n);
            v_runs.push(v);
        }
        let med = |runs: &mut Vec<Run>, f: fn(&Run) -> f64| {
            let mut xs: Vec<f64> = runs.iter().map(f).collect();
            pct(&mut xs, 0.5)
        };
        let (n_cpu, v_cpu) = (med(&mut n_runs, |r| r.cpu_us), med(&mut v_runs, |r| r.cpu_us));
        let (n_rate, v_rate) = (med(&mut n_runs, |r| r.rate), med(&mut v_runs, |r| r.rate));
        rep.row(
            &format!("6a. {role}, identity reused: CPU per credential vault / native (ratio)"),
            format!("{v_cpu:.0} / {n_cpu:.0} us ({:.2})", v_cpu / n_cpu),
            "target ratio <= 1.10",
            Some(v_cpu / n_cpu <= 1.10),
        );
        rep.row(
            &format!("6a. {role}, identity reused: rate vault / native (ratio)"),
            format!("{}/s / {}/s ({:.2})", thousands(v_rate), thousands(n_rate), v_rate / n_rate),
            "target ratio >= 0.90",
            Some(v_rate / n_rate >= 0.90),
        );

        // (b) A new identity per credential: login + read against one
        // fresh-JWT request.
        let (mut n_b, mut v_b) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let jwts = s.jwts(&format!("fresh-n-{}-{round}", role.replace('/', "-")), ISSUES);
            n_b.push(load(&http, native(&jwts, ISSUES), 201).await.cpu_us);
            let jwts = s.jwts(&format!("fresh-v-{}-{round}", role.replace('/', "-")), ISSUES);
            let logins = load(&http, jwts.into_iter().map(login).collect(), 200).await;
            let reads = load(&http, vault(ISSUES), 200).await;
            v_b.push(logins.cpu_us + reads.cpu_us);
        }
        let (n_b, v_b) = (pct(&mut n_b, 0.5), pct(&mut v_b, 0.5));
        rep.row(
            &format!("6b. {role}, new identity per credential: CPU vault (login + read) / native (ratio)"),
            format!("{v_b:.0} / {n_b:.0} us ({:.2})", v_b / n_b),
            "context: two requests against one",
            None,
        );
    }
    running.shutdown().await;
}

#[tokio::main]
async fn main() {
    let parts = std::env::var("LESSOR_BENCH_PARTS").unwrap_or_else(|_| "1,2,3,4,5,6".into());
    let has = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let n: usize = std::env::var("LESSOR_BENCH_LEASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut rep = Report { rows: Vec::new() };
    let t = Instant::now();
    println!(
        "lessor lease engine at scale ({} CPUs; load generator and daemon on the same machine; load average {} at start)",
        cpus(),
        loadavg()
    );
    if has("1") {
        part1(&mut rep).await;
    }
    if has("2") || has("3") {
        parts23(&mut rep, n).await;
    }
    if has("4") {
        part4(&mut rep).await;
    }
    if has("5") {
        part5(&mut rep).await;
    }
    if has("6") {
        part6(&mut rep).await;
    }
    rep.print();
    println!("  (total {:.0} s; load average {} at the end)", t.elapsed().as_secs_f64(), loadavg());
}
