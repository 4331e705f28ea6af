//! [`JobStore`] conformance: a bulk revocation job and the leases it
//! takes are recorded together (all or nothing, also under racing callers
//! with one id), progress is counted from the leases, and the job's leases
//! fall due at the caller's `now`. Retention of ended leases and jobs too.

use std::sync::Arc;

use lessor::store::{EndReason, LeaseFilter, LeaseState, RevokeFilter, Store, StoreError};
use lessor_plugin::LeaseId;
use serde_json::json;
use time::OffsetDateTime;

use super::{lease, pg_store_db, postgres, sqlite};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms() {
    let (_d, s) = sqlite().await;
    suite(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conforms() {
    let (_pg, s) = postgres().await;
    suite(s).await;
}

/// A caller that loses a job id race never touches a lease: it fails on
/// the job row before its statement over the leases, so it neither rewrites
/// them nor holds their locks when its error arrives.
///
/// This was `postgres_conforms` failing once in twenty runs at load 14-18
/// with none of the five leases due: losers used to update the leases
/// first, then fail on the job row, and PostgreSQL sends a statement's
/// error before it aborts the transaction (and releases its row locks), so
/// the caller's next `due()` (`FOR UPDATE SKIP LOCKED`) could skip all five
/// rows the last loser still held. A loop of losing calls each followed by
/// `due()` found 152 of 2000 short at load 9.
///
/// Deterministic here: a lease row is held locked by another transaction;
/// a loser that touched the leases would wait for that lock, one that
/// fails on the job row first answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_losing_job_start_locks_no_lease() {
    use sqlx::Connection;
    let (_pg, dsn) = pg_store_db();
    let s: Arc<dyn Store> = Arc::new(lessor::store::postgres::PgStore::open(&dsn).await.unwrap());
    let real = OffsetDateTime::now_utc();
    for i in 0..5 {
        let id = format!("lk-{i}");
        s.insert_pending(&lease(&id, "lockjob/r", "lk", 600)).await.unwrap();
        assert!(s.activate(&LeaseId::new(&id), &json!({}), real + time::Duration::minutes(10)).await.unwrap());
    }
    let at = real + time::Duration::hours(1);
    let filter = RevokeFilter { role: Some("lockjob/r".into()), ..Default::default() };
    assert_eq!(s.start_revoke_job("job_lk", &filter, "admin", at).await.unwrap(), 5);

    let mut holder = sqlx::PgConnection::connect(&dsn).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("SELECT id FROM leases WHERE id = 'lk-3' FOR UPDATE").execute(&mut *held).await.unwrap();
    // The bound only ends a hang: an answer that does not wait for the lock
    // takes milliseconds.
    let again = tokio::time::timeout(std::time::Duration::from_secs(20), s.start_revoke_job("job_lk", &filter, "admin", at))
        .await
        .expect("the losing caller waited for a lease row lock: it touched the leases");
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    held.rollback().await.unwrap();

    // Nothing of the loser is left on the leases: all five due, at the
    // winner's time, as the winner's job.
    let due = s.due(at, real - time::Duration::hours(1), 100).await.unwrap();
    let ours: Vec<_> = due.iter().filter(|d| d.lease.role == "lockjob/r").collect();
    assert_eq!(ours.len(), 5, "{due:?}");
    let st = s.job_status("job_lk").await.unwrap().unwrap();
    assert_eq!((st.total, st.pending), (5, 5), "{st:?}");
}

pub async fn suite(s: Arc<dyn Store>) {
    jobs_and_retention(&s).await;
    racing_jobs_and_the_callers_clock(&s).await;
}

/// Bulk revocation jobs are recorded with their tags in one transaction;
/// unrevocable leases are counted apart; a credential found after its
/// lease ended makes the lease live again; retention deletes ended leases
/// only, in bounded batches.
async fn jobs_and_retention(s: &Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    for (id, role) in [("j-a", "job/a"), ("j-b", "job/b")] {
        s.insert_pending(&lease(id, role, "jobs", 600)).await.unwrap();
        assert!(s.activate(&LeaseId::new(id), &json!({}), now + time::Duration::minutes(10)).await.unwrap());
    }
    let by_role = |r: &str| RevokeFilter { role: Some(r.into()), ..Default::default() };
    assert_eq!(s.start_revoke_job("job_1", &by_role("job/a"), "admin", now).await.unwrap(), 1);
    // The same job id again: the job row is refused, so the tags go too.
    let again = s.start_revoke_job("job_1", &by_role("job/b"), "admin", now).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let st = s.job_status("job_1").await.unwrap().unwrap();
    assert_eq!((st.total, st.done + st.pending + st.failing), (1, 1), "leases tagged without their job row: {st:?}");

    // A plugin that cannot revoke: the job says so instead of "done".
    assert_eq!(s.start_revoke_job("job_2", &by_role("job/b"), "admin", now).await.unwrap(), 1);
    assert!(s.finish_unrevocable(&LeaseId::new("j-b"), EndReason::Revoked, now).await.unwrap());
    let b = s.get(&LeaseId::new("j-b")).await.unwrap().unwrap();
    assert!(b.unrevocable(), "{b:?}");
    assert_eq!((b.state, b.end_reason), (LeaseState::Expired, Some(EndReason::Revoked)));
    let st = s.job_status("job_2").await.unwrap().unwrap();
    assert_eq!((st.done, st.pending, st.unrevocable), (0, 0, 1), "{st:?}");
    assert_eq!(st.unrevocable_until_ms, Some(lessor::store::to_ms(b.expires_at)));

    // A credential created after its lease ended, whose revocation failed:
    // live again (revoke_failed, with its handle) so the worker retries it.
    assert!(s.finish(&LeaseId::new("j-a"), EndReason::Revoked, now).await.unwrap());
    s.record_late_failure(&LeaseId::new("j-a"), &json!({"late": true}), EndReason::Orphaned, "vendor down", now)
        .await
        .unwrap();
    let a = s.get(&LeaseId::new("j-a")).await.unwrap().unwrap();
    assert_eq!((a.state, a.handle.clone(), a.ended_at), (LeaseState::RevokeFailed, Some(json!({"late": true})), None));
    assert!(s.due(now, now - time::Duration::hours(1), 1000).await.unwrap().iter().any(|d| d.lease.id.as_str() == "j-a"));
    assert!(s.finish(&LeaseId::new("j-a"), EndReason::Orphaned, now).await.unwrap());

    // Retention: ended before the cutoff goes, in batches of `limit`;
    // live leases and recently ended ones stay.
    let old = now - time::Duration::hours(2);
    for id in ["r-1", "r-2", "r-3"] {
        s.insert_pending(&lease(id, "ret/r", "ret", 60)).await.unwrap();
        assert!(s.finish(&LeaseId::new(id), EndReason::Expired, old).await.unwrap());
    }
    s.insert_pending(&lease("r-live", "ret/r", "ret", 60)).await.unwrap();
    s.activate(&LeaseId::new("r-live"), &json!({}), now + time::Duration::minutes(1)).await.unwrap();
    let cutoff = now - time::Duration::hours(1);
    assert_eq!(s.prune_ended(cutoff, 2).await.unwrap(), 2);
    assert_eq!(s.prune_ended(cutoff, 2).await.unwrap(), 1);
    assert_eq!(s.prune_ended(cutoff, 2).await.unwrap(), 0);
    for id in ["r-1", "r-2", "r-3"] {
        assert!(s.get(&LeaseId::new(id)).await.unwrap().is_none(), "{id} outlived its retention");
    }
    assert!(s.get(&LeaseId::new("r-live")).await.unwrap().is_some(), "a live lease was pruned");
    assert!(s.get(&LeaseId::new("j-a")).await.unwrap().is_some(), "ended after the cutoff: kept");
    // Jobs go once their leases are gone and they are older than the cutoff.
    assert!(s.job_status("job_1").await.unwrap().is_some());
    let live = s.count_live(&LeaseFilter::default()).await.unwrap();
    while s.prune_ended(now + time::Duration::hours(1), 1000).await.unwrap() > 0 {}
    for state in [LeaseState::Revoked, LeaseState::Expired] {
        let left = s.list(&LeaseFilter { state: Some(state), limit: 10, ..Default::default() }).await.unwrap();
        assert!(left.is_empty(), "ended leases left: {left:?}");
    }
    assert_eq!(s.count_live(&LeaseFilter::default()).await.unwrap(), live, "live leases were pruned");
    assert!(s.job_status("job_1").await.unwrap().is_none(), "a job with no lease left is pruned");
    assert!(s.get(&LeaseId::new("r-live")).await.unwrap().is_some(), "a live lease was pruned");

    // The orphan sweep and activation race for a pending lease: whichever
    // comes first wins, the other is refused.
    s.insert_pending(&lease("o-swept", "ret/r", "o", 60)).await.unwrap();
    assert!(s.mark_orphaned(&LeaseId::new("o-swept")).await.unwrap());
    assert!(!s.activate(&LeaseId::new("o-swept"), &json!({}), now).await.unwrap(), "activated after the sweep took it");
    s.insert_pending(&lease("o-active", "ret/r", "o", 60)).await.unwrap();
    assert!(s.activate(&LeaseId::new("o-active"), &json!({}), now).await.unwrap());
    assert!(!s.mark_orphaned(&LeaseId::new("o-active")).await.unwrap(), "an active lease is no orphan");
    // A pending lease a bulk job tagged still activates (and is then revoked).
    s.insert_pending(&lease("o-tagged", "ret/tagged", "o", 60)).await.unwrap();
    assert_eq!(s.start_revoke_job("job_3", &by_role("ret/tagged"), "admin", now).await.unwrap(), 1);
    assert!(s.activate(&LeaseId::new("o-tagged"), &json!({}), now).await.unwrap());
}


/// One job id started by several callers at once: one job, its leases
/// tagged once; the leases are due at the caller's `now`, not before.
async fn racing_jobs_and_the_callers_clock(s: &Arc<dyn Store>) {
    let real = OffsetDateTime::now_utc();
    for i in 0..5 {
        let id = format!("rj-{i}");
        s.insert_pending(&lease(&id, "racejob/r", "rj", 600)).await.unwrap();
        assert!(s.activate(&LeaseId::new(&id), &json!({}), real + time::Duration::minutes(10)).await.unwrap());
    }
    let at = real + time::Duration::hours(1);
    let filter = RevokeFilter { role: Some("racejob/r".into()), ..Default::default() };
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (s, f) = (s.clone(), filter.clone());
        set.spawn(async move { s.start_revoke_job("job_race", &f, "admin", at).await });
    }
    let results = set.join_all().await;
    let ok: Vec<i64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(ok, vec![5], "one job takes the five leases: {results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(StoreError::Conflict(_)))), "{results:?}");
    let st = s.job_status("job_race").await.unwrap().unwrap();
    assert_eq!((st.total, st.pending, st.created_at_ms), (5, 5, lessor::store::to_ms(at)), "{st:?}");
    assert_eq!(st.filter, filter);
    assert!(s.job_status("job_nope").await.unwrap().is_none());

    let ours = |due: Vec<lessor::store::DueLease>| {
        due.into_iter().filter(|d| d.lease.role == "racejob/r").map(|d| d.reason).collect::<Vec<_>>()
    };
    assert!(ours(s.due(real, real - time::Duration::hours(1), 100).await.unwrap()).is_empty(), "due at the caller's `now`, not before");
    assert_eq!(ours(s.due(at, real - time::Duration::hours(1), 100).await.unwrap()), vec![EndReason::Revoked; 5]);
    for i in 0..5 {
        assert!(s.finish(&LeaseId::new(format!("rj-{i}")), EndReason::Revoked, at).await.unwrap());
    }
    let st = s.job_status("job_race").await.unwrap().unwrap();
    assert_eq!((st.total, st.done, st.pending), (5, 5, 0), "{st:?}");
}
