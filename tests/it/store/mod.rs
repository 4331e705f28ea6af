//! The store's conformance suites, one per trait (`leases`, `jobs`,
//! `secrets`, `plugin_state`, `cluster`; admin tokens and sessions in their
//! own modules), each run against SQLite and a throwaway PostgreSQL: every
//! method's contract, atomicity under concurrent callers, and which clock
//! decides. Below: backend-specific behaviour (SQLite's lock, group commit;
//! PostgreSQL's claims across replicas).

mod cluster;
mod customer_tokens;
mod jobs;
mod leases;
mod person_sessions;
mod plugin_state;
mod secrets;

use std::sync::Arc;
use std::time::Duration;

use lessor::store::{EndReason, Lease, LeaseFilter, LeaseState, Store};
use lessor_plugin::LeaseId;
use serde_json::json;
use time::OffsetDateTime;

pub fn lease(id: &str, role: &str, subject: &str, expires_in: i64) -> Lease {
    let now = OffsetDateTime::now_utc();
    Lease {
        id: LeaseId::new(id),
        role: role.into(),
        plugin: "token".into(),
        issuer: "https://iss".into(),
        subject: subject.into(),
        claims: json!({"repository": "acme/api"}),
        scopes: vec!["orders.read".into()],
        policies: vec!["p1".into()],
        state: LeaseState::Pending,
        issued_at: now,
        expires_at: now + time::Duration::seconds(expires_in),
        max_expires_at: now + time::Duration::seconds(expires_in + 3600),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    }
}

#[tokio::test]
async fn sqlite_refuses_a_second_process_and_unknown_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let _a = lessor::store::open(&url).await.unwrap();
    let err = lessor::store::open(&url).await.err().unwrap().to_string();
    assert!(err.contains("locked by another lessor process"), "{err}");
    let err = lessor::store::open("mysql://x").await.err().unwrap().to_string();
    assert!(err.contains("unknown scheme"), "{err}");
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn plugin_secrets_are_sealed_at_rest_and_a_wrong_key_fails_clearly() {
    use lessor_plugin::StateStore;
    use secrecy::{ExposeSecret, SecretBox};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = lessor::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let seal = Arc::new(lessor::seal::Seal::generate());
    let st = lessor::store::state::ConnectionState::new(s.clone(), seal, "pki");
    let canary = b"-----BEGIN PRIVATE KEY----- canary-9f8e7d".to_vec();
    assert!(st.put_secret_if_absent("ca/web/key", &SecretBox::new(Box::new(canary.clone()))).await.unwrap());
    assert_eq!(st.get_secret("ca/web/key").await.unwrap().unwrap().expose_secret(), &canary);
    let (raw, sealed) = s.state_get("pki", "ca/web/key").await.unwrap().unwrap();
    assert!(sealed);
    assert!(!raw.windows(6).any(|w| w == b"canary"), "plaintext in the store");

    let other = lessor::store::state::ConnectionState::new(s.clone(), Arc::new(lessor::seal::Seal::generate()), "pki");
    let err = other.get_secret("ca/web/key").await.unwrap_err().to_string();
    assert!(err.contains("sealed with key id"), "{err}");
}

/// Group commit: concurrent writes share transactions, and one failing
/// statement (a duplicate id) fails alone while the rest of its batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_commit_together_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = lessor::store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let s = s.clone();
        // Every tenth id is written twice.
        let id = if i % 10 == 9 { format!("l{}", i - 1) } else { format!("l{i}") };
        set.spawn(async move { (id.clone(), s.insert_pending(&lease(&id, "token/orders", "x", 60)).await) });
    }
    let (mut ok, mut dup) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (_, res) = r.unwrap();
        match res {
            Ok(on_disk) => {
                on_disk.wait().await.unwrap();
                ok += 1
            }
            Err(lessor::store::StoreError::Conflict(_)) => dup += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((ok, dup), (180, 20));
    let all = s.list(&LeaseFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 180, "every non-duplicate write is durable");
}

/// `close` finishes the writes sent before it, then ends the writer: the
/// database files are settled when it returns (the WAL checkpointed and
/// removed), later calls fail as unavailable, and the data is all there on
/// the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_close_finishes_queued_writes_and_settles_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let url = format!("sqlite://{}", path.display());
    let s = lessor::store::open(&url).await.unwrap();
    // Writes in flight when the close is sent.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let s = s.clone();
        set.spawn(async move { s.insert_pending(&lease(&format!("c{i}"), "token/orders", "x", 60)).await });
    }
    s.insert_pending(&lease("before-close", "token/orders", "x", 60)).await.unwrap();
    s.close().await;
    let wal = dir.path().join("s.db-wal");
    assert!(!wal.exists(), "the WAL is checkpointed and removed when close returns");
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(_) => done += 1,
            Err(lessor::store::StoreError::Unavailable(m)) => assert!(m.contains("stopped"), "{m}"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let err = s.insert_pending(&lease("after-close", "token/orders", "x", 60)).await.unwrap_err();
    assert!(matches!(err, lessor::store::StoreError::Unavailable(_)), "{err}");
    drop(s);
    let again = lessor::store::open(&url).await.unwrap();
    let all = again.list(&LeaseFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert!(all.iter().any(|l| l.id.as_str() == "before-close"));
    assert!(!all.iter().any(|l| l.id.as_str() == "after-close"));
    assert_eq!(all.len(), done + 1, "every write answered Ok is on disk, and only those");
}

/// `close` releases the store's lock even while other threads of the
/// process start child processes (each shares the lock's open file until
/// it execs): the store reopens at once, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_close_releases_the_lock_while_other_threads_spawn_processes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            })
        })
        .collect();
    for i in 0..40 {
        let s = match lessor::store::open(&url).await {
            Ok(s) => s,
            Err(e) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                panic!("reopen {i} after close: {e}");
            }
        };
        s.insert_pending(&lease(&format!("l{i}"), "token/orders", "x", 60)).await.unwrap();
        s.close().await;
        drop(s);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in spawners {
        t.join().unwrap();
    }
}

/// SQLite's point reads (a lease by id, the quota counts, an admin token by
/// hash) run on a few connections of their own on the caller's thread:
/// more concurrent readers than connections all get answers, each sees
/// every write acknowledged before it, a row that does not decode is
/// `Corrupt` (not an outage), and after `close` they fail as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_point_reads_see_acknowledged_writes_and_stop_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = lessor::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let s = s.clone();
        set.spawn(async move {
            let id = format!("p{i}");
            let subject = format!("w{}", i % 4);
            s.insert_pending(&lease(&id, "token/orders", &subject, 600)).await.unwrap();
            let got = s.get(&LeaseId::new(&id)).await.unwrap().expect("an acknowledged insert is read back");
            assert_eq!((got.state, got.subject.as_str()), (LeaseState::Pending, subject.as_str()));
            let n = s.quota_counts("https://iss", &subject, "token/orders").await.unwrap();
            assert!(n.owner >= 1 && n.role >= n.owner && n.total >= n.role, "{n:?}");
            let until = OffsetDateTime::now_utc() + Duration::from_secs(600);
            assert!(s.activate(&LeaseId::new(&id), &json!({"k": i}), until).await.unwrap());
            let got = s.get(&LeaseId::new(&id)).await.unwrap().unwrap();
            assert_eq!((got.state, got.handle), (LeaseState::Active, Some(json!({"k": i}))));
            for _ in 0..20 {
                assert!(s.get(&LeaseId::new(format!("p{}", (i * 7) % 64))).await.is_ok());
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let n = s.quota_counts("https://iss", "w0", "token/orders").await.unwrap();
    assert_eq!((n.owner, n.role, n.total), (16, 64, 64));
    assert!(s.get(&LeaseId::new("nope")).await.unwrap().is_none());

    // A row that does not decode.
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("UPDATE leases SET claims = '{not json' WHERE id = 'p1'").execute(&mut c).await.unwrap();
    sqlx::Connection::close(c).await.unwrap();
    let err = s.get(&LeaseId::new("p1")).await.unwrap_err();
    assert!(matches!(&err, lessor::store::StoreError::Corrupt(m) if m.contains("claims")), "{err:?}");

    s.close().await;
    let err = s.get(&LeaseId::new("p2")).await.unwrap_err();
    assert!(matches!(err, lessor::store::StoreError::Unavailable(_)), "{err}");
    let err = s.quota_counts("https://iss", "w0", "token/orders").await.unwrap_err();
    assert!(matches!(err, lessor::store::StoreError::Unavailable(_)), "{err}");
    assert!(!dir.path().join("s.db-wal").exists(), "every reader closed: the WAL is removed");
}

/// A fresh SQLite store in a temp dir (kept alive by the returned guard).
pub async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = lessor::store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await.unwrap();
    assert_eq!((s.backend(), s.exclusive()), ("sqlite", true));
    (dir, s)
}

/// A fresh PostgreSQL store on a throwaway server (stopped when the guard
/// drops). Migrations are run twice: a second replica opening the store.
pub async fn postgres() -> (lessor_postgres::testkit::TempPostgres, Arc<dyn Store>) {
    let (pg, dsn) = pg_store_db();
    let s: Arc<dyn Store> = Arc::new(lessor::store::postgres::PgStore::open(&dsn).await.unwrap());
    assert_eq!((s.backend(), s.exclusive()), ("postgres", false));
    let _again = lessor::store::postgres::PgStore::open(&dsn).await.unwrap();
    (pg, s)
}

#[tokio::test]
async fn sqlite_passes_the_admin_token_suite() {
    let (_d, s) = sqlite().await;
    crate::admin_tokens::store_suite(&s).await;
}

#[tokio::test]
async fn postgres_passes_the_admin_token_suite() {
    let (_pg, s) = postgres().await;
    crate::admin_tokens::store_suite(&s).await;
}

/// A throwaway PostgreSQL server with an empty database `lessor`, and a DSN
/// to that database.
pub fn pg_store_db() -> (lessor_postgres::testkit::TempPostgres, String) {
    let pg = lessor_postgres::testkit::TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    pg.psql("postgres", "CREATE DATABASE lessor").unwrap();
    let dsn = pg.dsn("postgres", pg.superuser_password(), "lessor");
    (pg, dsn)
}

/// An active lease that expired a minute ago.
async fn insert_expired(s: &Arc<dyn Store>, id: &str) {
    s.insert_pending(&lease(id, "token/orders", "alice", -60)).await.unwrap();
    let exp = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    assert!(s.activate(&LeaseId::new(id), &json!({"jti": id}), exp).await.unwrap());
}

/// Two replicas running the expiry worker on one store: every due lease
/// goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_never_get_the_same_due_lease() {
    use lessor::store::postgres::PgStore;
    use std::collections::BTreeSet;
    let (_pg, dsn) = pg_store_db();
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap());
    let all: BTreeSet<String> = (0..200).map(|i| format!("l{i:03}")).collect();
    for id in &all {
        insert_expired(&a, id).await;
    }
    // Each replica works like the expiry worker: take a batch, record each
    // outcome, look again until nothing is due for it.
    let work = |s: Arc<dyn Store>| async move {
        let mut got = Vec::new();
        loop {
            let now = OffsetDateTime::now_utc();
            let due = s.due(now, now - time::Duration::minutes(2), 7).await.unwrap();
            if due.is_empty() {
                break;
            }
            for d in due {
                assert_eq!(d.reason, EndReason::Expired);
                assert!(s.finish(&d.lease.id, d.reason, now).await.unwrap(), "{} was already ended", d.lease.id);
                got.push(d.lease.id.to_string());
                tokio::task::yield_now().await;
            }
        }
        got
    };
    let (ga, gb) = tokio::join!(tokio::spawn(work(a.clone())), tokio::spawn(work(b.clone())));
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    let (sa, sb): (BTreeSet<String>, BTreeSet<String>) = (ga.iter().cloned().collect(), gb.iter().cloned().collect());
    assert_eq!((sa.len(), sb.len()), (ga.len(), gb.len()), "a replica got a lease twice");
    assert!(sa.is_disjoint(&sb), "both replicas got {:?}", sa.intersection(&sb).collect::<Vec<_>>());
    assert_eq!(sa.union(&sb).cloned().collect::<BTreeSet<_>>(), all);
    assert!(!ga.is_empty() && !gb.is_empty(), "one replica did all the work ({} / {})", ga.len(), gb.len());
    let expired = a.list(&LeaseFilter { state: Some(LeaseState::Expired), limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(expired.len(), 200);
}

/// A replica that dies holding claims: the others skip its leases until the
/// claim times out, then take them. Recording an outcome releases a claim.
#[tokio::test]
async fn postgres_claims_time_out_when_a_replica_dies() {
    use lessor::store::postgres::PgStore;
    let (_pg, dsn) = pg_store_db();
    let timeout = Duration::from_secs(1);
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    let b: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    for id in ["x1", "x2", "x3"] {
        insert_expired(&a, id).await;
    }
    let ids = |d: Vec<lessor::store::DueLease>| d.into_iter().map(|d| d.lease.id.to_string()).collect::<Vec<_>>();
    let now = OffsetDateTime::now_utc();
    let cutoff = now - time::Duration::minutes(2);
    assert_eq!(ids(a.due(now, cutoff, 100).await.unwrap()), ["x1", "x2", "x3"]);
    // B skips A's claims, and does not wake up for them either.
    assert!(b.due(now, cutoff, 100).await.unwrap().is_empty(), "claimed by another replica");
    assert_eq!(b.next_due().await.unwrap(), None);
    // A still sees its own claims (asking twice answers the same, as SQLite).
    assert_eq!(ids(a.due(now, cutoff, 100).await.unwrap()), ["x1", "x2", "x3"]);
    assert!(a.next_due().await.unwrap().is_some());
    // The claim does not show as a retry time.
    assert_eq!(a.get(&LeaseId::new("x1")).await.unwrap().unwrap().next_attempt_at, None);
    drop(a);

    tokio::time::sleep(timeout + Duration::from_millis(300)).await;
    let now = OffsetDateTime::now_utc();
    let cutoff = now - time::Duration::minutes(2);
    assert_eq!(ids(b.due(now, cutoff, 100).await.unwrap()), ["x1", "x2", "x3"], "A's claims timed out");

    // B's outcomes release its claims: a failure whose retry is due now is
    // free for any replica straight away.
    let c: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    assert!(c.due(now, cutoff, 100).await.unwrap().is_empty(), "claimed by B");
    b.record_failure(&LeaseId::new("x2"), EndReason::Expired, "vendor down", now).await.unwrap();
    assert!(b.finish(&LeaseId::new("x3"), EndReason::Expired, now).await.unwrap());
    let got = c.due(now, cutoff, 100).await.unwrap();
    assert_eq!(ids(got.clone()), ["x2"]);
    assert_eq!((got[0].reason, got[0].lease.state), (EndReason::Expired, LeaseState::RevokeFailed));
}

/// A live replica's heartbeat renews its claims: a batch slower than the
/// claim timeout is never handed to another replica while its owner lives;
/// once the heartbeats stop, the claims time out and the work moves.
#[tokio::test]
async fn postgres_heartbeats_keep_a_live_replicas_claims() {
    use lessor::store::postgres::PgStore;
    let (_pg, dsn) = pg_store_db();
    let timeout = Duration::from_millis(900);
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    let b: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    for id in ["y1", "y2"] {
        insert_expired(&a, id).await;
    }
    let me = lessor::store::Replica {
        id: String::new(),
        host: "a".into(),
        pid: 1,
        version: "0".into(),
        policy_version: "v".into(),
        started_at_ms: 0,
        seen_at_ms: 0,
    };
    let due = |s: Arc<dyn Store>| async move {
        let now = OffsetDateTime::now_utc();
        s.due(now, now - time::Duration::minutes(2), 100).await.unwrap().len()
    };
    assert_eq!(due(a.clone()).await, 2);
    // Three claim timeouts pass while A keeps beating: B gets nothing.
    for _ in 0..9 {
        tokio::time::sleep(timeout / 3).await;
        a.heartbeat(&me).await.unwrap();
        assert_eq!(due(b.clone()).await, 0, "a live replica's claims were taken over");
    }
    // A stops (dies): after one claim timeout B takes the work.
    tokio::time::sleep(timeout + Duration::from_millis(200)).await;
    assert_eq!(due(b.clone()).await, 2, "a dead replica's claims time out");
}

/// The whole daemon on a PostgreSQL store: issue, revoke, expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_on_a_postgres_store() {
    let (_pg, dsn) = pg_store_db();
    let iss = crate::support::Issuer::start().await;
    let d = crate::support::Daemon::start_with(crate::support::Opts {
        issuer_url: iss.url.clone(),
        store: Some(dsn),
        ..Default::default()
    })
    .await;
    let (s, h) = d.get("/v1/health", &d.admin).await;
    assert_eq!((s, h["store_backend"].as_str()), (200, Some("postgres")), "{h}");
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");
    let token = v["credential"]["token"].as_str().unwrap().to_owned();
    let (s, r) = d.delete(&format!("/v1/leases/{}", v["lease_id"].as_str().unwrap()), &jwt).await;
    assert_eq!((s, r["state"].as_str()), (200, Some("revoked")), "{r}");
    assert_eq!(d.introspect(&token).await, json!({"active": false}));
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web", "ttl": "2s"})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["lease_id"].as_str().unwrap().to_owned();
    let st = crate::support::Daemon::eventually(std::time::Duration::from_secs(10), || async {
        (d.lease_state(&id).await == "expired").then_some(())
    })
    .await;
    assert!(st.is_some(), "the worker expires leases on PostgreSQL");

    // A bulk revocation job by claim.
    for _ in 0..3 {
        let (s, _) = d.issue(&jwt, json!({"role": "token/orders"})).await;
        assert_eq!(s, 201);
    }
    let (s, v) = d.post("/v1/admin/revoke", &d.admin, json!({"claims": {"repository": "acme/api"}})).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["scheduled"], 3);
    let status = v["status"].as_str().unwrap().to_owned();
    let done = crate::support::Daemon::eventually(std::time::Duration::from_secs(10), || async {
        let (_, j) = d.get(&status, &d.admin).await;
        (j["state"] == "done").then_some(j)
    })
    .await
    .expect("the job finishes on PostgreSQL");
    assert_eq!((done["total"].as_i64(), done["done"].as_i64()), (Some(3), Some(3)));
}

/// Corrupts two due leases the way a downgrade or a bad hand edit would.
const CORRUPT: [&str; 2] = [
    "UPDATE leases SET claims = '{not json' WHERE id = 'bad-json'",
    "UPDATE leases SET end_reason = 'vaporized' WHERE id = 'bad-reason'",
];

/// One undecodable row does not fail the batch: the rest is handed out,
/// the bad rows are counted and skipped by id (not returned again, not
/// waking the worker).
async fn undecodable_rows_are_set_aside(s: &Arc<dyn Store>, raw: impl AsyncFn(&str)) {
    for id in ["ok-1", "bad-json", "bad-reason", "ok-2"] {
        insert_expired(s, id).await;
    }
    let before = lessor::telemetry::metrics().lease_rows_undecodable.get();
    for sql in CORRUPT {
        raw(sql).await;
    }
    let now = OffsetDateTime::now_utc();
    let ids = |d: Vec<lessor::store::DueLease>| d.into_iter().map(|d| d.lease.id.to_string()).collect::<Vec<_>>();
    let mut got = ids(s.due(now, now - time::Duration::minutes(2), 100).await.expect("a bad row fails the batch"));
    got.sort();
    assert_eq!(got, ["ok-1", "ok-2"]);
    assert!(lessor::telemetry::metrics().lease_rows_undecodable.get() >= before + 2, "the bad rows are counted");
    // Even when the limit would be filled by bad rows alone.
    for d in ["ok-1", "ok-2"] {
        assert!(s.finish(&LeaseId::new(d), EndReason::Expired, now).await.unwrap());
    }
    assert!(s.due(now, now - time::Duration::minutes(2), 2).await.unwrap().is_empty(), "set aside by id");
    assert_eq!(s.next_due().await.unwrap(), None, "the worker is not woken for rows it cannot take");
}

#[tokio::test]
async fn sqlite_sets_undecodable_due_rows_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = lessor::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    undecodable_rows_are_set_aside(&s, async |sql: &str| {
        sqlx::query(sql).execute(&raw).await.unwrap();
    })
    .await;
}

/// On PostgreSQL the bad rows are not left claimed (a live replica's
/// heartbeat would renew such claims forever): another replica sees them.
#[tokio::test]
async fn postgres_sets_undecodable_due_rows_aside_unclaimed() {
    use lessor::store::postgres::PgStore;
    use sqlx::Row;
    let (_pg, dsn) = pg_store_db();
    let s: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap());
    let raw = sqlx::PgPool::connect(&dsn).await.unwrap();
    undecodable_rows_are_set_aside(&s, async |sql: &str| {
        sqlx::query(sql).execute(&raw).await.unwrap();
    })
    .await;
    let claimed: Vec<Option<String>> = sqlx::query("SELECT claimed_by FROM leases WHERE id IN ('bad-json', 'bad-reason')")
        .fetch_all(&raw)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("claimed_by"))
        .collect();
    assert_eq!(claimed, [None, None], "undecodable rows stay unclaimed");
}

/// A pending lease carries its issuing replica's claim: while that replica
/// beats, nobody else touches it (however long the issue takes); once it is
/// gone, another replica orphans it after `claim_timeout`, not after
/// `pending_grace`.
#[tokio::test]
async fn postgres_pending_leases_of_a_dead_replica_are_orphaned_after_claim_timeout() {
    use lessor::store::postgres::PgStore;
    let (_pg, dsn) = pg_store_db();
    let timeout = Duration::from_millis(900);
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    let b: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    a.insert_pending(&lease("issuing", "token/orders", "alice", 600)).await.unwrap();
    let me = lessor::store::Replica {
        id: String::new(),
        host: "a".into(),
        pid: 1,
        version: "0".into(),
        policy_version: "v".into(),
        started_at_ms: 0,
        seen_at_ms: 0,
    };
    // pending_grace is two minutes here, as by default.
    let due = |s: Arc<dyn Store>| async move {
        let now = OffsetDateTime::now_utc();
        s.due(now, now - time::Duration::minutes(2), 100).await.unwrap()
    };
    for _ in 0..6 {
        tokio::time::sleep(timeout / 3).await;
        a.heartbeat(&me).await.unwrap();
        assert!(due(b.clone()).await.is_empty(), "a live replica's issue in progress was taken");
    }
    // A is gone (no more heartbeats): its claim lapses, B orphans the lease.
    drop(a);
    let started = std::time::Instant::now();
    let got = crate::support::Daemon::eventually(Duration::from_secs(10), || {
        let b = b.clone();
        async move { Some(due(b).await).filter(|d| !d.is_empty()) }
    })
    .await
    .expect("the dead replica's pending lease is orphaned");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!((got[0].lease.id.as_str(), got[0].reason), ("issuing", EndReason::Orphaned));
    // Activation releases the claim: an active lease is not tied to its issuer.
    let c: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap().with_claim_timeout(timeout));
    c.insert_pending(&lease("done", "token/orders", "alice", -1)).await.unwrap();
    assert!(c.activate(&LeaseId::new("done"), &json!({}), OffsetDateTime::now_utc()).await.unwrap());
    assert!(due(b.clone()).await.iter().any(|d| d.lease.id.as_str() == "done"), "an activated lease stays claimed");
}

/// The orphan sweep's age is measured by the database's clock: a replica
/// whose clock runs an hour ahead does not orphan a fresh pending lease.
#[tokio::test]
async fn postgres_pending_age_uses_the_database_clock() {
    use lessor::store::postgres::PgStore;
    let (_pg, dsn) = pg_store_db();
    let a: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap());
    a.insert_pending(&lease("fresh", "token/orders", "alice", 600)).await.unwrap();
    let mut old = lease("old", "token/orders", "alice", 600);
    old.issued_at = OffsetDateTime::now_utc() - time::Duration::minutes(10);
    a.insert_pending(&old).await.unwrap();
    // Written by a replica from before pending claims: no claim at all.
    let raw = sqlx::PgPool::connect(&dsn).await.unwrap();
    sqlx::query("UPDATE leases SET claimed_by = NULL, claimed_until = NULL").execute(&raw).await.unwrap();
    let b: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap());
    let ahead = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let got: Vec<String> = b
        .due(ahead, ahead - time::Duration::minutes(2), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.lease.id.to_string())
        .collect();
    assert_eq!(got, ["old"], "only the lease older than pending_grace by the database's clock");
}

/// The heartbeat's claim renewal (`WHERE claimed_by = ?`) and retention
/// (`WHERE ended_at < ?`) find their rows by index, not by scanning every
/// lease ever issued (sequential scans disabled: a plan without the index
/// would still be a `Seq Scan`).
#[tokio::test]
async fn postgres_claim_renewal_and_retention_use_indexes() {
    let (_pg, dsn) = pg_store_db();
    let _s = lessor::store::postgres::PgStore::open(&dsn).await.unwrap();
    let pool = sqlx::PgPool::connect(&dsn).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // A store that has run a while: mostly ended leases, a few old.
    sqlx::query(
        "INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state, issued_at, \
         expires_at, max_expires_at, end_reason, ended_at) \
         SELECT 'l' || i, 'r', 'p', 'i', 's', '{}', '[]', '[]', CASE WHEN i % 2 = 0 THEN 'revoked' ELSE 'expired' END, \
         i, i, i, 'expired', 1000 + i FROM generate_series(1, 20000) AS i",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE leases").execute(&mut *conn).await.unwrap();
    sqlx::query("SET enable_seqscan = off").execute(&mut *conn).await.unwrap();
    for (sql, index) in [
        (
            "EXPLAIN UPDATE leases SET claimed_until = 1 WHERE claimed_by = 'r1' AND state IN ('pending', 'active', 'revoke_failed')",
            "leases_claimed_by",
        ),
        (
            "EXPLAIN DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE ended_at < 1100 \
             AND state IN ('revoked', 'expired') LIMIT 500 FOR UPDATE SKIP LOCKED)",
            "leases_ended",
        ),
    ] {
        let plan: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut *conn).await.unwrap();
        assert!(plan.iter().any(|l| l.contains(index)), "{sql}:\n{}", plan.join("\n"));
    }
}

/// Due work is handed out fairly: at most `limit` per connection,
/// round-robin, so a backlog on one connection (`pg`, due for an hour) never
/// keeps another's (`token`, due a second ago) out of the batch. A lease
/// both expired and scheduled comes once.
async fn due_is_fair_across_connections(s: Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    for i in 0..40 {
        let id = format!("pg{i:02}");
        s.insert_pending(&lease(&id, "pg/app", "alice", -3600)).await.unwrap();
        let exp = now - time::Duration::minutes(60) + time::Duration::seconds(i);
        assert!(s.activate(&LeaseId::new(&id), &json!({}), exp).await.unwrap());
    }
    // A second role of the same connection: its leases compete with the
    // first role's for the connection's share.
    s.insert_pending(&lease("pgx", "pg/other", "alice", -3600)).await.unwrap();
    let exp = now - time::Duration::minutes(60) + time::Duration::milliseconds(500);
    assert!(s.activate(&LeaseId::new("pgx"), &json!({}), exp).await.unwrap());
    for i in 0..3 {
        let id = format!("tok{i}");
        s.insert_pending(&lease(&id, "token/orders", "bob", -1)).await.unwrap();
        assert!(s.activate(&LeaseId::new(&id), &json!({}), now - time::Duration::seconds(1)).await.unwrap());
    }
    s.insert_pending(&lease("pki1", "pki/web", "carol", -1)).await.unwrap();
    assert!(s.activate(&LeaseId::new("pki1"), &json!({}), now - time::Duration::seconds(2)).await.unwrap());
    // Expired and scheduled by a bulk revoke: one entry, from the earlier.
    assert_eq!(s.schedule_revocation(&LeaseFilter { subject: Some("carol".into()), ..Default::default() }, now).await.unwrap(), 1);

    let ids = |d: Vec<lessor::store::DueLease>| d.into_iter().map(|d| d.lease.id.to_string()).collect::<Vec<_>>();
    let due = ids(s.due(now, now - time::Duration::hours(2), 2).await.unwrap());
    assert_eq!(due, ["pg00", "pki1", "tok0", "pgx", "tok1"], "round-robin, at most 2 per connection, across its roles");
    let due = ids(s.due(now, now - time::Duration::hours(2), 100).await.unwrap());
    assert_eq!(due.len(), 45, "{due:?}");
    assert_eq!(&due[..3], ["pg00", "pki1", "tok0"]);
    // A busy connection is left out (nothing of it read, locked or claimed).
    let skip = ["pg".to_string(), "pki".to_string()];
    let due = ids(s.due_except(now, now - time::Duration::hours(2), 100, &skip).await.unwrap());
    assert_eq!(due, ["tok0", "tok1", "tok2"]);
}

#[tokio::test]
async fn sqlite_hands_out_due_work_fairly() {
    let dir = tempfile::tempdir().unwrap();
    let s = lessor::store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await.unwrap();
    due_is_fair_across_connections(s).await;
}

#[tokio::test]
async fn postgres_hands_out_due_work_fairly() {
    let (_pg, dsn) = pg_store_db();
    let s: Arc<dyn Store> = Arc::new(lessor::store::postgres::PgStore::open(&dsn).await.unwrap());
    due_is_fair_across_connections(s).await;
}
