//! [`SecretStore`] conformance: root-credential versions (insert, verify,
//! approve, switch, roll back, retire, rewrap), never two active versions
//! even under racing switches, and every time the caller's.

use std::sync::Arc;

use lessor::store::{SecretState, Store, SecretSwitch};
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
    secrets(&s).await;
    racing_switches(&s).await;
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
}


/// Switches racing on one connection: whichever order they commit in,
/// exactly one version is active at the end and none is lost; retiring
/// ones retire at the caller's `now`, not before.
async fn racing_switches(s: &Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    for v in 1..=8 {
        s.secret_insert(&secret("race", v, "alice")).await.unwrap();
        assert!(s.secret_verified("race", v, true, &json!({"ok": true}), now).await.unwrap());
    }
    let mut set = tokio::task::JoinSet::new();
    for v in 1..=8 {
        let s = s.clone();
        set.spawn(async move {
            let sw = SecretSwitch {
                connection: "race".into(),
                version: v,
                from: SecretState::Candidate,
                need_approval: false,
                by: "bob".into(),
                at: now,
                retiring_until: now + time::Duration::hours(1),
            };
            s.secret_switch(&sw).await.unwrap()
        });
    }
    let wins = set.join_all().await.into_iter().filter(|w| *w).count();
    assert!(wins >= 1, "no switch won");
    let vs = s.secret_versions(Some("race")).await.unwrap();
    assert_eq!(vs.len(), 8);
    let active: Vec<i64> = vs.iter().filter(|v| v.state == SecretState::Active).map(|v| v.version).collect();
    assert_eq!(active.len(), 1, "{vs:?}");
    assert_eq!(s.secret_active_version("race").await.unwrap(), Some(active[0]));
    let retiring = vs.iter().filter(|v| v.state == SecretState::Retiring).count();
    assert_eq!(retiring, wins - 1, "each win but the first retires the one before: {vs:?}");
    assert_eq!(s.secret_retire_due(now).await.unwrap(), 0, "retiring until the caller's clock passes it");
    assert_eq!(s.secret_retire_due(now + time::Duration::hours(2)).await.unwrap(), retiring as u64);
    assert_eq!(s.secret_active_version("race").await.unwrap(), Some(active[0]), "retiring never touches the active one");
}
