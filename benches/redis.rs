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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read policies") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            copy_dir(&p, &to.join(p.file_name().expect("name")));
        } else {
            std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p) as usize]
}

async fn admin(r: &TempRedis, password: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://default:{password}@127.0.0.1:{}", r.port())).expect("client");
    client.get_multiplexed_async_connection().await.expect("connect")
}

/// The raw baseline: `CLIENTS` clients, each with its own connection to each
/// node; per user the same commands lessor sends. Returns (issues/s,
/// revocations/s).
async fn raw(nodes: &[&TempRedis], password: &str, round: usize) -> (f64, f64) {
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
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for per in conns {
            let next = next.clone();
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
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
                }
            });
        }
        while set.join_next().await.is_some() {}
        rates.push(N as f64 / start.elapsed().as_secs_f64());
    }
    (rates[0], rates[1])
}

/// Issues one lease per JWT through lessor; returns (rate, p50 ms, p99 ms,
/// lease ids).
async fn lessor_issue(url: &str, jwts: Vec<String>) -> (f64, f64, f64, Vec<String>) {
    let http = reqwest::Client::new();
    let jwts = Arc::new(std::sync::Mutex::new(jwts));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, url, jwts) = (http.clone(), url.to_owned(), jwts.clone());
        set.spawn(async move {
            let (mut lat, mut ids) = (Vec::new(), Vec::new());
            loop {
                let Some(jwt) = jwts.lock().expect("lock").pop() else { break };
                let t = Instant::now();
                let r = http
                    .post(format!("{url}/v1/leases"))
                    .bearer_auth(jwt)
                    .json(&serde_json::json!({"role": "cache/app", "ttl": "10m"}))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status().as_u16(), 201);
                let v: serde_json::Value = r.json().await.expect("json");
                ids.push(v["lease_id"].as_str().expect("lease_id").to_owned());
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, ids)
        });
    }
    let (mut lat, mut ids) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        let (l, i) = r.expect("client");
        lat.extend(l);
        ids.extend(i);
    }
    let rate = ids.len() as f64 / start.elapsed().as_secs_f64();
    (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99), ids)
}

/// Revokes every lease through lessor (admin token); returns revocations/s.
async fn lessor_revoke(url: &str, admin: &str, ids: Vec<String>) -> f64 {
    let http = reqwest::Client::new();
    let n = ids.len();
    let ids = Arc::new(std::sync::Mutex::new(ids));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, url, ids, admin) = (http.clone(), url.to_owned(), ids.clone(), admin.to_owned());
        set.spawn(async move {
            loop {
                let Some(id) = ids.lock().expect("lock").pop() else { break };
                let r = http.delete(format!("{url}/v1/leases/{id}")).bearer_auth(&admin).send().await.expect("request");
                assert_eq!(r.status().as_u16(), 200);
            }
        });
    }
    while set.join_next().await.is_some() {}
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let a = TempRedis::start().unwrap_or_else(|e| panic!("{e}"));
    let password = a.admin_password().to_owned();
    let b = TempRedis::start_with_password(&password).unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(
        dir.join("policies/bench.cedar"),
        "@id(\"bench\")\npermit(principal, action == Lessor::Action::\"issue\", resource is Lessor::Role);\n",
    )
    .expect("policy");
    let dev = DevIssuer::load_or_create(dir).expect("dev issuer");
    std::fs::write(dir.join("redis.password"), &password).expect("password");
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
    let (_, _, _, ids) = lessor_issue(&url, mint("warm", CLIENTS * 4)).await;
    lessor_revoke(&url, &admin_token, ids).await;

    let nodes = [&a, &b];
    let (mut raw_i, mut raw_r, mut rates, mut p50s, mut p99s, mut revs) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (i, r) = raw(&nodes, &password, round).await;
        raw_i.push(i);
        raw_r.push(r);
        let (rate, p50, p99, ids) = lessor_issue(&url, mint(&format!("svc{round}-"), N)).await;
        rates.push(rate);
        p50s.push(p50);
        p99s.push(p99);
        revs.push(lessor_revoke(&url, &admin_token, ids).await);
    }
    let med = |v: &mut Vec<f64>| pct(v, 0.5);
    let (ri, rr, li, p50, p99, lr) = (med(&mut raw_i), med(&mut raw_r), med(&mut rates), med(&mut p50s), med(&mut p99s), med(&mut revs));
    println!(
        "Redis ACL users on 2 nodes, {CLIENTS} concurrent clients, {N} users per run, median of {ROUNDS} runs, {} CPU(s)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("  raw issue (SETUSER + ACL SAVE per node):          {ri:8.0} users/s");
    println!("  lessor issue over HTTP (JWT, policy, lease, user): {li:8.0} users/s  (p50 {p50:.1} ms, p99 {p99:.1} ms)");
    println!("  ratio lessor / raw issue: {:.2}", li / ri);
    println!("  raw revoke (DELUSER + CLIENT KILL + ACL SAVE):     {rr:8.0} users/s");
    println!("  lessor revoke over HTTP (DELETE /v1/leases/id):    {lr:8.0} users/s");
    println!("  ratio lessor / raw revoke: {:.2}", lr / rr);
    running.shutdown().await;
}
