//! The plugin SDK's `StateStore`, backed by the lease store: one namespace
//! per connection, secrets sealed with the seal key before they are written.

use std::sync::Arc;

use async_trait::async_trait;
use lessor_plugin::secrecy::{ExposeSecret, SecretBox};
use lessor_plugin::{StateError, StateStore};
use time::OffsetDateTime;


use super::{Store, StoreError};
use crate::seal::Seal;

pub struct ConnectionState {
    store: Arc<dyn Store>,
    seal: Arc<Seal>,
    connection: String,
}

impl ConnectionState {
    pub fn new(store: Arc<dyn Store>, seal: Arc<Seal>, connection: &str) -> ConnectionState {
        ConnectionState { store, seal, connection: connection.to_owned() }
    }

    fn aad(&self, key: &str) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.connection.len() + key.len() + 1);
        v.extend_from_slice(self.connection.as_bytes());
        v.push(0);
        v.extend_from_slice(key.as_bytes());
        v
    }
}

fn se(e: StoreError) -> StateError {
    StateError(e.to_string())
}

#[async_trait]
impl StateStore for ConnectionState {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self.store.state_get(&self.connection, key).await.map_err(se)? {
            Some((_, true)) => Err(StateError(format!("`{key}` holds a secret; read it with get_secret"))),
            Some((v, false)) => Ok(Some(v)),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.store.state_put(&self.connection, key, value, false, OffsetDateTime::now_utc()).await.map_err(se)
    }

    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        self.store.state_put_if_absent(&self.connection, key, value, false, OffsetDateTime::now_utc()).await.map_err(se)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.store.state_list(&self.connection, prefix).await.map_err(se)
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.store.state_delete(&self.connection, key).await.map_err(se)
    }

    async fn get_secret(&self, key: &str) -> Result<Option<SecretBox<Vec<u8>>>, StateError> {
        match self.store.state_get(&self.connection, key).await.map_err(se)? {
            Some((sealed, true)) => self
                .seal
                .open(&self.aad(key), &sealed)
                .map(Some)
                .map_err(|e| StateError(format!("`{key}`: {e}"))),
            Some((_, false)) => Err(StateError(format!("`{key}` is not a secret"))),
            None => Ok(None),
        }
    }

    async fn put_secret_if_absent(&self, key: &str, value: &SecretBox<Vec<u8>>) -> Result<bool, StateError> {
        let sealed = self.seal.seal(&self.aad(key), value.expose_secret());
        self.store.state_put_if_absent(&self.connection, key, &sealed, true, OffsetDateTime::now_utc()).await.map_err(se)
    }
}
