//! lessor plugin SDK: the contract between the lessor core and a vendor plugin.
//!
//! A plugin turns an authorized request into a credential at a vendor (a
//! certificate, a token, a database role) and takes it back again. It never
//! sees the lease store, the HTTP layer or the policy engine: it gets its
//! configuration, a [`StateStore`] for the little state it must keep (CA keys,
//! revocation lists), and the request.
//!
//! The contract, in the order the core relies on it:
//! 1. The core writes a *pending* lease before calling [`Plugin::issue`], and
//!    passes its [`LeaseId`]. A plugin derives every vendor-side name or serial
//!    from that id, so that a lease left pending by a crash can always be
//!    revoked from its id alone.
//! 2. [`Plugin::revoke`] is idempotent: a credential that is already gone, or
//!    that was never created, counts as revoked.
//! 3. Errors say whether trying again can help ([`PluginError::Retryable`]),
//!    whether the vendor refused ([`PluginError::Permanent`]) or whether the
//!    configuration is wrong ([`PluginError::Misconfigured`]).
//!
//! Secrets cross this boundary only inside `secrecy` types.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

mod state;
pub use state::{MemoryState, StateError, StateStore};

#[cfg(feature = "testkit")]
pub mod conformance;

/// Version of this contract. Bumped on any breaking change to [`Plugin`].
pub const SDK_VERSION: u32 = 1;

/// Re-exported so plugins and the core agree on the secret types.
pub use secrecy;

/// A lease id: unguessable, chosen by the core before the plugin runs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(String);

impl LeaseId {
    /// Wraps an id the core generated (or read back from its store).
    pub fn new(id: impl Into<String>) -> Self {
        LeaseId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({})", self.0)
    }
}

/// What a plugin can do beyond issuing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The vendor credential's lifetime can be extended in place.
    pub can_renew: bool,
    /// The vendor credential can be taken back before it ends by itself.
    pub can_revoke: bool,
}

/// The workload a credential is issued to, as the core verified it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workload {
    /// Exact `iss` of the workload's JWT.
    pub issuer: String,
    /// `sub` of the workload's JWT.
    pub subject: String,
    /// Claims mapped by the issuer's mapping (e.g. `repository`,
    /// `namespace`), the same attributes policy saw. Values are strings.
    pub attributes: BTreeMap<String, String>,
}

/// A request to issue a credential. The lease row exists (pending) already.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub lease_id: LeaseId,
    /// Role name within this plugin instance (the part after `connection/`).
    pub role: String,
    pub workload: Workload,
    /// Granted scopes, already checked against the role and policy.
    pub scopes: Vec<String>,
    /// The credential must stop working at this instant.
    pub expires_at: OffsetDateTime,
    /// Plugin-specific request parameters (e.g. a CSR), as sent by the client.
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Opaque, non-secret data a plugin needs to renew or revoke what it issued
/// (a serial number, a vendor key id). Stored with the lease.
pub type Handle = serde_json::Value;

/// What a plugin hands back for the workload. The core stores `handle` with
/// the lease, returns `public` and `secret` once in the issue response, and
/// never stores `secret`.
pub struct Issued {
    pub handle: Handle,
    /// Fields safe to log and return (certificate, chain, scopes, serial).
    pub public: serde_json::Map<String, serde_json::Value>,
    /// Fields that are the credential itself (private key, token, password).
    pub secret: BTreeMap<String, SecretString>,
    /// When the vendor credential really ends (not after the lease's
    /// `expires_at`).
    pub expires_at: OffsetDateTime,
    /// The version of the connection's managed root credential the plugin
    /// issued with (see [`Plugin::install_root`]); `None` when it has none.
    /// The core records it with the lease.
    pub root_version: Option<i64>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("handle", &self.handle)
            .field("public", &self.public)
            .field("secret", &self.secret.keys().collect::<Vec<_>>())
            .field("expires_at", &self.expires_at)
            .field("root_version", &self.root_version)
            .finish()
    }
}

/// A lease as the plugin needs to see it to renew or revoke it.
#[derive(Debug, Clone)]
pub struct LeaseRef {
    pub lease_id: LeaseId,
    pub role: String,
    /// `None` when the lease never became active (the core crashed, or the
    /// vendor call failed, between "pending" and "active"). The plugin must
    /// then find what to revoke from `lease_id` alone.
    pub handle: Option<Handle>,
    pub expires_at: OffsetDateTime,
    /// The root credential version the lease was issued under, when known:
    /// revoke with that version while it is installed, else with the active
    /// one.
    pub root_version: Option<i64>,
}

/// A renewal: extend the credential to `expires_at`.
#[derive(Debug, Clone)]
pub struct RenewRequest {
    pub lease: LeaseRef,
    pub expires_at: OffsetDateTime,
}

/// The result of [`Plugin::validate`]: who the plugin is connected as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// The account, identity or subject the connection acts as
    /// (e.g. `current_user`, a CA's subject, a signing key id).
    pub identity: String,
    /// Further facts worth showing an owner (database, server version,
    /// certificate expiry), in a stable order.
    pub details: BTreeMap<String, String>,
    /// Problems that do not stop the plugin but should be seen
    /// ("certificate expires in 3 days").
    pub warnings: Vec<String>,
}

/// A public document a plugin serves (a CA chain, a CRL, a JWKS).
#[derive(Debug, Clone)]
pub struct Document {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Something lessor created at a vendor (a database role, an ACL user), as
/// [`Plugin::list_objects`] finds it: its vendor-side name and the lease id
/// that name derives from (`None` when the name has lessor's shape but no
/// lease id can be read back from it). Names are not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorObject {
    pub name: String,
    pub lease_id: Option<LeaseId>,
}

/// The RFC 7662 view of a token a plugin issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Introspection {
    pub active: bool,
    /// Claims to report when active (`scope`, `sub`, `exp`, `iat`, `jti`, ...).
    #[serde(flatten)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a plugin call failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The vendor could not be reached, answered with a transient error, or
    /// is blocked by something an operator can fix (a role that still owns
    /// objects); the same call may succeed later. The message says which,
    /// precisely ("cannot reach PostgreSQL at 10.0.0.5:5432: connection refused").
    #[error("{0}")]
    Retryable(String),
    /// The vendor (or the plugin, on the vendor's rules) refused; retrying the
    /// same call will not help. The message is precise and safe to show.
    #[error("{0}")]
    Permanent(String),
    /// The request's parameters are wrong (a bad CSR, a name not allowed).
    #[error("{0}")]
    InvalidRequest(String),
    /// The plugin's configuration is wrong.
    #[error("misconfigured: {0}")]
    Misconfigured(String),
    /// The plugin cannot do this at all (e.g. renew a certificate).
    #[error("{0} is not supported by this plugin")]
    Unsupported(&'static str),
    /// The plugin's own state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

impl PluginError {
    /// Whether the core should try the same call again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PluginError::Retryable(_) | PluginError::State(_))
    }
}

/// Everything a plugin gets when it is built.
#[derive(Clone)]
pub struct PluginContext {
    /// Name of the connection (plugin instance) in the core's config.
    pub connection: String,
    /// State private to this connection; secrets put here are encrypted at
    /// rest by the core.
    pub state: Arc<dyn StateStore>,
    /// The base URL lessor is reachable at (used as a token issuer).
    pub public_url: String,
}

/// One role of a connection, with the settings the core owns and the
/// plugin-specific rest.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// Role name within the connection.
    pub name: String,
    /// Scopes the role may grant.
    pub scopes: Vec<String>,
    /// Longest lifetime of one credential.
    pub max_ttl: std::time::Duration,
    /// Plugin-specific role settings (a TOML table turned into JSON).
    pub config: serde_json::Value,
}

/// What a plugin says about the root credential the core manages for it
/// (`lessor connection set-secret / verify / activate / rotate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSecretSpec {
    /// What the secret is, for its owner (e.g. "the admin DSN,
    /// postgres://user:password@host:port/database").
    pub describes: &'static str,
    /// Whether [`Plugin::rotate_root`] can make a new one at the vendor.
    pub can_rotate: bool,
}

/// A vendor plugin. Built once per connection, shared as `Arc<dyn Plugin>`.
///
/// Managed root credentials: when [`Plugin::root_secret_spec`] is `Some`, the
/// core keeps the connection's root credential in versions (encrypted in its
/// store) and hands them to the plugin with [`Plugin::install_root`]: the
/// active version (used for new issuance) and retiring ones (kept so leases
/// issued under them can still be revoked). Before a version may become
/// active the core calls [`Plugin::validate_root`] with it.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's kind, e.g. `pki`, `token`, `postgres`.
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// A harmless call that proves the connection works and says who it is
    /// connected as. Writes nothing at the vendor.
    async fn validate(&self) -> Result<Validation, PluginError>;

    /// Creates a credential for a lease that is already recorded as pending.
    /// Vendor-side names must derive from `req.lease_id`.
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError>;

    /// Extends a credential. Returns the new vendor expiry.
    async fn renew(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError>;

    /// Takes a credential back. Idempotent: already gone, or never created,
    /// is `Ok(())`.
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError>;

    /// Stops what the plugin runs in the background (a child process, a
    /// pool) when lessor shuts down; calls after it may fail. The core calls
    /// it once per connection, after its own tasks have stopped.
    async fn shutdown(&self) {}

    /// A public document this plugin serves for a role (`ca`, `crl`) or for
    /// the whole connection when `role` is `None` (`jwks`).
    async fn document(&self, _role: Option<&str>, _name: &str) -> Result<Option<Document>, PluginError> {
        Ok(None)
    }

    /// RFC 7662 introspection of a token this plugin may have issued.
    /// `Ok(None)` means "not one of mine".
    async fn introspect(&self, _token: &SecretString) -> Result<Option<Introspection>, PluginError> {
        Ok(None)
    }

    /// `Some` when the core can manage this connection's root credential.
    fn root_secret_spec(&self) -> Option<RootSecretSpec> {
        None
    }

    /// Checks `candidate` as this connection's root credential without
    /// switching to it and without writing anything at the vendor: it
    /// authenticates, says who it is (`identity` and `details`, e.g.
    /// `database`) and checks the permissions the roles need. Errors are
    /// precise and never contain the secret: "password rejected for user
    /// `lessor_admin`", "role `app_ro` lacks CREATEROLE".
    async fn validate_root(&self, _candidate: &SecretString) -> Result<Validation, PluginError> {
        Err(PluginError::Unsupported("managed root credentials"))
    }

    /// Installs root credential `version`. `active`: new issuance uses it
    /// from now on (atomically: an issue in progress finishes with the
    /// version it started with); otherwise it is kept only to revoke leases
    /// issued under it. Installing the active version again is a no-op.
    async fn install_root(&self, _version: i64, _secret: SecretString, _active: bool) -> Result<(), PluginError> {
        Err(PluginError::Unsupported("managed root credentials"))
    }

    /// Forgets a version that is no longer active or retiring.
    async fn remove_root(&self, _version: i64) -> Result<(), PluginError> {
        Ok(())
    }

    /// Makes a new root credential at the vendor with the active one (e.g.
    /// `ALTER ROLE ... PASSWORD`) and returns it; nobody sees it. The core
    /// then validates and activates it. Where the old one stops working at
    /// the vendor, the plugin says so in its docs: the core activates the
    /// new one straight away.
    async fn rotate_root(&self) -> Result<SecretString, PluginError> {
        Err(PluginError::Unsupported("rotate"))
    }

    /// Lists what this connection created at its vendor, found by the name
    /// shape it derives from lease ids (never anything else: not the admin
    /// account, not objects without lessor's prefix and lease suffix), in
    /// name order, at most `limit` of them after name `after`. The core's
    /// reconciler compares the list with its leases: an object without a
    /// live lease is revoked (by its lease id, as a pending lease would be),
    /// a live lease without its object is reported. Plugins whose
    /// credentials are not objects at a vendor keep the default.
    async fn list_objects(&self, _after: Option<&str>, _limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        Err(PluginError::Unsupported("listing vendor objects"))
    }

    /// When the root credential this connection depends on stops working
    /// (the earliest CA certificate `notAfter`, an admin password's expiry),
    /// or `None` when it does not expire or the plugin cannot tell. The core
    /// exports it as a metric and asks on every scrape: answer from memory
    /// (or a cache), never with a vendor round trip each time.
    async fn credential_expiry(&self) -> Result<Option<OffsetDateTime>, PluginError> {
        Ok(None)
    }
}

/// Convenience: a secret byte buffer.
pub type SecretBytes = SecretBox<Vec<u8>>;
