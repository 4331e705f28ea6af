//! Plugin state: a small key/value space private to one connection.
//!
//! The core backs it with its store (so every replica sees the same CA key and
//! revocation list) and encrypts `*_secret` values at rest. Keys are plain
//! strings; use `/` to build prefixes for [`StateStore::list`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretBox};

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("plugin state: {0}")]
pub struct StateError(pub String);

#[async_trait]
pub trait StateStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError>;
    /// Writes only if the key is absent; returns whether it wrote. Replicas
    /// racing to create the same thing (a CA) agree on one winner.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StateError>;
    /// All entries whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;
    async fn delete(&self, key: &str) -> Result<(), StateError>;

    /// Reads a value stored with [`StateStore::put_secret_if_absent`].
    async fn get_secret(&self, key: &str) -> Result<Option<SecretBox<Vec<u8>>>, StateError>;
    /// Stores a secret (encrypted at rest) if the key is absent.
    async fn put_secret_if_absent(&self, key: &str, value: &SecretBox<Vec<u8>>) -> Result<bool, StateError>;
}

/// An in-memory [`StateStore`], for tests and the conformance kit.
#[derive(Default)]
pub struct MemoryState {
    plain: Mutex<BTreeMap<String, Vec<u8>>>,
    secret: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock<'a>(
        m: &'a Mutex<BTreeMap<String, Vec<u8>>>,
    ) -> Result<std::sync::MutexGuard<'a, BTreeMap<String, Vec<u8>>>, StateError> {
        m.lock().map_err(|_| StateError("memory state lock poisoned".into()))
    }
}

#[async_trait]
impl StateStore for MemoryState {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(Self::lock(&self.plain)?.get(key).cloned())
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        Self::lock(&self.plain)?.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        let mut m = Self::lock(&self.plain)?;
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.to_owned(), value.to_vec());
        Ok(true)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        Ok(Self::lock(&self.plain)?
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        Self::lock(&self.plain)?.remove(key);
        Ok(())
    }

    async fn get_secret(&self, key: &str) -> Result<Option<SecretBox<Vec<u8>>>, StateError> {
        Ok(Self::lock(&self.secret)?
            .get(key)
            .map(|v| SecretBox::new(Box::new(v.clone()))))
    }

    async fn put_secret_if_absent(&self, key: &str, value: &SecretBox<Vec<u8>>) -> Result<bool, StateError> {
        let mut m = Self::lock(&self.secret)?;
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.to_owned(), value.expose_secret().clone());
        Ok(true)
    }
}
