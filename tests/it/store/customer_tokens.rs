//! [`CustomerTokenStore`] conformance on SQLite and PostgreSQL: insert and
//! lookups, rotation all-or-nothing (exactly one of racing rotations wins),
//! conditional revocation, warnings marked once, per-account counts, usage
//! batches kept to the last N with daily counts, and history retention.
//! Every time is the caller's.

use std::sync::Arc;

use lessor::store::{CustomerToken, Store, StoreError, TokenUse, TokenWarning};
use time::{Duration, OffsetDateTime};

use super::{postgres, sqlite};

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

fn at(secs: i64) -> OffsetDateTime {
    // Whole milliseconds, as stored.
    OffsetDateTime::from_unix_timestamp(1_900_000_000 + secs).unwrap()
}

fn token(id: &str, account: &str, created: i64, expires: i64) -> CustomerToken {
    CustomerToken {
        id: id.into(),
        token_hash: format!("hash-{id}"),
        last4: "AbC1".into(),
        account: account.into(),
        environment: "production".into(),
        name: format!("name of {id}"),
        owner: "dev#carol".into(),
        owner_email: "carol@example.com".into(),
        scopes: vec!["customers.read".into(), "invoices.read".into()],
        created_at: at(created),
        created_by: "dev#carol".into(),
        expires_at: at(expires),
        replaces: None,
        replaced_by: None,
        rotated_at: None,
        rotated_by: None,
        retiring_until: None,
        revoked_at: None,
        revoked_by: None,
        last_used_at: None,
        expiry_warned_at: None,
        rotation_warned_at: None,
    }
}

pub async fn suite(s: Arc<dyn Store>) {
    let day = 86_400;
    let a = token("ctk_a", "acme", 0, 30 * day);
    s.ct_insert(&a).await.unwrap();
    assert_eq!(s.ct_get("ctk_a").await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.ct_by_hash("hash-ctk_a").await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.ct_by_hash("nope").await.unwrap(), None);
    let mut dup = token("ctk_other", "acme", 0, day);
    dup.token_hash = a.token_hash.clone();
    assert!(matches!(s.ct_insert(&dup).await, Err(StoreError::Conflict(_))), "hash is unique");
    assert!(matches!(s.ct_insert(&token("ctk_a", "acme", 0, day)).await, Err(StoreError::Conflict(_))), "id is unique");
    s.ct_insert(&token("ctk_g", "globex", 10, 90 * day)).await.unwrap();

    // Rotation: racing callers, exactly one wins; the loser changes nothing.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = s.clone();
        let mut new = token(&format!("ctk_new{i}"), "acme", 100, 100 + 30 * day);
        new.replaces = Some("ctk_a".into());
        set.spawn(async move { (i, s.ct_rotate("ctk_a", &new, at(100 + 7 * day)).await.unwrap()) });
    }
    let winners: Vec<i32> = set.join_all().await.into_iter().filter(|(_, w)| *w).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let new_id = format!("ctk_new{}", winners[0]);
    let old = s.ct_get("ctk_a").await.unwrap().unwrap();
    assert_eq!(old.replaced_by.as_deref(), Some(new_id.as_str()));
    assert_eq!(old.retiring_until, Some(at(100 + 7 * day)));
    assert_eq!(old.rotated_at, Some(at(100)));
    assert_eq!(s.ct_list("acme", 100).await.unwrap().len(), 2, "only the winner's replacement exists");
    assert!(old.works_at(at(100 + 7 * day - 1)) && !old.works_at(at(100 + 7 * day)));

    // Revocation: conditional on still working at `at`.
    assert!(!s.ct_revoke("ctk_a", at(100 + 8 * day), "dev#carol").await.unwrap(), "ended by its overlap");
    assert!(s.ct_revoke(&new_id, at(200), "dev#carol").await.unwrap());
    assert!(!s.ct_revoke(&new_id, at(201), "dev#dave").await.unwrap(), "once");
    let n = s.ct_get(&new_id).await.unwrap().unwrap();
    assert_eq!((n.revoked_at, n.revoked_by.as_deref()), (Some(at(200)), Some("dev#carol")));
    assert!(!s.ct_rotate(&new_id, &token("ctk_x", "acme", 300, day), at(400)).await.unwrap(), "a revoked token is not rotated");
    assert!(s.ct_get("ctk_x").await.unwrap().is_none());

    // Warnings: which tokens need one, marked once among racing callers.
    let w = s.ct_needing_warning(at(25 * day), at(32 * day), at(-90 * day), 10).await.unwrap();
    assert!(w.is_empty(), "ctk_a is replaced, the replacement revoked, globex far away: {w:?}");
    s.ct_insert(&token("ctk_b", "acme", 0, 30 * day)).await.unwrap();
    let w = s.ct_needing_warning(at(24 * day), at(31 * day), at(-90 * day), 10).await.unwrap();
    assert_eq!(w.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["ctk_b"]);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        set.spawn(async move { s.ct_mark_warned("ctk_b", TokenWarning::Expiry, at(24 * day)).await.unwrap() });
    }
    assert_eq!(set.join_all().await.into_iter().filter(|w| *w).count(), 1);
    assert!(s.ct_needing_warning(at(24 * day), at(31 * day), at(-90 * day), 10).await.unwrap().is_empty());
    // Not rotated: created before the bound.
    let w = s.ct_needing_warning(at(24 * day), at(24 * day), at(5), 10).await.unwrap();
    assert_eq!(w.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["ctk_b"]);
    assert!(s.ct_mark_warned("ctk_b", TokenWarning::Rotation, at(24 * day)).await.unwrap());

    // Counts per account of tokens that work now.
    let c = s.ct_counts(at(150), at(31 * day), at(5)).await.unwrap();
    let acme = c.iter().find(|c| c.account == "acme").unwrap();
    assert_eq!((acme.active, acme.retiring, acme.expiring, acme.not_rotated), (1, 1, 1, 1), "{c:?}");
    let globex = c.iter().find(|c| c.account == "globex").unwrap();
    assert_eq!((globex.active, globex.expiring, globex.not_rotated), (1, 0, 0));

    // Uses: one batch, last N kept, days counted, last use never moves back.
    let u = |i: i64, ok: bool| TokenUse {
        token_id: "ctk_b".into(),
        at: at(1000 + i),
        source: format!("192.0.2.{i}"),
        user_agent: "ua".into(),
        ok,
    };
    let batch: Vec<TokenUse> = (0..10).map(|i| u(i, i % 3 != 0)).collect();
    s.ct_record_uses(&batch, 4).await.unwrap();
    let uses = s.ct_uses("ctk_b", 100).await.unwrap();
    assert_eq!(uses.iter().map(|u| u.source.as_str()).collect::<Vec<_>>(), vec!["192.0.2.9", "192.0.2.8", "192.0.2.7", "192.0.2.6"]);
    assert_eq!(s.ct_get("ctk_b").await.unwrap().unwrap().last_used_at, Some(at(1009)));
    s.ct_record_uses(&[u(-500, true)], 4).await.unwrap();
    assert_eq!(s.ct_get("ctk_b").await.unwrap().unwrap().last_used_at, Some(at(1009)), "never moved back");
    let days = s.ct_days("ctk_b").await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!((days[0].ok, days[0].failed), (7, 4));
    s.ct_record_uses(&[], 4).await.unwrap();

    // Retention: tokens ended before the bound go, with their uses.
    let pruned = s.ct_prune(at(60 * day), "2000-01-01", 100).await.unwrap();
    assert_eq!(pruned, 3, "ctk_a (overlap ended), the revoked replacement, ctk_b (expired)");
    assert!(s.ct_get("ctk_b").await.unwrap().is_none());
    assert!(s.ct_uses("ctk_b", 10).await.unwrap().is_empty());
    assert!(s.ct_days("ctk_b").await.unwrap().is_empty());
    assert!(s.ct_get("ctk_g").await.unwrap().is_some());
    let _ = Duration::ZERO;
}
