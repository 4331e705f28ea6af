//! Redis ACL user issuance and revocation: lessor over HTTP vs the same
//! commands sent straight to the servers, at the same concurrency, on two
//! nodes (`cargo bench --bench redis`). Not a test: it reports numbers and
//! their ratio.
//!
//! lessor's path per issue: a fresh workload JWT verified, policy decided,
//! the lease written pending then active (SQLite, durable), and on both
//! nodes at once `ACL SETUSER <name> reset on #<sha256> ~cache:* +@read`
//! then `ACL SAVE` (the nodes keep an ACL file; concurrent saves on a node
//! are coalesced). Per revocation: `DELETE /v1/leases/{id}`, the lease
//! written, and on both nodes `ACL DELUSER`, `CLIENT KILL USER`, `ACL SAVE`.
//! The raw path sends the same commands (one `ACL SAVE` per change, as a
//! naive client would), one connection per client and node.
//!
//! Two layouts, each reported on its own: every process on every CPU (lessor
//! and Redis compete for the same cores, as on one small machine), then this
//! process (lessor and the HTTP clients, or the raw clients) on half of the
//! CPUs and the Redis servers on the other half, as when the vendor runs on
//! hosts of its own: there the ratio says what putting lessor in front of
//! the vendor costs in throughput when each has its own CPU.

#[path = "support/mod.rs"]
mod support;
use support::{copy_dir, layout_tag, layouts, lessor_issue, lessor_revoke, loadavg, median_run, print_run, print_stages, stages, Layout, Meter, Run};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor::config::Config;
use lessor::identity::dev::{jwks_path, DevIssuer, DEV_AUDIENCE, DEV_ISSUER};
use lessor_redis::testkit::TempRedis;
use secrecy::ExposeSecret;

const CLIENTS: usize = 8;
const N: usize = 800;
const ROUNDS: usize = 3;

fn median(runs: &[Run]) -> Run {
    median_run(runs)
}

fn line(what: &str, r: &Run) {
    print_run(what, r, "redis-servers");
}

/// The server's process id (`INFO server`).
async fn server_pid(r: &TempRedis, password: &str) -> String {
    let mut c = admin(r, password).await;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await.expect("info");
    info.lines().find_map(|l| l.strip_prefix("process_id:")).expect("process_id").trim().to_owned()
}

async fn admin(r: &TempRedis, password: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://default:{password}@127.0.0.1:{}", r.port())).expect("client");
    // The plugin's default `timeout` (5 s), not the crate's shorter one: an
    // `ACL SAVE` (a file write and fsync) on a busy disk outlasted that and
    // ended a run in the raw clients, where lessor's would have waited.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client.get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

/// The raw baseline: `CLIENTS` clients, each with its own connection to each
/// node; per user the same commands lessor sends. Returns (issue, revoke).
async fn raw(nodes: &[&TempRedis], pids: &[String], password: &str, round: &str) -> (Run, Run) {
    let mut rates = Vec::new();
    for deleting in [false, true] {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            let mut per = Vec::new();
            for r in nodes {
                per.push(admin(r, password).await);
            }
            conns.push(per);
        }
        let meter = Meter::start(pids);
        let mut set = tokio::task::JoinSet::new();
        for per in conns {
            let (next, round) = (next.clone(), round.to_owned());
            set.spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
                    let t = Instant::now();
                    let name = format!("raw_bench_{round}_{i:032x}");
                    let pw = hex::encode(rand::random::<[u8; 32]>());
                    let hash = format!("#{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pw.as_bytes())));
                    let mut all = Vec::new();
                    for c in &per {
                        let (mut c, name, hash) = (c.clone(), name.clone(), hash.clone());
                        all.push(async move {
                            if deleting {
                                let _: redis::Value = redis::cmd("ACL").arg("DELUSER").arg(&name).query_async(&mut c).await.expect("deluser");
                                let _: redis::RedisResult<redis::Value> = redis::cmd("CLIENT").arg("KILL").arg("USER").arg(&name).query_async(&mut c).await;
                            } else {
                                let _: () = redis::cmd("ACL")
                                    .arg(&["SETUSER", &name, "reset", "on", &hash, "~cache:*", "+@read"][..])
                                    .query_async(&mut c)
                                    .await
                                    .expect("setuser");
                            }
                            let _: () = redis::cmd("ACL").arg("SAVE").query_async(&mut c).await.expect("save");
                        });
                    }
                    futures::future::join_all(all).await;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            });
        }
        let mut lat = Vec::new();
        while let Some(r) = set.join_next().await {
            lat.extend(r.expect("client"));
        }
        rates.push(meter.stop(N, lat));
    }
    (rates[0], rates[1])
}

fn main() {
    let a = TempRedis::start().unwrap_or_else(|e| panic!("{e}"));
    let password = a.admin_password().to_owned();
    let b = TempRedis::start_with_password(&password).unwrap_or_else(|e| panic!("{e}"));
    let pids = runtime().block_on(async { vec![server_pid(&a, &password).await, server_pid(&b, &password).await] });
    for layout in layouts() {
        // Pinned before lessor's runtime starts: its workers (one per CPU it
        // may use, as in a container of that size) and every thread lessor
        // starts keep to the layout's CPUs.
        layout.apply(&pids);
        runtime().block_on(run(layout, &a, &b, &password, &pids));
    }
    Layout::Shared.apply(&pids);
}

/// A runtime with one worker per CPU this process may use now.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

/// A fresh lessor in front of the two nodes, and the rounds of one layout.
async fn run(layout: Layout, a: &TempRedis, b: &TempRedis, password: &str, pids: &[String]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(
        dir.join("policies/bench.cedar"),
        "@id(\"bench\")\npermit(principal, action == Lessor::Action::\"issue\", resource is Lessor::Role);\n",
    )
    .expect("policy");
    let dev = DevIssuer::load_or_create(dir).expect("dev issuer");
    std::fs::write(dir.join("redis.password"), password).expect("password");
    let cfg = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
data_dir = "{dir}"
policies = "{dir}/policies"
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0
[issuers.dev]
issuer = "{DEV_ISSUER}"
jwks_file = "{jwks}"
audiences = ["{DEV_AUDIENCE}"]
algorithms = ["ES256"]
preset = "github-actions"
[scopes."cache.read"]
allows = "Read keys under cache:."
[connections.token]
plugin = "token"
[connections.token.roles.plain]
max_ttl = "1h"

[connections.cache]
plugin = "redis"
[connections.cache.config]
nodes = ["{a}", "{b}"]
password_file = "{dir}/redis.password"
[connections.cache.roles.app]
max_ttl = "1h"
scopes = ["cache.read"]
default_scopes = ["cache.read"]
[connections.cache.roles.app.config.scopes]
"cache.read" = "~cache:* +@read"
"#,
        db = dir.join("lessor.db").display(),
        dir = dir.display(),
        jwks = jwks_path(dir).display(),
        a = a.url(),
        b = b.url(),
    );
    let cfg = Config::from_toml(&cfg).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = lessor::server::start(cfg, listener).await.expect("start");
    let url = format!("http://{}", running.addr);
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).expect("admin token").trim().to_owned();
    let mint = |tag: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let claims = DevIssuer::github_claims(&format!("acme/{tag}{i}"), "refs/heads/main", None);
                dev.mint(claims, Duration::from_secs(600)).expect("mint").expose_secret().to_owned()
            })
            .collect()
    };
    // Warm-up: connections, JWKS, caches.
    let (_, ids) = lessor_issue(&url, pids, CLIENTS, "cache/app", mint("warm", CLIENTS * 4)).await;
    lessor_revoke(&url, pids, CLIENTS, &admin_token, ids).await;

    let stages0 = stages("redis");
    // Rounds alternate raw and lessor; medians are reported (runs on a
    // shared 2-core machine vary by several percent).
    let nodes = [a, b];
    let load_start = loadavg();
    let (mut raw_i, mut raw_r, mut issues, mut revokes, mut tokens) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let tag = format!("{}{round}", layout_tag(layout));
        let (i, r) = raw(&nodes, pids, password, &tag).await;
        raw_i.push(i);
        raw_r.push(r);
        let (issue, ids) = lessor_issue(&url, pids, CLIENTS, "cache/app", mint(&format!("svc{tag}-"), N)).await;
        issues.push(issue);
        revokes.push(lessor_revoke(&url, pids, CLIENTS, &admin_token, ids).await);
        // The same path with a vendor that costs nothing (a lessor-signed
        // token): lessor's own share.
        tokens.push(lessor_issue(&url, pids, CLIENTS, "token/plain", mint(&format!("tok{tag}-"), N)).await.0);
        println!("  (round {}: load average {})", round + 1, loadavg());
    }
    let (ri, rr, li, lr, lt) = (median(&raw_i), median(&raw_r), median(&issues), median(&revokes), median(&tokens));
    println!(
        "Redis ACL users on 2 nodes, {CLIENTS} concurrent clients, {N} users per run, median of {ROUNDS} runs, {}; load average {load_start} at the start, {} at the end",
        layout.describe(),
        loadavg()
    );
    line("raw issue (SETUSER + ACL SAVE per node)", &ri);
    line("lessor issue over HTTP (JWT, policy, lease, user)", &li);
    println!("  ratio lessor / raw issue: {:.2}", li.rate / ri.rate);
    print_stages(&stages0, &stages("redis"));
    line("raw revoke (DELUSER + CLIENT KILL + ACL SAVE)", &rr);
    line("lessor revoke over HTTP (DELETE /v1/leases/id)", &lr);
    println!("  ratio lessor / raw revoke: {:.2}", lr.rate / rr.rate);
    line("lessor alone, token role (no vendor call)", &lt);
    running.shutdown().await;
}
