//! One dead vendor delays nobody else: with PostgreSQL stopped and 300 of
//! its leases falling due, token leases expiring beside them end on time and
//! a bulk revocation job keeps moving for the token connection; once
//! PostgreSQL is back, its leases are all revoked (roles gone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lessor::config::{LeaseSettings, RoleConfig};
use lessor::lease::{expiry, LeaseService};
use lessor::plugins::{Catalog, Role};
use lessor::policy::{PolicyEngine, RoleInfo};
use lessor::store::{Lease, LeaseState, Store};
use lessor_plugin::{Capabilities, Revocation, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginError, RenewRequest, Validation};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::postgres::{pg_daemon, start_pg};
use crate::support::{Daemon, Issuer};

const PG_LEASES: usize = 300;
const TOKEN_LEASES: usize = 25;
const JOB_LEASES: usize = 20;

fn at(v: &Value, field: &str) -> OffsetDateTime {
    let s = v[field].as_str().unwrap_or_else(|| panic!("no `{field}` in {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

async fn lease(d: &Daemon, id: &str) -> Value {
    let (s, v) = d.get(&format!("/v1/leases/{id}"), &d.admin).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Leases of `ids` that have ended (expired or revoked).
async fn ended(d: &Daemon, ids: &BTreeSet<String>) -> Vec<Value> {
    let mut out = Vec::new();
    for state in ["expired", "revoked"] {
        let (s, v) = d.get(&format!("/v1/admin/leases?state={state}&limit=10000"), &d.admin).await;
        assert_eq!(s, 200, "{v}");
        for l in v["leases"].as_array().unwrap() {
            if ids.contains(l["lease_id"].as_str().unwrap()) {
                out.push(l.clone());
            }
        }
    }
    out
}

async fn breaker_gauge(d: &Daemon) -> Option<String> {
    let text = String::from_utf8(d.bytes("/metrics").await).unwrap();
    text.lines()
        .find(|l| l.starts_with("lessor_connection_breaker_open{connection=\"pg\"}"))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_delays_no_other_connection() {
    let _heavy = crate::support::heavy().await;
    let iss = Issuer::start().await;
    let mut pg = start_pg();
    // The plugin's default connect_timeout (5s) stays: refused connections
    // must not wait for it.
    let leases = "breaker_base = \"1s\"\nbreaker_max = \"2s\"\nretry_max = \"2s\"\n";
    let (d, _aux) = pg_daemon(&iss, &pg, leases).await;
    let jwt = iss.token();

    // 300 PostgreSQL leases (issued with a long TTL: issuing them on a
    // loaded machine may take longer than any short one), and long-lived
    // token leases of another repository.
    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut pg_ids = BTreeSet::new();
    for chunk in 0..PG_LEASES / 20 {
        for _ in 0..20 {
            let (http, url, jwt) = (d.http.clone(), d.url.clone(), jwt.clone());
            set.spawn(async move {
                let r = http.post(format!("{url}/v1/leases")).bearer_auth(jwt)
                    .json(&json!({"role": "pg/app", "ttl": "10m"})).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            });
        }
        while let Some(r) = set.join_next().await {
            let (s, v) = r.unwrap();
            assert_eq!(s, 201, "chunk {chunk}: {v}");
            pg_ids.insert(v["lease_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(pg_ids.len(), PG_LEASES);
    eprintln!("issued {PG_LEASES} PostgreSQL leases in {:?}", started.elapsed());
    let web = iss.sign(&iss.gh_claims("acme/web", "refs/heads/main"));
    let mut job_ids = BTreeSet::new();
    for _ in 0..JOB_LEASES {
        let (s, v) = d.issue(&web, json!({"role": "token/orders", "ttl": "10m"})).await;
        assert_eq!(s, 201, "{v}");
        job_ids.insert(v["lease_id"].as_str().unwrap().to_owned());
    }

    pg.stop().unwrap();
    // Every PostgreSQL lease falls due at once (a bulk revocation: the
    // worker sees the same due work as for expiries)...
    let (s, pg_job) = d.post("/v1/admin/revoke", &d.admin, json!({"role": "pg/app"})).await;
    assert_eq!(s, 202, "{pg_job}");
    assert_eq!(pg_job["scheduled"], PG_LEASES);
    // ... and token leases expire two seconds later, behind that backlog.
    let mut token_ids = BTreeSet::new();
    for _ in 0..TOKEN_LEASES {
        let (s, v) = d.issue(&jwt, json!({"role": "token/orders", "ttl": "2s"})).await;
        assert_eq!(s, 201, "{v}");
        token_ids.insert(v["lease_id"].as_str().unwrap().to_owned());
    }
    // A bulk revocation of acme/web's token leases meanwhile.
    let (s, job) = d.post("/v1/admin/revoke", &d.admin, json!({"claims": {"repository": "acme/web"}})).await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["scheduled"], JOB_LEASES);
    let job_started = std::time::Instant::now();
    let status = job["status"].as_str().unwrap().to_owned();

    // The job finishes while PostgreSQL is down.
    let j = Daemon::eventually(Duration::from_secs(10), || async {
        let (_, j) = d.get(&status, &d.admin).await;
        (j["done"] == JOB_LEASES).then_some(j)
    })
    .await;
    assert!(j.is_some(), "the bulk job stalled behind PostgreSQL: {}", d.get(&status, &d.admin).await.1);
    let job_took = job_started.elapsed();

    // Every token lease ends, each within 1 s of its expiry.
    let done = Daemon::eventually(Duration::from_secs(30), || async {
        let e = ended(&d, &token_ids).await;
        (e.len() == TOKEN_LEASES).then_some(e)
    })
    .await
    .expect("token leases end while PostgreSQL is down");
    let mut lags: Vec<f64> =
        done.iter().map(|l| (at(l, "ended_at") - at(l, "expires_at")).as_seconds_f64()).collect();
    lags.sort_by(|a, b| a.total_cmp(b));
    let p99 = lags[(lags.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "token revocation lag with PostgreSQL down: p50 {:.3}s p99 {p99:.3}s max {:.3}s; bulk job of {JOB_LEASES} done in {job_took:?}",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert!(p99 < 1.0, "p99 revocation lag {p99:.3}s (all: {lags:?})");
    assert!(done.iter().all(|l| l["state"] == "expired"), "{done:?}");

    // PostgreSQL's leases wait visibly behind the open breaker.
    let failing = Daemon::eventually(Duration::from_secs(15), || async {
        let (_, v) = d.get("/v1/admin/leases?state=revoke_failed&limit=10000", &d.admin).await;
        let n = v["leases"].as_array().unwrap().iter().filter(|l| l["role"] == "pg/app").count();
        (n == PG_LEASES).then_some(n)
    })
    .await;
    assert!(failing.is_some(), "every PostgreSQL lease shows revoke_failed");
    let mut breaker_message = 0;
    for id in pg_ids.iter().take(50) {
        let l = lease(&d, id).await;
        let e = l["last_error"].as_str().unwrap_or("");
        assert!(!e.contains(pg.superuser_password()), "{e}");
        if e.starts_with("connection `pg` unreachable since ") {
            assert!(e.contains("cannot reach PostgreSQL"), "{e}");
            breaker_message += 1;
        }
    }
    assert!(breaker_message > 0, "no lease names the open breaker");
    let open = Daemon::eventually(Duration::from_secs(5), || async {
        (breaker_gauge(&d).await.as_deref() == Some("1")).then_some(())
    })
    .await;
    assert!(open.is_some(), "lessor_connection_breaker_open{{connection=\"pg\"}} is {:?}", breaker_gauge(&d).await);
    let (_, st) = d.get("/v1/admin/status", &d.admin).await;
    let b = &st["breakers"][0];
    assert_eq!(b["connection"], "pg", "{st}");
    assert!(b["last_error"].as_str().unwrap_or("").contains("cannot reach PostgreSQL"), "{st}");
    // `lessor status` (the real binary) names it too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["status", "--addr", &d.url])
        .env("LESSOR_ADMIN_TOKEN", &d.admin)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("OPEN CIRCUIT BREAKERS"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("pg since ")), "{text}");

    let pg_status = pg_job["status"].as_str().unwrap().to_owned();
    let (_, j) = d.get(&pg_status, &d.admin).await;
    assert_eq!((j["done"].as_i64(), j["total"].as_i64()), (Some(0), Some(PG_LEASES as i64)), "{j}");

    // PostgreSQL is back: the probe closes the breaker and every lease goes.
    pg.restart().unwrap();
    let gone = Daemon::eventually(Duration::from_secs(40), || async {
        (ended(&d, &pg_ids).await.len() == PG_LEASES).then_some(())
    })
    .await;
    assert!(gone.is_some(), "{} of {PG_LEASES} PostgreSQL leases ended after the restart", ended(&d, &pg_ids).await.len());
    let (_, j) = d.get(&pg_status, &d.admin).await;
    assert_eq!(j["state"], "done", "{j}");
    let out = pg.psql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lessor\\_%'").unwrap();
    assert_eq!(out.trim(), "0", "roles left at PostgreSQL");
    let (_, st) = d.get("/v1/admin/status", &d.admin).await;
    assert_eq!(st["breakers"], json!([]), "{st}");
}

/// A vendor whose revocations hang (`hang`) or succeed at once, counting calls.
struct Vendor {
    hang: bool,
    calls: AtomicUsize,
}

#[async_trait]
impl Plugin for Vendor {
    fn kind(&self) -> &str {
        "fake"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: false, revocation: Revocation::Immediate }
    }
    async fn validate(&self) -> Result<Validation, PluginError> {
        Ok(Validation { identity: "fake".into(), details: BTreeMap::new(), warnings: vec![] })
    }
    async fn issue(&self, _: IssueRequest) -> Result<Issued, PluginError> {
        Err(PluginError::Unsupported("issue".into()))
    }
    async fn renew(&self, _: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
    }
    async fn revoke(&self, _: &LeaseRef) -> Result<(), PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

fn role(connection: &str, plugin: Arc<Vendor>) -> (RoleInfo, Role) {
    let info = RoleInfo {
        name: format!("{connection}/r"),
        connection: connection.into(),
        plugin: "fake".into(),
        environment: "staging".into(),
        scopes: vec![],
        max_ttl_seconds: 3600,
    };
    let cfg: RoleConfig = toml::from_str("max_ttl = \"1h\"").unwrap();
    let role = Role {
        name: info.name.clone(),
        connection: connection.into(),
        short: "r".into(),
        kind: "fake".into(),
        plugin,
        cfg,
        info: info.clone(),
    };
    (info, role)
}

async fn active_lease(store: &Arc<dyn Store>, id: &str, role: &str, expires_at: OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let l = Lease {
        id: LeaseId::new(id),
        role: role.into(),
        plugin: "fake".into(),
        issuer: "i".into(),
        subject: "s".into(),
        claims: json!({}),
        scopes: vec![],
        policies: vec![],
        state: LeaseState::Pending,
        issued_at: now,
        expires_at,
        max_expires_at: now + time::Duration::hours(1),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    };
    store.insert_pending(&l).await.unwrap();
    assert!(store.activate(&l.id, &json!({}), expires_at).await.unwrap());
}

/// A vendor that hangs (every call cut at `revoke_timeout`) holds only its
/// own connection's lane: another connection's leases expiring meanwhile end
/// on time, and once the breaker opens the hanging vendor is not called for
/// the rest of its backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_vendor_holds_only_its_own_leases() {
    let slow = Arc::new(Vendor { hang: true, calls: AtomicUsize::new(0) });
    let fast = Arc::new(Vendor { hang: false, calls: AtomicUsize::new(0) });
    let (slow_info, slow_role) = role("slow", slow.clone());
    let (fast_info, fast_role) = role("fast", fast.clone());
    let catalog = Catalog {
        roles: BTreeMap::from([
            ("slow/r".to_string(), Arc::new(slow_role)),
            ("fast/r".to_string(), Arc::new(fast_role)),
        ]),
        connections: BTreeMap::from([
            ("slow".to_string(), slow.clone() as Arc<dyn Plugin>),
            ("fast".to_string(), fast.clone() as Arc<dyn Plugin>),
        ]),
        scopes: BTreeMap::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let store = lessor::store::open(&format!("sqlite://{}", dir.path().join("l.db").display())).await.unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let engine = PolicyEngine::load(&policies, vec![slow_info, fast_info]).unwrap();
    let settings = LeaseSettings {
        tick: Duration::from_millis(50),
        revoke_timeout: Duration::from_secs(2),
        revoke_concurrency: 4,
        breaker_threshold: 3,
        breaker_base: Duration::from_secs(30),
        breaker_max: Duration::from_secs(30),
        ..LeaseSettings::default()
    };
    let svc = LeaseService::new(store.clone(), Arc::new(catalog), Arc::new(engine), settings);

    let now = OffsetDateTime::now_utc();
    for i in 0..100 {
        active_lease(&store, &format!("slow{i:03}"), "slow/r", now - time::Duration::minutes(1)).await;
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(expiry::run(svc.clone(), rx));
    // Fast leases expiring over the next 3 s, while the slow vendor hangs.
    let mut fast_ids = Vec::new();
    for i in 0..12i64 {
        let id = format!("fast{i:02}");
        active_lease(&store, &id, "fast/r", now + time::Duration::milliseconds(300 + 250 * i)).await;
        fast_ids.push(id);
    }
    let ended = Daemon::eventually(Duration::from_secs(15), || async {
        let mut out = Vec::new();
        for id in &fast_ids {
            let l = store.get(&LeaseId::new(id)).await.unwrap().unwrap();
            out.push((l.ended_at?, l.expires_at));
        }
        Some(out)
    })
    .await
    .expect("the fast connection's leases end");
    let worst = ended.iter().map(|(e, x)| (*e - *x).as_seconds_f64()).fold(0.0, f64::max);
    assert!(worst < 1.0, "a fast lease ended {worst:.3}s after its expiry");

    // The slow backlog: the first calls hung until revoke_timeout, then the
    // breaker opened and the rest were recorded without calling the vendor.
    let failing = Daemon::eventually(Duration::from_secs(15), || async {
        let l = store
            .list(&lessor::store::LeaseFilter { state: Some(LeaseState::RevokeFailed), limit: 1000, ..Default::default() })
            .await
            .unwrap();
        (l.len() == 100).then_some(l)
    })
    .await
    .expect("every slow lease shows revoke_failed");
    let deferred: Vec<&Lease> = failing
        .iter()
        .filter(|l| l.last_error.as_deref().unwrap_or("").starts_with("connection `slow` unreachable since "))
        .collect();
    assert!(deferred.len() >= 90, "{} of 100 name the open breaker", deferred.len());
    assert!(
        deferred.iter().all(|l| l.next_attempt_at.unwrap() > now + time::Duration::seconds(20)),
        "deferred leases are retried after the breaker's probe"
    );
    // The first wave (its concurrency, 4) and what started while the
    // failures were still under the threshold; never the whole backlog.
    let calls = slow.calls.load(Ordering::SeqCst);
    assert!((4..=6).contains(&calls), "the hanging vendor was called {calls} times");
    assert_eq!(fast.calls.load(Ordering::SeqCst), 12);
    assert_eq!(svc.breakers.open().iter().map(|b| b.connection.as_str()).collect::<Vec<_>>(), ["slow"]);

    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker).await.expect("the worker stops").unwrap();
}
