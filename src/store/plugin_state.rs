//! Plugin state, per connection (a namespace each). Sealed values are
//! opaque here: [`super::state::ConnectionState`] seals them before they
//! arrive. [`PluginStateStore`] is the plugin-state part of every
//! [`Store`](super::Store).
//!
//! Must not import: http, policy, identity.

use async_trait::async_trait;

use super::StoreError;

/// Plugin key/value state per connection.
#[async_trait]
pub trait PluginStateStore: Send + Sync {
    async fn state_get(&self, conn: &str, key: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError>;

    async fn state_put(&self, conn: &str, key: &str, value: &[u8], sealed: bool) -> Result<(), StoreError>;

    async fn state_put_if_absent(&self, conn: &str, key: &str, value: &[u8], sealed: bool)
        -> Result<bool, StoreError>;

    async fn state_list(&self, conn: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    async fn state_delete(&self, conn: &str, key: &str) -> Result<(), StoreError>;
}
