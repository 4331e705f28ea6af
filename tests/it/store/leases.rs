//! [`LeaseStore`] conformance: life of a lease (pending, active, ended),
//! due work, counts, and the rules that hold under concurrent callers
//! (exactly one of racing transitions wins) and for clocks (expiry by the
//! caller's `now`, pending age by the database's clock).

use std::sync::Arc;

use lessor::store::{EndReason, LeaseFilter, LeaseState, Store, StoreError};
use lessor_plugin::LeaseId;
use serde_json::json;
use time::OffsetDateTime;

use super::{lease, postgres, sqlite};

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

pub async fn suite(s: Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    // Pending -> active, only once.
    s.insert_pending(&lease("a", "token/orders", "alice", -1)).await.unwrap();
    assert!(s.activate(&LeaseId::new("a"), &json!({"jti": "a"}), now - time::Duration::seconds(1)).await.unwrap());
    assert!(!s.activate(&LeaseId::new("a"), &json!({}), now).await.unwrap(), "activate twice");
    let a = s.get(&LeaseId::new("a")).await.unwrap().unwrap();
    assert_eq!(a.state, LeaseState::Active);
    assert_eq!(a.handle, Some(json!({"jti": "a"})));
    assert_eq!(a.claims, json!({"repository": "acme/api"}));
    // Active but past its expiry (not yet swept): over, not renewable.
    assert!(
        !s.renew(&LeaseId::new("a"), now, now + time::Duration::hours(1)).await.unwrap(),
        "an active lease past its expiry is not renewed"
    );
    assert_eq!(s.get(&LeaseId::new("a")).await.unwrap().unwrap().expires_at.unix_timestamp(), (now - time::Duration::seconds(1)).unix_timestamp());
    // Duplicate ids are refused.
    assert!(s.insert_pending(&lease("a", "token/orders", "alice", 10)).await.is_err());

    // Due: the expired active lease and an old pending one, oldest first;
    // not the fresh pending one nor a future one.
    let mut old = lease("p-old", "token/orders", "bob", 600);
    old.issued_at = now - time::Duration::minutes(10);
    s.insert_pending(&old).await.unwrap();
    s.insert_pending(&lease("p-new", "token/orders", "bob", 600)).await.unwrap();
    s.insert_pending(&lease("future", "pki/web", "carol", 600)).await.unwrap();
    s.activate(&LeaseId::new("future"), &json!({}), now + time::Duration::minutes(10)).await.unwrap();
    let due = s.due(now, now - time::Duration::minutes(1), 100).await.unwrap();
    let ids: Vec<(&str, EndReason)> = due.iter().map(|d| (d.lease.id.as_str(), d.reason)).collect();
    assert_eq!(ids, vec![("p-old", EndReason::Orphaned), ("a", EndReason::Expired)]);
    assert_eq!(s.due(now, now - time::Duration::minutes(1), 1).await.unwrap().len(), 1, "limit is honoured");

    // Failure: visible, retried later, not due before then.
    s.record_failure(&LeaseId::new("a"), EndReason::Expired, "vendor down", now + time::Duration::seconds(30)).await.unwrap();
    let a = s.get(&LeaseId::new("a")).await.unwrap().unwrap();
    assert_eq!((a.state, a.attempts, a.last_error.as_deref()), (LeaseState::RevokeFailed, 1, Some("vendor down")));
    assert!(s.due(now, now - time::Duration::hours(1), 100).await.unwrap().iter().all(|d| d.lease.id.as_str() != "a"));
    let later = now + time::Duration::seconds(31);
    assert!(s.due(later, now - time::Duration::hours(1), 100).await.unwrap().iter().any(|d| d.lease.id.as_str() == "a"));
    assert!(s.next_due().await.unwrap().is_some());
    // Success ends it; a second finish changes nothing.
    assert!(s.finish(&LeaseId::new("a"), EndReason::Expired, now).await.unwrap());
    assert!(!s.finish(&LeaseId::new("a"), EndReason::Revoked, now).await.unwrap());
    let a = s.get(&LeaseId::new("a")).await.unwrap().unwrap();
    assert_eq!((a.state, a.end_reason), (LeaseState::Expired, Some(EndReason::Expired)));
    assert!(!s.renew(&LeaseId::new("a"), now, now).await.unwrap(), "an ended lease cannot be renewed");

    // Bulk scheduling makes matching active leases due now, with reason revoked.
    assert_eq!(s.schedule_revocation(&LeaseFilter { subject: Some("carol".into()), ..Default::default() }, now).await.unwrap(), 1);
    let due = s.due(now, now - time::Duration::hours(1), 100).await.unwrap();
    let f = due.iter().find(|d| d.lease.id.as_str() == "future").expect("scheduled lease is due");
    assert_eq!(f.reason, EndReason::Revoked);
    assert!(!s.renew(&LeaseId::new("future"), now, now + time::Duration::hours(1)).await.unwrap(), "a lease being revoked is not renewed");

    // Listing with filters, counts.
    let l = s.list(&LeaseFilter { role: Some("token/orders".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(l.len(), 3);
    let l = s.list(&LeaseFilter { state: Some(LeaseState::Pending), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(l.len(), 2);
    let counts = s.counts().await.unwrap();
    assert!(counts.contains(&("token/orders".into(), "token".into(), LeaseState::Pending, 2)), "{counts:?}");

    // Expiring within a window: active leases only, by role; a lease past
    // its expiry that is not yet revoked counts, one beyond the window not.
    s.insert_pending(&lease("soon", "token/orders", "dave", 1800)).await.unwrap();
    s.activate(&LeaseId::new("soon"), &json!({}), now + time::Duration::minutes(30)).await.unwrap();
    s.insert_pending(&lease("late", "token/orders", "dave", 7200)).await.unwrap();
    s.activate(&LeaseId::new("late"), &json!({}), now + time::Duration::hours(2)).await.unwrap();
    s.insert_pending(&lease("overdue", "pki/web", "dave", -5)).await.unwrap();
    s.activate(&LeaseId::new("overdue"), &json!({}), now - time::Duration::seconds(5)).await.unwrap();
    let mut exp = s.expiring(now + time::Duration::hours(1)).await.unwrap();
    exp.sort();
    assert_eq!(exp, vec![("pki/web".into(), "token".into(), 2), ("token/orders".into(), "token".into(), 1)], "{exp:?}");
    assert!(s.expiring(now - time::Duration::hours(1)).await.unwrap().is_empty());
    // The fullest workload: dave holds 3 live leases (bob 2, carol 1 being revoked).
    assert_eq!(s.max_live_per_owner().await.unwrap(), 3);
    for id in ["soon", "late", "overdue"] {
        assert!(s.finish(&LeaseId::new(id), EndReason::Revoked, now).await.unwrap());
    }
    assert_eq!(s.max_live_per_owner().await.unwrap(), 2, "ended leases do not count");

    // The longest-overdue live lease (what `lessor status` shows).
    s.insert_pending(&lease("od-old", "token/orders", "od", -7200)).await.unwrap();
    let old_exp = OffsetDateTime::now_utc() - time::Duration::hours(2);
    assert!(s.activate(&LeaseId::new("od-old"), &json!({}), old_exp).await.unwrap());
    let o = s.oldest_overdue(OffsetDateTime::now_utc()).await.unwrap().expect("an overdue lease");
    assert_eq!(o.id.to_string(), "od-old");
    assert!(s.finish(&LeaseId::new("od-old"), EndReason::Expired, OffsetDateTime::now_utc()).await.unwrap());
    let o = s.oldest_overdue(OffsetDateTime::now_utc()).await.unwrap();
    assert!(o.is_none_or(|o| o.id.to_string() != "od-old"), "an ended lease is not overdue");


    concurrent_transitions(&s).await;
    clock_rules(&s).await;
}

/// Racing callers: of an activation and the orphan sweep on one pending
/// lease exactly one wins; of many `finish` calls on one lease exactly one
/// is true; of many inserts of one id exactly one succeeds.
async fn concurrent_transitions(s: &Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    for i in 0..16 {
        let id = format!("race-{i}");
        s.insert_pending(&lease(&id, "race/r", "racer", 600)).await.unwrap();
        let (a, b) = (s.clone(), s.clone());
        let (ia, ib) = (LeaseId::new(&id), LeaseId::new(&id));
        let act = tokio::spawn(async move { a.activate(&ia, &json!({"n": 1}), now + time::Duration::minutes(10)).await });
        let orph = tokio::spawn(async move { b.mark_orphaned(&ib).await });
        let (act, orph) = (act.await.unwrap().unwrap(), orph.await.unwrap().unwrap());
        assert!(act ^ orph, "{id}: activated {act}, taken by the sweep {orph}: exactly one must win");
        let l = s.get(&LeaseId::new(&id)).await.unwrap().unwrap();
        if act {
            assert_eq!((l.state, l.end_reason), (LeaseState::Active, None), "{l:?}");
        } else {
            assert_eq!((l.state, l.end_reason), (LeaseState::Pending, Some(EndReason::Orphaned)), "{l:?}");
        }
        assert!(s.finish(&LeaseId::new(&id), EndReason::Revoked, now).await.unwrap());
    }

    s.insert_pending(&lease("race-finish", "race/r", "racer", 600)).await.unwrap();
    assert!(s.activate(&LeaseId::new("race-finish"), &json!({}), now + time::Duration::minutes(10)).await.unwrap());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = s.clone();
        let reason = if i % 2 == 0 { EndReason::Revoked } else { EndReason::Expired };
        set.spawn(async move { s.finish(&LeaseId::new("race-finish"), reason, now).await.unwrap() });
    }
    let wins = set.join_all().await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1, "exactly one finish moves a lease to its end");
    let l = s.get(&LeaseId::new("race-finish")).await.unwrap().unwrap();
    assert!(!l.state.is_live() && l.ended_at.is_some(), "{l:?}");

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        set.spawn(async move { s.insert_pending(&lease("race-insert", "race/r", "racer", 600)).await });
    }
    let results = set.join_all().await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(StoreError::Conflict(_)))), "{results:?}");
    assert!(s.finish(&LeaseId::new("race-insert"), EndReason::Orphaned, now).await.unwrap());
}

/// Which clock decides (see `lessor::store::leases`): expiry and renewal
/// by the caller's `now`; a pending lease is orphaned only when older than
/// the grace by both the caller's clock and the database's. The backends
/// disagreed: SQLite compared `issued_at` with the caller's
/// `pending_cutoff` alone, PostgreSQL measured the age by its clock alone.
async fn clock_rules(s: &Arc<dyn Store>) {
    let real = OffsetDateTime::now_utc();
    let later = real + time::Duration::minutes(11);
    let ids = |due: Vec<lessor::store::DueLease>| -> Vec<(String, EndReason)> {
        let mut v: Vec<_> = due
            .into_iter()
            .filter(|d| d.lease.role.starts_with("clock/"))
            .map(|d| (d.lease.id.to_string(), d.reason))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };

    // Expiry: the caller's `now`, whatever the real time. (The lease the
    // bulk revocation above scheduled ends first: it is overdue too.)
    assert!(s.finish(&LeaseId::new("future"), EndReason::Revoked, real).await.unwrap());
    s.insert_pending(&lease("ck-exp", "clock/r", "clock", 600)).await.unwrap();
    assert!(s.activate(&LeaseId::new("ck-exp"), &json!({}), real + time::Duration::minutes(10)).await.unwrap());
    assert!(
        !s.renew(&LeaseId::new("ck-exp"), later, later + time::Duration::minutes(5)).await.unwrap(),
        "expired by the caller's clock: not renewed"
    );
    assert!(s.renew(&LeaseId::new("ck-exp"), real, real + time::Duration::minutes(10)).await.unwrap());
    assert_eq!(ids(s.due(real, real - time::Duration::hours(1), 100).await.unwrap()), vec![]);
    assert_eq!(
        ids(s.due(later, real - time::Duration::hours(1), 100).await.unwrap()),
        vec![("ck-exp".to_owned(), EndReason::Expired)],
        "due by the caller's `now`"
    );
    assert!(s.oldest_overdue(real).await.unwrap().is_none_or(|l| l.id.as_str() != "ck-exp"));
    assert_eq!(s.oldest_overdue(later).await.unwrap().map(|l| l.id.to_string()).as_deref(), Some("ck-exp"));
    assert!(s.finish(&LeaseId::new("ck-exp"), EndReason::Expired, later).await.unwrap());
    let l = s.get(&LeaseId::new("ck-exp")).await.unwrap().unwrap();
    assert_eq!(lessor::store::to_ms(l.ended_at.unwrap()), lessor::store::to_ms(later), "ended_at is the caller's `at`");

    // Pending age: `now - pending_cutoff` (5 min), by both clocks. A caller
    // an hour ahead does not orphan a lease issued a moment ago (the
    // database's clock says it is young); one issued 10 minutes ago is.
    s.insert_pending(&lease("ck-fresh", "clock/r", "clock", 600)).await.unwrap();
    let mut old = lease("ck-old", "clock/r", "clock", 600);
    old.issued_at = real - time::Duration::minutes(10);
    s.insert_pending(&old).await.unwrap();
    let ahead = real + time::Duration::hours(1);
    assert_eq!(
        ids(s.due(ahead, ahead - time::Duration::minutes(5), 100).await.unwrap()),
        vec![("ck-old".to_owned(), EndReason::Orphaned)],
        "the pending age is the database's: a fresh pending lease is not orphaned by a caller's clock ahead"
    );
    // A caller an hour behind orphans nothing it still sees as young: the
    // lease issued 10 minutes ago is in its future (PostgreSQL used to
    // orphan it by its own clock alone).
    let behind = real - time::Duration::hours(1);
    assert_eq!(
        ids(s.due(behind, behind - time::Duration::minutes(5), 100).await.unwrap()),
        vec![],
        "older than the grace by both clocks, not just the database's"
    );
    for id in ["ck-fresh", "ck-old"] {
        assert!(s.finish(&LeaseId::new(id), EndReason::Orphaned, real).await.unwrap());
    }
}
