//! Several plugin instances (replicas) on one state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::secrecy::SecretBox;
use lessor_plugin::{LeaseId, LeaseRef, MemoryState, StateError, StateStore};
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn replicas_share_keys_and_revocations() {
    let state: Arc<dyn StateStore> = Arc::new(MemoryState::new());
    let clock = ManualClock::new();
    let a = plugin_on(state.clone(), clock.clone(), json!({"rotate_every": "10m"})).await;
    let b = plugin_on(state.clone(), clock.clone(), json!({"rotate_every": "10m"})).await;
    assert_eq!(jwks_kids(a.as_ref()).await, jwks_kids(b.as_ref()).await);
    assert_eq!(
        index_len(state.as_ref()).await,
        1,
        "the second replica reuses the first one's key"
    );

    let from_a = issue(a.as_ref(), &clock, "lease-a", Duration::from_secs(1800)).await;
    assert!(is_active(b.as_ref(), &token_str(&from_a)).await);
    b.revoke(&LeaseRef {
        lease_id: LeaseId::new("lease-a"),
        role: "orders".into(),
        handle: Some(from_a.handle.clone()),
        expires_at: from_a.expires_at,
        root_version: None,
    })
    .await
    .unwrap();
    assert_inactive(a.as_ref(), &token_str(&from_a)).await;

    // A rotates; B has never seen the new key but recognises its tokens, and
    // signs with it instead of rotating again.
    clock.advance(Duration::from_secs(11 * 60));
    let rotated = issue(a.as_ref(), &clock, "lease-a2", Duration::from_secs(600)).await;
    let new_kid = kid_of(&token_str(&rotated));
    assert!(is_active(b.as_ref(), &token_str(&rotated)).await);
    let from_b = issue(b.as_ref(), &clock, "lease-b", Duration::from_secs(600)).await;
    assert_eq!(kid_of(&token_str(&from_b)), new_kid);
    assert_eq!(index_len(state.as_ref()).await, 2);
    assert!(jwks_kids(b.as_ref()).await.contains(&new_kid));
}

/// A state whose `keyindex/` writes can be lost, as if the replica died
/// between claiming a rotation and recording the key.
struct LosesIndexWrites {
    inner: MemoryState,
    lose: AtomicBool,
}

#[async_trait]
impl StateStore for LosesIndexWrites {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.inner.put(key, value).await
    }
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        if key.starts_with("keyindex/") && self.lose.load(Ordering::SeqCst) {
            return Ok(true);
        }
        self.inner.put_if_absent(key, value).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.inner.delete(key).await
    }
    async fn get_secret(&self, key: &str) -> Result<Option<SecretBox<Vec<u8>>>, StateError> {
        self.inner.get_secret(key).await
    }
    async fn put_secret_if_absent(
        &self,
        key: &str,
        value: &SecretBox<Vec<u8>>,
    ) -> Result<bool, StateError> {
        self.inner.put_secret_if_absent(key, value).await
    }
}

#[tokio::test]
async fn a_rotation_claimed_by_another_replica_is_adopted() {
    let state = Arc::new(LosesIndexWrites {
        inner: MemoryState::new(),
        lose: AtomicBool::new(false),
    });
    let clock = ManualClock::new();
    let cfg = json!({"rotate_every": "10m"});
    let a = plugin_on(state.clone(), clock.clone(), cfg.clone()).await;
    let first = jwks_kids(a.as_ref()).await.remove(0);

    // A claims the rotation slot after `first`, but its index write is lost.
    clock.advance(Duration::from_secs(11 * 60));
    state.lose.store(true, Ordering::SeqCst);
    issue(a.as_ref(), &clock, "lease-lost", Duration::from_secs(60)).await;
    state.lose.store(false, Ordering::SeqCst);
    let slot: Value = serde_json::from_slice(
        &state
            .get(&format!("rotations/{first}"))
            .await
            .unwrap()
            .expect("slot claimed"),
    )
    .unwrap();
    let claimed = slot["kid"].as_str().unwrap().to_owned();
    assert_eq!(index_len(state.as_ref()).await, 1);

    // B, wanting to rotate too, loses the slot and finishes A's rotation.
    let b = plugin_on(state.clone(), clock.clone(), cfg).await;
    let from_b = issue(b.as_ref(), &clock, "lease-b", Duration::from_secs(60)).await;
    assert_eq!(
        kid_of(&token_str(&from_b)),
        claimed,
        "the slot's key is used, not a second new one"
    );
    assert_eq!(index_len(state.as_ref()).await, 2);
    assert_eq!(jwks_kids(b.as_ref()).await, vec![first, claimed]);
    assert!(is_active(a.as_ref(), &token_str(&from_b)).await);
}
