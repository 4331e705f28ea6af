//! The generic store suite. Every backend runs the same checks; SQLite (the
//! embedded default) here, PostgreSQL when its backend lands.

use std::sync::Arc;
use std::time::Duration;

use lessor::store::{EndReason, Lease, LeaseFilter, LeaseState, Store};
use lessor_plugin::LeaseId;
use serde_json::json;
use time::OffsetDateTime;

fn lease(id: &str, role: &str, subject: &str, expires_in: i64) -> Lease {
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

    // Plugin state: namespaced by connection, prefix listing, put_if_absent.
    s.state_put("c1", "crl/web/01", b"x", false).await.unwrap();
    s.state_put("c1", "crl/web/02", b"y", false).await.unwrap();
    s.state_put("c1", "crl/api/01", b"z", false).await.unwrap();
    s.state_put("c2", "crl/web/03", b"w", false).await.unwrap();
    let keys: Vec<String> = s.state_list("c1", "crl/web/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["crl/web/01", "crl/web/02"]);
    assert!(s.state_put_if_absent("c1", "ca", b"first", true).await.unwrap());
    assert!(!s.state_put_if_absent("c1", "ca", b"second", true).await.unwrap());
    assert_eq!(s.state_get("c1", "ca").await.unwrap(), Some((b"first".to_vec(), true)));
    assert!(s.state_list("c1", "c").await.unwrap().iter().all(|(k, _)| k != "ca"), "sealed values are not listed");
    s.state_delete("c1", "crl/web/01").await.unwrap();
    assert_eq!(s.state_get("c1", "crl/web/01").await.unwrap(), None);

    assert!(s.meta_put_if_absent("k", "v").await.unwrap());
    assert!(!s.meta_put_if_absent("k", "w").await.unwrap());
    assert_eq!(s.meta_get("k").await.unwrap().as_deref(), Some("v"));

    // The longest-overdue live lease (what `lessor status` shows).
    s.insert_pending(&lease("od-old", "token/orders", "od", -7200)).await.unwrap();
    let old_exp = OffsetDateTime::now_utc() - time::Duration::hours(2);
    assert!(s.activate(&LeaseId::new("od-old"), &json!({}), old_exp).await.unwrap());
    let o = s.oldest_overdue(OffsetDateTime::now_utc()).await.unwrap().expect("an overdue lease");
    assert_eq!(o.id.to_string(), "od-old");
    assert!(s.finish(&LeaseId::new("od-old"), EndReason::Expired, OffsetDateTime::now_utc()).await.unwrap());
    let o = s.oldest_overdue(OffsetDateTime::now_utc()).await.unwrap();
    assert!(o.is_none_or(|o| o.id.to_string() != "od-old"), "an ended lease is not overdue");

    // Replica heartbeats: recorded with the store's clock, updated in place,
    // listed while recent, removed on shutdown.
    let me = lessor::store::Replica {
        id: "ignored: the store uses its own id".into(),
        host: "h1".into(),
        pid: 42,
        version: "0.1.0".into(),
        policy_version: "aaaa".into(),
        started_at_ms: 1_000,
        seen_at_ms: 0,
    };
    assert!(s.replicas(Duration::from_secs(60)).await.unwrap().is_empty());
    s.heartbeat(&me).await.unwrap();
    s.heartbeat(&lessor::store::Replica { policy_version: "bbbb".into(), ..me.clone() }).await.unwrap();
    let live = s.replicas(Duration::from_secs(60)).await.unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    let r = &live[0];
    assert_eq!((r.id.as_str(), r.host.as_str(), r.pid, r.policy_version.as_str()), (s.replica_id(), "h1", 42, "bbbb"));
    let now_ms = lessor::store::to_ms(OffsetDateTime::now_utc());
    assert!((r.seen_at_ms - now_ms).abs() < 5_000, "seen_at {} vs now {now_ms}", r.seen_at_ms);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.replicas(Duration::from_millis(10)).await.unwrap().is_empty(), "older than `within`");
    s.remove_replica().await.unwrap();
    assert!(s.replicas(Duration::from_secs(60)).await.unwrap().is_empty());

    secrets(&s).await;
    jobs_and_retention(&s).await;
}

/// Bulk revocation jobs are recorded with their tags in one transaction;
/// unrevocable leases are counted apart; a credential found after its
/// lease ended makes the lease live again; retention deletes ended leases
/// only, in bounded batches.
async fn jobs_and_retention(s: &Arc<dyn Store>) {
    use lessor::store::{RevokeFilter, StoreError};
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

fn secret(conn: &str, version: i64, by: &str) -> lessor::store::SecretVersion {
    lessor::store::SecretVersion {
        connection: conn.into(),
        version,
        state: lessor::store::SecretState::Candidate,
        ciphertext: vec![1, 2, 3],
        wrapped_dek: vec![4, 5],
        kek_id: "k1".into(),
        fingerprint: "abcd".into(),
        set_by: by.into(),
        reason: "why".into(),
        set_at: OffsetDateTime::now_utc(),
        verified_ok: None,
        verification: None,
        verified_at: None,
        approved_by: None,
        approved_at: None,
        activated_by: None,
        activated_at: None,
        retiring_until: None,
    }
}

/// Root credential versions: insert, verify, approve (not by the setter),
/// switch in one transaction (never two actives), rollback, retire, rewrap.
async fn secrets(s: &Arc<dyn Store>) {
    use lessor::store::{Rewrap, SecretState, SecretSwitch};
    let now = OffsetDateTime::now_utc();
    s.secret_insert(&secret("c", 1, "alice")).await.unwrap();
    assert!(matches!(s.secret_insert(&secret("c", 1, "bob")).await, Err(lessor::store::StoreError::Conflict(_))));
    s.secret_insert(&secret("c", 2, "alice")).await.unwrap();
    let switch = |v: i64, from: SecretState, need_approval: bool| SecretSwitch {
        connection: "c".into(),
        version: v,
        from,
        need_approval,
        by: "bob".into(),
        at: now,
        retiring_until: now + time::Duration::hours(1),
    };
    assert!(!s.secret_switch(&switch(1, SecretState::Candidate, false)).await.unwrap(), "unverified");
    assert!(s.secret_verified("c", 1, true, &json!({"ok": true}), now).await.unwrap());
    assert!(!s.secret_switch(&switch(1, SecretState::Candidate, true)).await.unwrap(), "unapproved");
    assert!(!s.secret_approve("c", 1, "alice", now).await.unwrap(), "self-approval");
    assert!(s.secret_approve("c", 1, "bob", now).await.unwrap());
    assert!(s.secret_switch(&switch(1, SecretState::Candidate, true)).await.unwrap());
    assert_eq!(s.secret_active_version("c").await.unwrap(), Some(1));
    // A failing switch leaves the active one active.
    assert!(!s.secret_switch(&switch(2, SecretState::Candidate, false)).await.unwrap());
    assert_eq!(s.secret_active_version("c").await.unwrap(), Some(1));
    s.secret_verified("c", 2, true, &json!({"ok": true}), now).await.unwrap();
    assert!(s.secret_switch(&switch(2, SecretState::Candidate, false)).await.unwrap());
    let vs = s.secret_versions(Some("c")).await.unwrap();
    let states: Vec<_> = vs.iter().map(|v| v.state).collect();
    assert_eq!(states, [SecretState::Retiring, SecretState::Active]);
    assert_eq!(vs[0].approved_by.as_deref(), Some("bob"));
    assert_eq!(vs[0].verification, Some(json!({"ok": true})));
    // Rollback to the retiring one.
    assert!(s.secret_switch(&switch(1, SecretState::Retiring, false)).await.unwrap());
    assert_eq!(s.secret_active_version("c").await.unwrap(), Some(1));
    assert_eq!(s.secret_retire_due(now + time::Duration::hours(2)).await.unwrap(), 1);
    assert_eq!(s.secret_versions(None).await.unwrap()[1].state, SecretState::Retired);
    // Rewrap: all or nothing.
    let rw = |v: i64, old: &str| Rewrap { connection: "c".into(), version: v, old_kek_id: old.into(), wrapped_dek: vec![9], kek_id: "k2".into() };
    assert!(!s.secret_rewrap(&[rw(1, "k1"), rw(2, "nope")]).await.unwrap());
    assert!(s.secret_versions(None).await.unwrap().iter().all(|v| v.kek_id == "k1"), "nothing changed");
    assert!(s.secret_rewrap(&[rw(1, "k1"), rw(2, "k1")]).await.unwrap());
    assert!(s.secret_versions(None).await.unwrap().iter().all(|v| v.kek_id == "k2" && v.wrapped_dek == [9]));
    // Leases record their root version.
    s.insert_pending(&lease("rv", "c/r", "s", 60)).await.unwrap();
    assert!(s.activate_at_version(&LeaseId::new("rv"), &json!({}), now + time::Duration::minutes(1), Some(2)).await.unwrap());
    assert_eq!(s.get(&LeaseId::new("rv")).await.unwrap().unwrap().root_version, Some(2));
    crate::admin_tokens::store_suite(&s).await;
}

#[tokio::test]
async fn sqlite_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = lessor::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    suite(s).await;
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
            Ok(()) => ok += 1,
            Err(lessor::store::StoreError::Conflict(_)) => dup += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((ok, dup), (180, 20));
    let all = s.list(&LeaseFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 180, "every non-duplicate write is durable");
}

/// A throwaway PostgreSQL server with an empty database `lessor`, and a DSN
/// to that database.
pub fn pg_store_db() -> (lessor_postgres::testkit::TempPostgres, String) {
    let pg = lessor_postgres::testkit::TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    pg.psql("postgres", "CREATE DATABASE lessor").unwrap();
    let dsn = pg.dsn("postgres", pg.superuser_password(), "lessor");
    (pg, dsn)
}

#[tokio::test]
async fn postgres_passes_the_store_suite() {
    let (_pg, dsn) = pg_store_db();
    let s: Arc<dyn Store> = Arc::new(lessor::store::postgres::PgStore::open(&dsn).await.unwrap());
    assert_eq!((s.backend(), s.exclusive()), ("postgres", false));
    // Migrations are idempotent: a second replica opening the same store.
    let _again = lessor::store::postgres::PgStore::open(&dsn).await.unwrap();
    suite(s).await;
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
    assert_eq!(due, ["pg00", "pki1", "tok0", "pg01", "tok1"], "round-robin, at most 2 per connection");
    let due = ids(s.due(now, now - time::Duration::hours(2), 100).await.unwrap());
    assert_eq!(due.len(), 44, "{due:?}");
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
