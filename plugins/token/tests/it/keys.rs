//! Key rotation and JWKS retention, on a clock the tests move.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lessor_plugin::{MemoryState, StateStore};
use serde_json::{json, Value};

use crate::support::*;

const GRACE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn rotation_publishes_both_keys_until_old_tokens_expire() {
    let (p, state, clock) = plugin(json!({"rotate_every": "10m"})).await;
    let old = issue(p.as_ref(), &clock, "lease-old", MAX_TTL).await;
    let old_kid = kid_of(&token_str(&old));
    assert_eq!(jwks_kids(p.as_ref()).await, vec![old_kid.clone()]);

    // Still young: no rotation.
    clock.advance(Duration::from_secs(9 * 60));
    let same = issue(p.as_ref(), &clock, "lease-same", Duration::from_secs(60)).await;
    assert_eq!(kid_of(&token_str(&same)), old_kid);

    clock.advance(Duration::from_secs(60));
    let new = issue(p.as_ref(), &clock, "lease-new", Duration::from_secs(60)).await;
    let new_kid = kid_of(&token_str(&new));
    assert_ne!(
        new_kid, old_kid,
        "a key older than rotate_every is replaced"
    );
    let rotated_at = clock.now();
    assert_eq!(index_len(state.as_ref()).await, 2);
    assert_eq!(
        jwks_kids(p.as_ref()).await,
        vec![old_kid.clone(), new_kid.clone()]
    );
    assert!(p.validate().await.unwrap().identity.contains(&new_kid));

    // The old key's token still works, and still verifies against the JWKS.
    assert!(is_active(p.as_ref(), &token_str(&old)).await);
    let set = jwks(p.as_ref()).await;
    let key = DecodingKey::from_jwk(set.find(&old_kid).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_aud = false;
    v.validate_exp = false; // the test clock is ahead of the real one
    jsonwebtoken::decode::<Value>(&token_str(&old), &key, &v).unwrap();

    // Retention: the longest max_ttl (+ grace) after the successor appeared.
    let retention_end = rotated_at + MAX_TTL + GRACE;
    clock
        .advance(Duration::try_from(retention_end - clock.now()).unwrap() - Duration::from_secs(1));
    assert!(
        jwks_kids(p.as_ref()).await.contains(&old_kid),
        "kept until every old token has expired"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        jwks_kids(p.as_ref()).await,
        vec![new_kid.clone()],
        "dropped once retention passed"
    );
    // The old token expired long ago; its key is still recognised.
    assert_inactive(p.as_ref(), &token_str(&old)).await;
}

#[tokio::test]
async fn build_rotates_a_stale_key_and_reuses_a_fresh_one() {
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::new());
    let clock = ManualClock::new();
    let a = plugin_on(state.clone(), clock.clone(), json!({"rotate_every": "1h"})).await;
    let first = jwks_kids(a.as_ref()).await;

    clock.advance(Duration::from_secs(30 * 60));
    let b = plugin_on(state.clone(), clock.clone(), json!({"rotate_every": "1h"})).await;
    assert_eq!(jwks_kids(b.as_ref()).await, first, "a fresh key is reused");

    clock.advance(Duration::from_secs(31 * 60));
    let c = plugin_on(state.clone(), clock.clone(), json!({"rotate_every": "1h"})).await;
    let kids = jwks_kids(c.as_ref()).await;
    assert_eq!(kids.len(), 2, "a stale key is replaced at build");
    assert_eq!(kids[0], first[0]);
    assert_eq!(index_len(state.as_ref()).await, 2);
}

#[tokio::test]
async fn algorithm_change_takes_effect_with_a_new_key() {
    // Both keys are made within one second; which is newest must not depend
    // on how their kids sort, so try a few pairs.
    for _ in 0..6 {
        algorithm_change_once().await;
    }
}

async fn algorithm_change_once() {
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::new());
    let clock = ManualClock::new();
    let es = plugin_on(state.clone(), clock.clone(), Value::Null).await;
    let es_token = issue(es.as_ref(), &clock, "lease-es", Duration::from_secs(600)).await;

    let ed = plugin_on(state.clone(), clock.clone(), json!({"algorithm": "EdDSA"})).await;
    let ed_token = issue(ed.as_ref(), &clock, "lease-ed", Duration::from_secs(600)).await;
    let header = jsonwebtoken::decode_header(&token_str(&ed_token)).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let set = jwks(ed.as_ref()).await;
    assert_eq!(
        set.keys.len(),
        2,
        "the ES256 key stays published for its tokens"
    );
    assert!(is_active(ed.as_ref(), &token_str(&es_token)).await);
    assert!(is_active(ed.as_ref(), &token_str(&ed_token)).await);
    assert!(ed.validate().await.unwrap().identity.ends_with("(EdDSA)"));
}

#[tokio::test]
async fn eddsa_rotation_end_to_end() {
    let (p, _, clock) = plugin(json!({"algorithm": "EdDSA", "rotate_every": "5m"})).await;
    let old = issue(p.as_ref(), &clock, "lease-1", Duration::from_secs(600)).await;
    clock.advance(Duration::from_secs(301));
    let new = issue(p.as_ref(), &clock, "lease-2", Duration::from_secs(600)).await;
    assert_ne!(kid_of(&token_str(&old)), kid_of(&token_str(&new)));
    assert_eq!(jwks(p.as_ref()).await.keys.len(), 2);
    assert!(is_active(p.as_ref(), &token_str(&old)).await);
    assert!(is_active(p.as_ref(), &token_str(&new)).await);
}
