//! Managed root credentials (`connection_secrets`): versions of each
//! connection's root secret, encrypted (ciphertexts are opaque here), and
//! their life (candidate, active, retiring, retired). [`SecretStore`] is
//! the root-credential part of every [`Store`](super::Store).
//!
//! Which clock decides: always the caller's (`at` in `secret_verified`,
//! `secret_approve`, [`SecretSwitch::at`] and `retiring_until`, `now` in
//! `secret_retire_due`); the store reads no clock.
//!
//! Must not import: http, policy, identity.

use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::StoreError;

/// Where a version of a connection's root secret is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretState {
    /// Stored, not (yet) used; verified and approved before it may switch.
    Candidate,
    /// New issuance uses it. At most one per connection.
    Active,
    /// The previous active one: kept until `retiring_until` so leases issued
    /// under it can be revoked, and so a rollback can return to it.
    Retiring,
    /// Gone for good (the ciphertext stays for the record).
    Retired,
}

impl SecretState {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretState::Candidate => "candidate",
            SecretState::Active => "active",
            SecretState::Retiring => "retiring",
            SecretState::Retired => "retired",
        }
    }
}

impl FromStr for SecretState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [SecretState::Candidate, SecretState::Active, SecretState::Retiring, SecretState::Retired]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown secret state `{s}`"))
    }
}

/// One version of a connection's root secret as stored: encrypted, with
/// who set, verified, approved and activated it.
#[derive(Clone)]
pub struct SecretVersion {
    pub connection: String,
    pub version: i64,
    pub state: SecretState,
    /// `nonce | AES-256-GCM(secret)` under the version's data key.
    pub ciphertext: Vec<u8>,
    /// The data key, wrapped by the key-encryption key `kek_id`.
    pub wrapped_dek: Vec<u8>,
    pub kek_id: String,
    /// A keyed hash prefix of the secret (8 hex digits; empty for versions
    /// stored before fingerprints were keyed).
    pub fingerprint: String,
    pub set_by: String,
    pub reason: String,
    pub set_at: OffsetDateTime,
    pub verified_ok: Option<bool>,
    /// The verification result (JSON: ok, message, identity, details, warnings).
    pub verification: Option<serde_json::Value>,
    pub verified_at: Option<OffsetDateTime>,
    pub approved_by: Option<String>,
    pub approved_at: Option<OffsetDateTime>,
    pub activated_by: Option<String>,
    pub activated_at: Option<OffsetDateTime>,
    pub retiring_until: Option<OffsetDateTime>,
}

impl std::fmt::Debug for SecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVersion")
            .field("connection", &self.connection)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("kek_id", &self.kek_id)
            .field("set_by", &self.set_by)
            .finish_non_exhaustive()
    }
}

/// Switches a connection's active root secret to `version` (activate or
/// rollback): in one transaction the active one becomes `retiring` until
/// `retiring_until` and `version` (in state `from`) becomes active.
#[derive(Debug, Clone)]
pub struct SecretSwitch {
    pub connection: String,
    pub version: i64,
    /// `Candidate` (activate: must be verified ok, and approved when
    /// `need_approval`) or `Retiring` (rollback: must not have run out).
    pub from: SecretState,
    pub need_approval: bool,
    pub by: String,
    pub at: OffsetDateTime,
    pub retiring_until: OffsetDateTime,
}

/// A data key re-wrapped under a new key-encryption key (`lessor rekey`).
#[derive(Debug, Clone)]
pub struct Rewrap {
    pub connection: String,
    pub version: i64,
    pub old_kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub kek_id: String,
}

/// Versions of connections' root secrets.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Stores a new version. `Conflict` if (connection, version) exists.
    async fn secret_insert(&self, v: &SecretVersion) -> Result<(), StoreError>;

    /// Every version of `connection` (all connections when `None`), by
    /// connection and version.
    async fn secret_versions(&self, connection: Option<&str>) -> Result<Vec<SecretVersion>, StoreError>;

    /// The active version of `connection` (one indexed lookup; checked
    /// before each issue so replicas switch together).
    async fn secret_active_version(&self, connection: &str) -> Result<Option<i64>, StoreError>;

    /// Records a verification result on a version that is not retired.
    async fn secret_verified(
        &self,
        connection: &str,
        version: i64,
        ok: bool,
        result: &serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Records an approval of a candidate by someone other than its setter.
    /// False if it is no candidate or `by` set it.
    async fn secret_approve(&self, connection: &str, version: i64, by: &str, at: OffsetDateTime)
        -> Result<bool, StoreError>;

    /// Activation and rollback, in one transaction (see [`SecretSwitch`]):
    /// never two active versions, never none when the switch fails. False
    /// if `version` did not meet the conditions (nothing changed).
    async fn secret_switch(&self, s: &SecretSwitch) -> Result<bool, StoreError>;

    /// Retiring versions whose overlap ended become retired. Returns how many.
    async fn secret_retire_due(&self, now: OffsetDateTime) -> Result<u64, StoreError>;

    /// Replaces wrapped data keys (`lessor rekey`), all or none: each row
    /// must still be wrapped under its `old_kek_id`. False (nothing
    /// changed) if one was not.
    async fn secret_rewrap(&self, rows: &[Rewrap]) -> Result<bool, StoreError>;
}
