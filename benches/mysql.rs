//! MySQL/MariaDB user issuance and revocation: lessor over HTTP vs the same
//! statements sent straight to the server, at the same concurrency, on a
//! throwaway MariaDB and then a throwaway MySQL 8 (`cargo bench --bench
//! mysql`; `LESSOR_BENCH_SERVERS=mariadb` or `=mysql8` for one). Not a
//! test: it reports numbers and their ratio. `LESSOR_BENCH_AUDIT=off` runs
//! lessor with its audit log off (`[audit] sink = "off"`), to measure what
//! the log costs; the summary line then says so, and such figures are not
//! lessor's defaults.
//!
//! lessor's path per issue: a fresh workload JWT verified, policy decided,
//! the lease written pending then active (SQLite, durable), and on one
//! pooled admin connection `CREATE USER ... IDENTIFIED BY PASSWORD
//! '*<hash>'` on MariaDB (the password's `mysql_native_password` hash, made
//! client-side; MySQL 8 gets `IDENTIFIED WITH caching_sha2_password AS
//! '$A$005$...'`, its 5,000-round SHA-256 string, also made client-side), `GRANT
//! orders_reader`, `SET DEFAULT ROLE`, the three in one round trip. Per
//! revocation: `DELETE /v1/leases/{id}`, the lease written, and the session
//! read, `ALTER USER ... ACCOUNT LOCK` of the handle's account, its
//! sessions ended (MariaDB: `KILL CONNECTION USER`; MySQL: listed from
//! `information_schema.PROCESSLIST` and killed), `DROP USER IF EXISTS`, its
//! sessions ended again (on MariaDB the four in one round trip).
//!
//! The raw baselines use one connection per client: issue sends the same
//! three account statements in one round trip (hash made by the client per
//! user); revoke either only `DROP USER` or the same lock / sessions / drop
//! / sessions sequence lessor sends (the same way).
//!
//! CPU per operation is read from `/proc` for this process (the daemon
//! runs in it, with the HTTP clients) and for the server (`mariadbd`,
//! `mysqld`).
//!
//! Two layouts, each reported on its own: every process on every CPU, then
//! this process on half of the CPUs and the server on the other half (as
//! when the database runs on hosts of its own; see `benches/redis.rs`).

#[path = "support/mod.rs"]
mod support;
use support::{copy_dir, layout_tag, layouts, lessor_issue, lessor_revoke, loadavg, median_run, print_run, print_stages, scramble, stages, Layout, Meter, Run};

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor::config::Config;
use lessor::identity::dev::{jwks_path, DevIssuer, DEV_AUDIENCE, DEV_ISSUER};
use lessor_mysql::testkit::{Server, TempMysql};
use rand::seq::SliceRandom;
use secrecy::{ExposeSecret, SecretString};
use sqlx::mysql::MySqlPoolOptions;

const CLIENTS: usize = 8;
const N: usize = 1000;
const ROUNDS: usize = 3;

/// The `i`th raw user name of `round`: lessor's shape and, like lessor's
/// (whose end is the random lease id), in no particular order. The order
/// matters on MariaDB: every `CREATE USER` re-sorts its in-memory account
/// list, which is cheapest when each new name sorts after every other
/// (measured, `perf` of mariadbd: 2 to 4 us per account in `my_qsort` with
/// names made in sorted order, 40 to 50 us with names in random order, at
/// up to 1,000 accounts), so names numbered in order would flatter the
/// baseline.
fn raw_name(server: Server, round: usize, i: usize) -> String {
    let h = scramble(round, i);
    match server {
        // As long as lessor's (`lessor_<role>_<repository>_<32 hex>`).
        Server::MariaDb => format!("rawbch_app_svc{}_{h:032x}", h % 1000),
        // As long as lessor's (`lessor_<22 base-62 digits>`).
        Server::Mysql8 => format!("rawbch_{:022}", h % 10u128.pow(22)),
    }
}

/// The servers to run on: `LESSOR_BENCH_SERVERS` (`mariadb`, `mysql8`,
/// comma-separated), both by default.
fn servers() -> Vec<Server> {
    let want = std::env::var("LESSOR_BENCH_SERVERS").unwrap_or_else(|_| "mariadb,mysql8".into());
    want.split(',')
        .map(|s| match s.trim() {
            "mariadb" => Server::MariaDb,
            "mysql8" => Server::Mysql8,
            other => panic!("LESSOR_BENCH_SERVERS: unknown server `{other}` (mariadb, mysql8)"),
        })
        .collect()
}

/// Whether `LESSOR_BENCH_AUDIT=off` asks for lessor without its audit log.
fn audit_off() -> bool {
    match std::env::var("LESSOR_BENCH_AUDIT").as_deref() {
        Ok("off") => true,
        Ok("on") | Err(_) => false,
        Ok(other) => panic!("LESSOR_BENCH_AUDIT: `{other}` (on, off)"),
    }
}

fn daemon_name(server: Server) -> &'static str {
    match server {
        Server::MariaDb => "mariadbd",
        Server::Mysql8 => "mysqld",
    }
}

/// The raw baseline, `CLIENTS` clients with one connection each: creates
/// `N` users (issue), then drops them (`full`: lock, sessions, drop,
/// sessions, as lessor does; else `DROP USER` alone). Returns (issue,
/// revoke).
async fn raw(db: &TempMysql, pid: &str, round: usize, full: bool) -> (Run, Run) {
    let server = db.server();
    let pool = MySqlPoolOptions::new()
        .min_connections(CLIENTS as u32)
        .max_connections(CLIENTS as u32)
        .connect(&db.admin_dsn())
        .await
        .expect("connect");
    let mut runs = Vec::new();
    for deleting in [false, true] {
        let next = Arc::new(AtomicUsize::new(0));
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            conns.push(pool.acquire().await.expect("acquire"));
        }
        let meter = Meter::start(&[pid]);
        let mut set = tokio::task::JoinSet::new();
        for mut conn in conns {
            let next = next.clone();
            set.spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
                    let t = Instant::now();
                    let name = raw_name(server, round, i);
                    let acct = format!("'{name}'@'%'");
                    let stmts = if !deleting {
                        let pw = SecretString::from(hex::encode(rand::random::<[u8; 32]>()));
                        match server {
                            Server::MariaDb => vec![
                                format!("CREATE USER {acct} IDENTIFIED BY PASSWORD '{}'", lessor_mysql::naming::native_hash(&pw).expose_secret()),
                                format!("GRANT `orders_reader` TO {acct}"),
                                format!("SET DEFAULT ROLE `orders_reader` FOR {acct}"),
                            ],
                            Server::Mysql8 => vec![
                                format!(
                                    "CREATE USER {acct} IDENTIFIED WITH caching_sha2_password AS '{}'",
                                    // Made client-side, off the async workers, as lessor does.
                                    tokio::task::spawn_blocking(move || lessor_mysql::sha2_auth::auth_string(&pw))
                                        .await
                                        .expect("hash")
                                        .expect("auth string")
                                        .expose_secret()
                                ),
                                format!("GRANT `orders_reader` TO {acct}"),
                                format!("SET DEFAULT ROLE ALL TO {acct}"),
                            ],
                        }
                    } else if full {
                        // The sessions: one statement on MariaDB, a listing
                        // (empty string) on MySQL, as lessor does.
                        let sessions = match server {
                            Server::MariaDb => format!("KILL CONNECTION USER '{name}'"),
                            Server::Mysql8 => String::new(),
                        };
                        vec![format!("ALTER USER {acct} ACCOUNT LOCK"), sessions.clone(), format!("DROP USER IF EXISTS {acct}"), sessions]
                    } else {
                        vec![format!("DROP USER {acct}")]
                    };
                    if !deleting || (full && server == Server::MariaDb) {
                        // In one round trip, as lessor sends them.
                        sqlx::Executor::execute(&mut *conn, stmts.join(";\n").as_str()).await.expect("statements");
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        continue;
                    }
                    for sql in &stmts {
                        if sql.is_empty() {
                            // The sessions of the user (none here, as in lessor's run).
                            let ids: Vec<u64> = sqlx::query_scalar(
                                "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()",
                            )
                            .bind(&name)
                            .fetch_all(&mut *conn)
                            .await
                            .expect("sessions");
                            assert!(ids.is_empty());
                        } else {
                            sqlx::Executor::execute(&mut *conn, sql.as_str()).await.expect("statement");
                        }
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            });
        }
        let mut lat = Vec::new();
        while let Some(r) = set.join_next().await {
            lat.extend(r.expect("client"));
        }
        runs.push(meter.stop(N, lat));
    }
    pool.close().await;
    (runs[0], runs[1])
}

fn median(runs: &[Run]) -> Run {
    median_run(runs)
}

fn main() {
    // Settings checked before any server starts.
    let servers = servers();
    audit_off();
    for server in servers {
        let db = TempMysql::start(server).unwrap_or_else(|e| panic!("{e}"));
        db.sql_as("admin", db.admin_password(), "CREATE ROLE orders_reader; GRANT SELECT ON app.orders TO orders_reader")
            .expect("server role");
        let pid = std::fs::read_to_string(db.dir().join("pid")).expect("server pid file").trim().to_owned();
        let pids = [pid.clone()];
        for (k, layout) in layouts().into_iter().enumerate() {
            // Pinned before lessor's runtime starts: its workers (one per CPU
            // it may use, as in a container of that size) and every thread
            // lessor starts keep to the layout's CPUs.
            layout.apply(&pids);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(run(layout, 10 * k, &db, &pid));
        }
        Layout::Shared.apply(&pids);
    }
}

/// A fresh lessor in front of the server, and the rounds of one layout
/// (raw users numbered from `first`).
async fn run(layout: Layout, first: usize, db: &TempMysql, pid: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(
        dir.join("policies/bench.cedar"),
        "@id(\"bench\")\npermit(principal, action == Lessor::Action::\"issue\", resource is Lessor::Role);\n",
    )
    .expect("policy");
    let dev = DevIssuer::load_or_create(dir).expect("dev issuer");
    std::fs::write(dir.join("my.dsn"), db.admin_dsn()).expect("dsn");
    let cfg = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
data_dir = "{dir}"
policies = "{dir}/policies"
{audit}
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0
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

[connections.my]
plugin = "mysql"
[connections.my.config]
dsn_file = "{dir}/my.dsn"
pool_size = {CLIENTS}
[connections.my.roles.app]
max_ttl = "1h"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
[connections.my.roles.app.config]
database = "app"
[connections.my.roles.app.config.roles]
"orders.read" = ["orders_reader"]
"#,
        db = dir.join("lessor.db").display(),
        dir = dir.display(),
        jwks = jwks_path(dir).display(),
        audit = if audit_off() { "[audit]\nsink = \"off\"" } else { "" },
    );
    let cfg = Config::from_toml(&cfg).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = lessor::server::start(cfg, listener).await.expect("start");
    let url = format!("http://{}", running.addr);
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).expect("admin token").trim().to_owned();
    // Fresh workload JWTs, minted before each timed run (the issuer signs
    // them, not lessor), in random order: the user name starts with the
    // workload's repository (see `raw_name` on why order matters).
    let mint = |tag: &str, n: usize| -> Vec<String> {
        let mut jwts: Vec<String> = (0..n)
            .map(|i| {
                let claims = DevIssuer::github_claims(&format!("acme/{tag}{i}"), "refs/heads/main", None);
                dev.mint(claims, Duration::from_secs(600)).expect("mint").expose_secret().to_owned()
            })
            .collect();
        jwts.shuffle(&mut rand::rng());
        jwts
    };
    // Warm-up: connections, JWKS, caches.
    let (_, ids) = lessor_issue(&url, &[pid], CLIENTS, "my/app", mint("warm", CLIENTS * 4)).await;
    lessor_revoke(&url, &[pid], CLIENTS, &admin_token, ids).await;

    let stages0 = stages("mysql");
    // Three rounds, alternating raw and lessor, reporting medians (raw issue
    // runs twice a round): runs on a shared 2-core machine vary by several
    // percent.
    let (mut raw_i, mut drop_only, mut raw_full, mut issues, mut revokes, mut tokens) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let load_start = loadavg();
    for round in 0..ROUNDS {
        let n = first + 2 * round;
        let (i, d) = raw(db, pid, n, false).await;
        raw_i.push(i);
        drop_only.push(d);
        let (i, f) = raw(db, pid, n + 1, true).await;
        raw_i.push(i);
        raw_full.push(f);
        let tag = format!("{}{round}", layout_tag(layout));
        let (issue, ids) = lessor_issue(&url, &[pid], CLIENTS, "my/app", mint(&format!("svc{tag}-"), N)).await;
        issues.push(issue);
        revokes.push(lessor_revoke(&url, &[pid], CLIENTS, &admin_token, ids).await);
        // The same path with a vendor that costs nothing (a lessor-signed
        // token): lessor's own share.
        tokens.push(lessor_issue(&url, &[pid], CLIENTS, "token/plain", mint(&format!("tok{tag}-"), N)).await.0);
        println!("  (round {}: load average {})", round + 1, loadavg());
    }
    let (ri, rd, rf, li, lr, lt) =
        (median(&raw_i), median(&drop_only), median(&raw_full), median(&issues), median(&revokes), median(&tokens));
    let left = db.users_with_prefix("lessor_").expect("users");
    assert!(left.is_empty(), "users left after revocation: {}", left.len());
    let server = db.server();
    let line = |what: &str, r: &Run| print_run(what, r, daemon_name(server));
    println!(
        "{} users, {CLIENTS} concurrent clients, {N} users per run, median of {ROUNDS} runs, {}{}; load average {load_start} at the start, {} at the end",
        server.label(),
        layout.describe(),
        if audit_off() { ", lessor's audit log OFF" } else { "" },
        loadavg()
    );
    line("raw issue (CREATE USER + GRANT + SET DEFAULT ROLE)", &ri);
    line("lessor issue over HTTP (JWT, policy, lease, user)", &li);
    println!("  ratio lessor / raw issue: {:.2}", li.rate / ri.rate);
    print_stages(&stages0, &stages("mysql"));
    line("raw revoke, DROP USER alone", &rd);
    line("raw revoke, lock + sessions + drop + sessions", &rf);
    line("lessor revoke over HTTP (DELETE /v1/leases/id)", &lr);
    println!("  ratio lessor / raw revoke: {:.2} (DROP USER alone), {:.2} (same sequence)", lr.rate / rd.rate, lr.rate / rf.rate);
    line("lessor alone, token role (no vendor call)", &lt);
    running.shutdown().await;
}
