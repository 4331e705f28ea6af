//! Unauthenticated callers (JWKS fetches, introspection of tokens naming
//! unknown kids) are answered from memory: the key index is read for the
//! JWKS at most once per `RELOAD_MIN`, and for unknown kids within a small
//! rate limit, however many requests arrive.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use lessor_plugin::secrecy::SecretBox;
use lessor_plugin::{MemoryState, StateError, StateStore};
use lessor_token::keys::{RELOAD_MIN, UNKNOWN_KID_READ_BURST};
use serde_json::json;

use crate::support::*;

/// Counts every read of the state.
#[derive(Default)]
struct Counting {
    inner: MemoryState,
    reads: AtomicUsize,
}

#[async_trait]
impl StateStore for Counting {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.inner.put(key, value).await
    }
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        self.inner.put_if_absent(key, value).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.inner.delete(key).await
    }
    async fn get_secret(&self, key: &str) -> Result<Option<SecretBox<Vec<u8>>>, StateError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_secret(key).await
    }
    async fn put_secret_if_absent(&self, key: &str, value: &SecretBox<Vec<u8>>) -> Result<bool, StateError> {
        self.inner.put_secret_if_absent(key, value).await
    }
}

/// A well-formed token (16-hex kid) that no key of the connection signed.
fn unknown_kid_token(n: usize) -> String {
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "ES256", "kid": format!("{n:016x}")})),
        b64(json!({"iss": ISSUER, "sub": "x"}))
    )
}

#[tokio::test]
async fn jwks_and_unknown_kids_cost_at_most_one_state_read_per_reload_interval() {
    let state = Arc::new(Counting::default());
    let clock = ManualClock::new();
    let p = plugin_on(state.clone(), clock.clone(), json!({})).await;
    // A second replica that meets no junk kids.
    let quiet = plugin_on(state.clone(), clock.clone(), json!({})).await;
    let kids = jwks_kids(p.as_ref()).await;
    assert_eq!(kids.len(), 1);

    let before = state.reads.load(Ordering::SeqCst);
    for n in 0..200 {
        assert_eq!(jwks_kids(p.as_ref()).await, kids);
        assert!(introspect(p.as_ref(), &unknown_kid_token(n)).await.is_none(), "unknown kid is not ours");
    }
    let reads = state.reads.load(Ordering::SeqCst) - before;
    // The burst, and at most one more if the loop took over a second.
    let bound = UNKNOWN_KID_READ_BURST as usize + 1;
    assert!(reads <= bound, "200 JWKS fetches and 200 unknown kids read the state {reads} times");

    // A key another replica just made is found with one read.
    let other = plugin_on(state.clone(), clock.clone(), json!({"rotate_every": "10m"})).await;
    clock.advance(Duration::from_secs(11 * 60));
    let rotated = issue(other.as_ref(), &clock, "lease-r", Duration::from_secs(60)).await;
    let before = state.reads.load(Ordering::SeqCst);
    assert!(is_active(quiet.as_ref(), &token_str(&rotated)).await, "a new key of another replica is found");
    clock.advance(RELOAD_MIN);
    assert!(jwks_kids(quiet.as_ref()).await.contains(&kid_of(&token_str(&rotated))));
    let reads = state.reads.load(Ordering::SeqCst) - before;
    assert!(reads <= 3, "{reads} reads: the index for the kid, the revocation lookup, the index for the JWKS");
}
