//! Plugin state, per connection (a namespace each). Sealed values are
//! opaque here: [`super::state::ConnectionState`] seals them before they
//! arrive. [`PluginStateStore`] is the plugin-state part of every
//! [`Store`](super::Store).
//!
//! Must not import: http, policy, identity.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreError;

/// Plugin key/value state per connection. No method reads a clock: the
/// one time written (`updated_at`, for operators) is the caller's `at`.
#[async_trait]
pub trait PluginStateStore: Send + Sync {
    /// The value under (`conn`, `key`) and whether it is sealed.
    async fn state_get(&self, conn: &str, key: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError>;

    /// Writes (or overwrites) a value, stamped `at`.
    async fn state_put(&self, conn: &str, key: &str, value: &[u8], sealed: bool, at: OffsetDateTime)
        -> Result<(), StoreError>;

    /// Writes a value only where there is none: of concurrent callers
    /// exactly one gets true and its value stays.
    async fn state_put_if_absent(&self, conn: &str, key: &str, value: &[u8], sealed: bool, at: OffsetDateTime)
        -> Result<bool, StoreError>;

    /// Unsealed values of `conn` whose key starts with `prefix`, by key
    /// (byte order). Sealed values are never listed.
    async fn state_list(&self, conn: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Removes a value; removing an absent one is Ok.
    async fn state_delete(&self, conn: &str, key: &str) -> Result<(), StoreError>;
}
