//! [`PersonSessionStore`] conformance on both backends: a session is found
//! by its hash only, its idle end moves forward (never past the absolute
//! end, never backwards, never once ended), sign-out ends one session or
//! all of a person's (and nobody else's), ended sessions are pruned; on
//! PostgreSQL a session ended through one replica is ended for another.

use std::sync::Arc;

use lessor::store::{PersonSession, Store};
use time::{Duration, OffsetDateTime};

use super::{pg_store_db, postgres, sqlite};

fn session(hash: &str, subject: &str, now: OffsetDateTime) -> PersonSession {
    PersonSession {
        token_hash: hash.into(),
        id: format!("ps_{hash}"),
        provider: "corp".into(),
        issuer: "https://login.example.com".into(),
        subject: subject.into(),
        email: format!("{subject}@example.com"),
        name: subject.to_uppercase(),
        groups: vec!["platform".into(), "account:acme".into()],
        via: "browser".into(),
        created_at: now,
        idle_expires_at: now + Duration::minutes(30),
        expires_at: now + Duration::hours(1),
        ended_at: None,
        end_reason: None,
    }
}

#[tokio::test]
async fn sqlite_conforms() {
    let (_d, s) = sqlite().await;
    suite(s).await;
}

#[tokio::test]
async fn postgres_conforms() {
    let (_pg, s) = postgres().await;
    suite(s).await;
}

fn ms(t: OffsetDateTime) -> OffsetDateTime {
    lessor::store::from_ms(lessor::store::to_ms(t)).unwrap()
}

pub async fn suite(s: Arc<dyn Store>) {
    let now = ms(OffsetDateTime::now_utc());
    let a = session("h-a", "alice", now);
    s.person_session_create(&a).await.unwrap();
    assert!(matches!(s.person_session_create(&a).await, Err(lessor::store::StoreError::Conflict(_))));
    assert_eq!(s.person_session_by_hash("h-a").await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.person_session_by_hash("h-none").await.unwrap(), None);

    // Touch: forward, capped at the absolute end, never backwards.
    assert!(s.person_session_touch("h-a", now, now + Duration::minutes(40)).await.unwrap());
    assert_eq!(s.person_session_by_hash("h-a").await.unwrap().unwrap().idle_expires_at, now + Duration::minutes(40));
    assert!(s.person_session_touch("h-a", now, now + Duration::hours(5)).await.unwrap());
    assert_eq!(s.person_session_by_hash("h-a").await.unwrap().unwrap().idle_expires_at, a.expires_at);
    assert!(s.person_session_touch("h-a", now, now + Duration::minutes(1)).await.unwrap());
    assert_eq!(s.person_session_by_hash("h-a").await.unwrap().unwrap().idle_expires_at, a.expires_at);
    // Not once idle-expired at `now`.
    let late = now + Duration::hours(2);
    assert!(!s.person_session_touch("h-a", late, late + Duration::minutes(30)).await.unwrap());

    // Sign-out of one session.
    let b = session("h-b", "alice", now);
    let c = session("h-c", "alice", now);
    let d = session("h-d", "bob", now);
    for x in [&b, &c, &d] {
        s.person_session_create(x).await.unwrap();
    }
    assert!(s.person_session_end("h-b", now, "signed_out").await.unwrap());
    assert!(!s.person_session_end("h-b", now, "signed_out").await.unwrap(), "ending twice changes nothing");
    let ended = s.person_session_by_hash("h-b").await.unwrap().unwrap();
    assert_eq!((ended.ended_at, ended.end_reason.as_deref()), (Some(now), Some("signed_out")));
    assert_eq!(ended.ended_why(now), Some("signed_out"));
    assert!(!s.person_session_touch("h-b", now, now + Duration::minutes(45)).await.unwrap(), "an ended session is not revived");

    // Everywhere: alice's live sessions (a, c), not bob's.
    assert_eq!(s.person_sessions_end_all("corp", "alice", now, "signed_out_everywhere").await.unwrap(), 2);
    assert!(s.person_session_by_hash("h-c").await.unwrap().unwrap().ended_at.is_some());
    assert!(s.person_session_by_hash("h-d").await.unwrap().unwrap().ended_at.is_none());
    assert_eq!(s.person_sessions_end_all("other", "bob", now, "x").await.unwrap(), 0, "provider matters");

    // Prune: only sessions ended before the bound.
    assert_eq!(s.person_sessions_prune(now - Duration::seconds(1), 100).await.unwrap(), 0);
    assert_eq!(s.person_sessions_prune(now + Duration::seconds(1), 2).await.unwrap(), 2, "limit respected");
    assert_eq!(s.person_sessions_prune(now + Duration::seconds(1), 100).await.unwrap(), 1);
    assert!(s.person_session_by_hash("h-d").await.unwrap().is_some(), "a live session is kept");
    // An idle-expired session is pruned once its idle end is past the bound.
    assert_eq!(s.person_sessions_prune(now + Duration::hours(2), 100).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_session_ended_through_one_replica_is_ended_for_the_other() {
    use lessor::store::postgres::PgStore;
    let (_pg, dsn) = pg_store_db();
    let r1: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap());
    let r2: Arc<dyn Store> = Arc::new(PgStore::open(&dsn).await.unwrap());
    let now = ms(OffsetDateTime::now_utc());
    r1.person_session_create(&session("h-x", "alice", now)).await.unwrap();
    assert!(r2.person_session_by_hash("h-x").await.unwrap().unwrap().ended_why(now).is_none());
    assert!(r1.person_session_end("h-x", now, "signed_out").await.unwrap());
    assert_eq!(r2.person_session_by_hash("h-x").await.unwrap().unwrap().ended_why(now), Some("signed_out"));
    assert!(!r2.person_session_touch("h-x", now, now + Duration::minutes(5)).await.unwrap());
}
