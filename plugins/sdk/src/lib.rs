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
//!
//! The contract is data: every request and answer type is a serde type with
//! stable field names and RFC 3339 times, so an out-of-process plugin speaks
//! the same contract over a wire. Secret fields of [`Issued`] serialize only
//! through the explicit [`Issued::exposing_secrets`] path, never by accident
//! and never through `Debug`.
//!
//! Calls are bounded by the core: each `issue`, `renew`, `revoke`,
//! `validate`, `list_objects`, `validate_root`, `rotate_root` and
//! `install_root` runs under a deadline, and a call past it is cancelled (its
//! future dropped). A plugin must therefore leave nothing half-made that it
//! cannot find again from the lease id; the core revokes a lease whose issue
//! was cancelled. Inside a call, [`call`] gives the deadline and a
//! cancellation token, so a plugin making several round trips stops between
//! them ([`call::check`]) rather than start a step nobody waits for.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub mod call;
pub mod expiry;
mod state;
pub use state::{MemoryState, StateError, StateStore};

#[cfg(feature = "testkit")]
pub mod conformance;

/// Version of this contract. Bumped on any breaking change to [`Plugin`].
///
/// 2: the contract became data (owned strings, serde types), shared services
/// in [`PluginContext`] (HTTP client, clock), root credentials as the optional
/// [`RootCredentials`] capability, [`Revocation`] in [`Capabilities`],
/// [`Plugin::documents`], and [`Registration`] (kind, build, config check).
pub const SDK_VERSION: u32 = 2;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The vendor credential's lifetime can be extended in place.
    pub can_renew: bool,
    /// What revoking a credential means at this vendor.
    pub revocation: Revocation,
}

impl Capabilities {
    /// Whether [`Plugin::revoke`] does anything before expiry. When `false`
    /// the core does not call it and records `revoke_unsupported`.
    pub fn can_revoke(&self) -> bool {
        !matches!(self.revocation, Revocation::AtExpiry)
    }
}

/// What revocation means for a vendor's credentials, so the API, `lessor
/// status` and the audit log tell the truth per vendor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Revocation {
    /// Revoking stops the credential at the vendor when `revoke` returns
    /// (a database role dropped, an API key deleted).
    Immediate,
    /// Revoking is published (a CRL, a token denylist answered by
    /// introspection): relying parties that check see it within
    /// `max_delay_seconds` (`None`: at their next check); those that do not
    /// check accept the credential until it expires.
    Published {
        /// How it is published, for people: "CRL", "introspection".
        via: String,
        /// Longest a checking relying party may still accept it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_delay_seconds: Option<u64>,
    },
    /// The credential cannot be taken back: it ends only at its expiry.
    AtExpiry,
}

impl Revocation {
    /// Stable short name (`immediate`, `published`, `at_expiry`) for metric
    /// labels and audit details.
    pub fn mode(&self) -> &'static str {
        match self {
            Revocation::Immediate => "immediate",
            Revocation::Published { .. } => "published",
            Revocation::AtExpiry => "at_expiry",
        }
    }

    /// One sentence for people: what a revoked credential still does.
    pub fn describe(&self) -> String {
        match self {
            Revocation::Immediate => "revocable now: revoking stops the credential at the vendor at once".into(),
            Revocation::Published { via, max_delay_seconds: Some(s) } => format!(
                "revocable with delay: revocation is published via {via}; relying parties that check see it within {s}s, \
                 others accept the credential until it expires"
            ),
            Revocation::Published { via, max_delay_seconds: None } => format!(
                "revocable with delay: revocation is published via {via}; relying parties that check see it at their next \
                 check, others accept the credential until it expires"
            ),
            Revocation::AtExpiry => "not revocable: the credential ends only at its expiry".into(),
        }
    }
}

/// The workload a credential is issued to, as the core verified it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueRequest {
    pub lease_id: LeaseId,
    /// Role name within this plugin instance (the part after `connection/`).
    pub role: String,
    pub workload: Workload,
    /// Granted scopes, already checked against the role and policy.
    pub scopes: Vec<String>,
    /// The credential must stop working at this instant.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Plugin-specific request parameters (e.g. a CSR), as sent by the client.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Opaque, non-secret data a plugin needs to renew or revoke what it issued
/// (a serial number, a vendor key id). Stored with the lease.
pub type Handle = serde_json::Value;

/// What a plugin hands back for the workload. The core stores `handle` with
/// the lease, returns `public` and `secret` once in the issue response, and
/// never stores `secret`.
///
/// `Issued` deserializes from the wire (secrets included) but does not
/// implement `Serialize`: the only way to write it is
/// [`Issued::exposing_secrets`], which names what it does. `Debug` shows the
/// secret field names, never their values.
#[derive(Deserialize)]
pub struct Issued {
    pub handle: Handle,
    /// Fields safe to log and return (certificate, chain, scopes, serial).
    #[serde(default)]
    pub public: serde_json::Map<String, serde_json::Value>,
    /// Fields that are the credential itself (private key, token, password).
    #[serde(default, deserialize_with = "secret_map::deserialize")]
    pub secret: BTreeMap<String, SecretString>,
    /// When the vendor credential really ends (not after the lease's
    /// `expires_at`).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The version of the connection's managed root credential the plugin
    /// issued with (see [`RootCredentials::install_root`]); `None` when it
    /// has none. The core records it with the lease.
    #[serde(default)]
    pub root_version: Option<i64>,
}

impl Issued {
    /// The one way to serialize an `Issued`, secret values included in
    /// clear: for the wire between an out-of-process plugin and the core,
    /// and for the issue response. Never pass it to a logger.
    pub fn exposing_secrets(&self) -> ExposedIssued<'_> {
        ExposedIssued(self)
    }
}

/// [`Issued`] with its secret values, for serializing onto a wire; made only
/// by [`Issued::exposing_secrets`]. Its `Debug` hides the values like
/// `Issued`'s does.
#[derive(Debug)]
pub struct ExposedIssued<'a>(&'a Issued);

impl Serialize for ExposedIssued<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use secrecy::ExposeSecret;
        use serde::ser::SerializeStruct;
        struct Secrets<'a>(&'a BTreeMap<String, SecretString>);
        impl Serialize for Secrets<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v.expose_secret())))
            }
        }
        let i = self.0;
        let mut st = s.serialize_struct("Issued", 5)?;
        st.serialize_field("handle", &i.handle)?;
        st.serialize_field("public", &i.public)?;
        st.serialize_field("secret", &Secrets(&i.secret))?;
        let exp = i.expires_at.format(&time::format_description::well_known::Rfc3339).map_err(serde::ser::Error::custom)?;
        st.serialize_field("expires_at", &exp)?;
        st.serialize_field("root_version", &i.root_version)?;
        st.end()
    }
}

mod secret_map {
    use std::collections::BTreeMap;

    use secrecy::SecretString;
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, SecretString>, D::Error> {
        let plain = BTreeMap::<String, String>::deserialize(d)?;
        Ok(plain.into_iter().map(|(k, v)| (k, SecretString::from(v))).collect())
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRef {
    pub lease_id: LeaseId,
    pub role: String,
    /// `None` when the lease never became active (the core crashed, or the
    /// vendor call failed, between "pending" and "active"). The plugin must
    /// then find what to revoke from `lease_id` alone.
    #[serde(default)]
    pub handle: Option<Handle>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The root credential version the lease was issued under, when known:
    /// revoke with that version while it is installed, else with the active
    /// one.
    #[serde(default)]
    pub root_version: Option<i64>,
}

/// A renewal: extend the credential to `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub lease: LeaseRef,
    #[serde(with = "time::serde::rfc3339")]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub content_type: String,
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

/// A document a plugin serves, as it declares it in [`Plugin::documents`].
/// The core serves it at `GET /v1/plugins/{connection}/{document}`
/// (`per_role == false`) or `GET /v1/plugins/{connection}/{role}/{document}`.
///
/// Some names are conventions the core relies on, whatever the plugin:
/// [`DOC_CA`] (per role: the PEM CA chain certificates chain to, which a TLS
/// client CA must not be), [`DOC_JWKS`] (per connection: merged into
/// `/.well-known/jwks.json`). Names are lowercase `[a-z0-9.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentSpec {
    pub name: String,
    /// Served per role (`true`) or once for the connection.
    pub per_role: bool,
    /// What it is, for the OpenAPI and people ("CA chain, PEM").
    pub description: String,
}

/// Per-role document name: the PEM CA chain.
pub const DOC_CA: &str = "ca";
/// Per-connection document name: the JSON Web Key Set tokens are signed with.
pub const DOC_JWKS: &str = "jwks";

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
    Unsupported(String),
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

/// The time source a plugin must use instead of reading the system clock, so
/// the core and tests decide what "now" is.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// Everything a plugin gets when it is built: its identity, its state and the
/// services the core shares with every plugin.
#[derive(Clone)]
pub struct PluginContext {
    /// Name of the connection (plugin instance) in the core's config.
    pub connection: String,
    /// State private to this connection; secrets put here are encrypted at
    /// rest by the core.
    pub state: Arc<dyn StateStore>,
    /// The base URL lessor is reachable at (used as a token issuer).
    pub public_url: String,
    /// The one HTTP client the core shares (connection pool, TLS roots,
    /// timeouts); a plugin that speaks HTTP uses it rather than building its
    /// own.
    pub http: reqwest::Client,
    /// What "now" is.
    pub clock: Clock,
    /// Longest one `issue`, `renew`, `revoke` or `validate` call may take;
    /// the core cancels the call past it. A plugin may use it to size its
    /// own vendor timeouts.
    pub call_timeout: std::time::Duration,
}

impl PluginContext {
    /// A context for tests and tools: memory state, the system clock, a
    /// default HTTP client and a 30 s call timeout.
    pub fn for_tests(connection: &str, public_url: &str) -> PluginContext {
        PluginContext {
            connection: connection.to_owned(),
            state: Arc::new(MemoryState::new()),
            public_url: public_url.to_owned(),
            http: reqwest::Client::new(),
            clock: system_clock(),
            call_timeout: std::time::Duration::from_secs(30),
        }
    }

    /// Now, by [`PluginContext::clock`].
    pub fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSecretSpec {
    /// What the secret is, for its owner (e.g. "the admin DSN,
    /// postgres://user:password@host:port/database").
    pub describes: String,
    /// Whether [`RootCredentials::rotate_root`] can make a new one at the vendor.
    pub can_rotate: bool,
}

/// A vendor plugin. Built once per connection, shared as `Arc<dyn Plugin>`.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's kind, e.g. `pki`, `token`, `postgres` (its
    /// [`Registration::kind`]).
    fn kind(&self) -> &str;

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

    /// The public documents this plugin serves (see [`DocumentSpec`]).
    fn documents(&self) -> Vec<DocumentSpec> {
        Vec::new()
    }

    /// A public document this plugin serves for a role (`ca`, `crl`) or for
    /// the whole connection when `role` is `None` (`jwks`). `Ok(None)`: no
    /// such document (or no such role).
    async fn document(&self, _role: Option<&str>, _name: &str) -> Result<Option<Document>, PluginError> {
        Ok(None)
    }

    /// RFC 7662 introspection of a token this plugin may have issued.
    /// `Ok(None)` means "not one of mine".
    async fn introspect(&self, _token: &SecretString) -> Result<Option<Introspection>, PluginError> {
        Ok(None)
    }

    /// `Some` when the core can manage this connection's root credential
    /// (see [`RootCredentials`]).
    fn root_credentials(&self) -> Option<&dyn RootCredentials> {
        None
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
        Err(PluginError::Unsupported("listing vendor objects".into()))
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

/// The optional capability of a plugin whose root credential the core
/// manages: the core keeps it in versions (encrypted in its store) and hands
/// them to the plugin with [`RootCredentials::install_root`]: the active
/// version (used for new issuance) and retiring ones (kept so leases issued
/// under them can still be revoked). Before a version may become active the
/// core calls [`RootCredentials::validate_root`] with it.
#[async_trait]
pub trait RootCredentials: Send + Sync {
    /// What the root credential is and whether it can be rotated.
    fn spec(&self) -> RootSecretSpec;

    /// Checks `candidate` as this connection's root credential without
    /// switching to it and without writing anything at the vendor: it
    /// authenticates, says who it is (`identity` and `details`, e.g.
    /// `database`) and checks the permissions the roles need. Errors are
    /// precise and never contain the secret: "password rejected for user
    /// `lessor_admin`", "role `app_ro` lacks CREATEROLE".
    async fn validate_root(&self, candidate: &SecretString) -> Result<Validation, PluginError>;

    /// Installs root credential `version`. `active`: new issuance uses it
    /// from now on (atomically: an issue in progress finishes with the
    /// version it started with); otherwise it is kept only to revoke leases
    /// issued under it. Installing the active version again is a no-op.
    async fn install_root(&self, version: i64, secret: SecretString, active: bool) -> Result<(), PluginError>;

    /// Forgets a version that is no longer active or retiring.
    async fn remove_root(&self, version: i64) -> Result<(), PluginError>;

    /// Makes a new root credential at the vendor with the active one (e.g.
    /// `ALTER ROLE ... PASSWORD`) and returns it; nobody sees it. The core
    /// then validates and activates it. Where the old one stops working at
    /// the vendor, the plugin says so in its docs: the core activates the
    /// new one straight away.
    async fn rotate_root(&self) -> Result<SecretString, PluginError> {
        Err(PluginError::Unsupported("rotate".into()))
    }
}

/// Builds a plugin from its context, connection config and roles.
pub type BuildFn = fn(
    PluginContext,
    serde_json::Value,
    Vec<RoleSpec>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<dyn Plugin>, PluginError>> + Send>>;

/// Checks a connection's config and roles without building anything,
/// connecting anywhere or reading files that may be absent where the check
/// runs; `Err` is a precise message naming the field.
pub type ValidateConfigFn = fn(&serde_json::Value, &[RoleSpec]) -> Result<(), String>;

/// Lists the trust anchors a connection's roles name by file: `(role, path)`.
pub type CaFilesFn = fn(&serde_json::Value, &[RoleSpec]) -> Vec<(String, String)>;

/// How a plugin crate makes itself known to the core: each crate exports
/// `pub fn registration() -> Registration` and the core lists them in one
/// place. The core knows plugins only through this.
/// How lessor's Vault-compatible API presents a plugin's connections: the
/// mount's type in `sys/mounts` and the operations it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultShape {
    /// Vault's `database` secrets engine: `<mount>/creds/<role>`.
    Database,
    /// Vault's `pki` engine: `<mount>/issue/<role>` (the request's names go
    /// to the plugin as `names`) and `<mount>/sign/<role>` (its CSR as `csr`).
    Pki,
    /// No Vault engine of its own: `<mount>/creds/<role>`, shown with the
    /// plugin's kind as its type.
    Creds,
}

#[derive(Clone, Copy)]
pub struct Registration {
    /// The `plugin = "..."` name in a connection's config.
    pub kind: &'static str,
    /// The [`SDK_VERSION`] the plugin was built against; the core refuses a
    /// different one.
    pub sdk_version: u32,
    pub build: BuildFn,
    /// `lessor check`'s config check.
    pub validate_config: ValidateConfigFn,
    /// How the Vault-compatible API shows its connections.
    pub vault: VaultShape,
    /// Trust anchors a role's config names by file (a CA certificate), which
    /// `lessor check` compares with the TLS client CA without building the
    /// plugin: `(role, path)`.
    pub ca_files: CaFilesFn,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").field("kind", &self.kind).field("sdk_version", &self.sdk_version).finish()
    }
}

/// For [`Registration::ca_files`] of plugins that have none.
pub fn no_ca_files(_: &serde_json::Value, _: &[RoleSpec]) -> Vec<(String, String)> {
    Vec::new()
}

/// Convenience: a secret byte buffer.
pub type SecretBytes = SecretBox<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;
    use time::macros::datetime;

    const CANARY: &str = "CANARY-password-5d1e";

    fn issued() -> Issued {
        Issued {
            handle: json!({"role": "l_abc"}),
            public: serde_json::Map::from_iter([("username".to_string(), json!("l_abc"))]),
            secret: BTreeMap::from([("password".to_string(), SecretString::from(CANARY))]),
            expires_at: datetime!(2026-11-30 08:00:00 UTC),
            root_version: Some(3),
        }
    }

    #[test]
    fn issued_shows_secrets_only_through_the_exposing_path() {
        let i = issued();
        // Debug (what a log line would print) names the field, not the value.
        let debug = format!("{i:?} {:?}", i.exposing_secrets());
        assert!(!debug.contains(CANARY) && debug.contains("password"), "{debug}");
        // The marked path writes the value, with stable names and RFC 3339.
        let wire = serde_json::to_value(i.exposing_secrets()).unwrap();
        assert_eq!(
            wire,
            json!({
                "handle": {"role": "l_abc"},
                "public": {"username": "l_abc"},
                "secret": {"password": CANARY},
                "expires_at": "2026-11-30T08:00:00Z",
                "root_version": 3,
            })
        );
        // ... and it reads back into secrecy types.
        let back: Issued = serde_json::from_value(wire).unwrap();
        assert_eq!(back.secret["password"].expose_secret(), CANARY);
        assert_eq!((back.expires_at, back.root_version, &back.handle), (i.expires_at, Some(3), &i.handle));
        assert!(!format!("{back:?}").contains(CANARY));
    }

    #[test]
    fn requests_are_wire_types_with_stable_names() {
        let lease = LeaseRef {
            lease_id: LeaseId::new("lse_1"),
            role: "app".into(),
            handle: Some(json!({"serial": "0a"})),
            expires_at: datetime!(2026-11-30 08:00:00.5 UTC),
            root_version: None,
        };
        let renew = RenewRequest { lease: lease.clone(), expires_at: datetime!(2026-11-30 09:00:00 UTC) };
        let v = serde_json::to_value(&renew).unwrap();
        assert_eq!(
            v,
            json!({
                "lease": {"lease_id": "lse_1", "role": "app", "handle": {"serial": "0a"},
                          "expires_at": "2026-11-30T08:00:00.5Z", "root_version": null},
                "expires_at": "2026-11-30T09:00:00Z",
            })
        );
        assert_eq!(serde_json::from_value::<RenewRequest>(v).unwrap(), renew);

        let req = IssueRequest {
            lease_id: LeaseId::new("lse_2"),
            role: "web".into(),
            workload: Workload { issuer: "https://iss".into(), subject: "repo:a/b".into(), attributes: BTreeMap::new() },
            scopes: vec!["read".into()],
            expires_at: datetime!(2026-11-30 08:00:00 UTC),
            params: serde_json::Map::new(),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["lease_id"], "lse_2");
        assert_eq!(v["expires_at"], "2026-11-30T08:00:00Z");
        assert_eq!(v["workload"]["subject"], "repo:a/b");
        assert_eq!(serde_json::from_value::<IssueRequest>(v).unwrap(), req);
        // A time that is not RFC 3339 is refused, naming the field.
        let bad = json!({"lease_id": "x", "role": "r", "expires_at": 1764489600});
        let e = serde_json::from_value::<LeaseRef>(bad).unwrap_err().to_string();
        assert!(e.contains("expires_at") || e.contains("invalid type"), "{e}");
    }

    #[test]
    fn revocation_modes_serialize_and_describe_themselves() {
        let caps = Capabilities {
            can_renew: false,
            revocation: Revocation::Published { via: "CRL".into(), max_delay_seconds: Some(3600) },
        };
        assert_eq!(
            serde_json::to_value(&caps).unwrap(),
            json!({"can_renew": false, "revocation": {"mode": "published", "via": "CRL", "max_delay_seconds": 3600}})
        );
        assert!(caps.can_revoke());
        assert!(caps.revocation.describe().contains("within 3600s"), "{}", caps.revocation.describe());
        let none = Capabilities { can_renew: false, revocation: Revocation::AtExpiry };
        assert!(!none.can_revoke());
        assert_eq!(none.revocation.mode(), "at_expiry");
        assert_eq!(serde_json::to_value(Revocation::Immediate).unwrap(), json!({"mode": "immediate"}));
    }

    #[test]
    fn unsupported_errors_carry_an_owned_message() {
        let e = PluginError::Unsupported(format!("renew of role `{}`", "web"));
        assert_eq!(e.to_string(), "renew of role `web` is not supported by this plugin");
        assert!(!e.is_retryable());
    }
}
