//! Configuration: serde structs read from one TOML file, then environment
//! overrides. Built once in `main` and passed down; there is no global.
//!
//! Must not import: http, store, policy, lease, connections, plugins (they consume the config, not the
//! other way round).
//!
//! Why one file: every section's serde struct with the cross-checks between
//! sections, which need them all; the issuer section moves to `identity/` when
//! that module owns its config (issue 12).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::identity::config::{IssuerConfig, KeySource};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL clients reach lessor at (the `iss` of lessor-signed tokens).
    /// Defaults to `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Lease store URL. `sqlite://path` (the embedded default). Unknown
    /// schemes are refused, never silently replaced by SQLite.
    #[serde(default = "default_store")]
    pub store: String,
    /// Directory for generated files (seal key, admin token).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Key that encrypts secrets at rest (32 bytes, base64). Generated into
    /// `data_dir/seal.key` (0600) on first start when unset.
    #[serde(default)]
    pub seal_key_file: Option<PathBuf>,
    /// Admin token file; generated (0600) on first start when missing.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Directory of Cedar schema and policy files.
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    /// How often the policy directory is checked for changes.
    #[serde(default = "default_policy_poll", with = "crate::duration::serde")]
    pub policy_poll: Duration,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub leases: LeaseSettings,
    #[serde(default)]
    pub quotas: Quotas,
    /// The audit log (on by default: `data_dir/audit.log`).
    #[serde(default)]
    pub audit: AuditConfig,
    /// TLS for the listener. Without it lessor listens only on a loopback
    /// address, unless `allow_plaintext` says a proxy terminates TLS.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating
    /// proxy on a trusted network). Off by default; `serve --allow-plaintext`
    /// sets it. lessor warns at start when it is used.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Workload identity issuers, by a short name.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// Scope catalogue: what each scope allows and does not allow.
    #[serde(default)]
    pub scopes: BTreeMap<String, ScopeDoc>,
    /// Plugin instances (connections) and their roles.
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// The key-encryption key of managed root credentials (default: the
    /// seal key file).
    #[serde(default)]
    pub kek: KekConfig,
    /// The Vault-compatible API (off unless this section is present).
    #[serde(default)]
    pub vault_api: Option<crate::vault::VaultApiConfig>,
    /// The reconciler: vendor objects against leases (`lease/reconcile.rs`).
    #[serde(default)]
    pub reconcile: ReconcileSettings,
    /// People sign-in: OpenID Connect providers and person sessions (off
    /// unless this section is present; types in `people::config`).
    #[serde(default)]
    pub people: Option<crate::people::PeopleConfig>,
    /// Customer API tokens (off unless this section is present).
    #[serde(default)]
    pub customer_tokens: Option<crate::customer_tokens::config::CustomerTokensConfig>,
}

/// `[reconcile]`: how often each vendor's objects are compared with the
/// leases, and how long a stray may wait before it is revoked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Time between scheduled passes (`0s`: only `lessor reconcile` runs one).
    #[serde(default = "default_reconcile_interval", with = "crate::duration::serde")]
    pub interval: Duration,
    /// A vendor object without a live lease is revoked only once it has
    /// been a stray this long: its lease ended at least `grace` ago, or (no
    /// lease row at all) this replica first saw it at least `grace` ago.
    #[serde(default = "default_reconcile_grace", with = "crate::duration::serde")]
    pub grace: Duration,
    /// Most strays revoked per connection per pass (the rest wait for the
    /// next pass).
    #[serde(default = "default_reconcile_revocations")]
    pub max_revocations: u32,
}

fn default_reconcile_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_reconcile_grace() -> Duration {
    Duration::from_secs(300)
}
fn default_reconcile_revocations() -> u32 {
    100
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            interval: default_reconcile_interval(),
            grace: default_reconcile_grace(),
            max_revocations: default_reconcile_revocations(),
        }
    }
}

/// `[kek]`: where the key-encryption key of root credentials comes from.
/// At most one of `file`, `env`, `command`; none = the seal key file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekConfig {
    /// A file holding 32 bytes, base64 (like the seal key).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable holding 32 bytes, base64.
    #[serde(default)]
    pub env: Option<String>,
    /// An external KMS hook: lessor runs `command... wrap` / `command...
    /// unwrap` with the key (base64) on stdin and reads the result (base64)
    /// from stdout.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The id of the hook's key (stored with each wrapped key). Required
    /// with `command`.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// The identity a connection's root credential must authenticate as
/// (`lessor connection verify`): `identity` against the plugin's
/// `Validation.identity`, every other key against its `details`
/// (e.g. `database = "app"`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ExpectedIdentity {
    pub identity: String,
    #[serde(flatten)]
    pub details: BTreeMap<String, String>,
}

/// A date written as a TOML date (`2026-03-31`) or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DateInput {
    Toml(toml::value::Datetime),
    Text(String),
}

fn de_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<time::Date>, D::Error> {
    let text = match Option::<DateInput>::deserialize(d)? {
        None => return Ok(None),
        Some(DateInput::Toml(t)) => t.to_string(),
        Some(DateInput::Text(t)) => t,
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text.trim(), &fmt)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a date like 2026-03-31 ({e})")))
}

fn default_overlap() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `[tls]`: the listener's certificate, reloaded when the files change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates. When set, a client certificate that chains to
    /// them, is not on a CRL of `client_crl_files`, and whose subject CN or
    /// a SAN is in `admin_subjects` authenticates its holder as an admin
    /// (named by its CN) on the admin endpoints; workloads still use their
    /// JWT. Must not be (or chain to) a CA of lessor's own pki connections.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Subject CNs or SANs (DNS name, email, URI) of the client
    /// certificates that are admins. Required with `client_ca_file`.
    #[serde(default)]
    pub admin_subjects: Vec<String>,
    /// CRLs (PEM or DER) of the client CA(s), reloaded like the
    /// certificates; a client certificate they list is refused at the
    /// handshake. With CRLs, a client certificate whose issuer has none
    /// is refused too.
    #[serde(default)]
    pub client_crl_files: Vec<PathBuf>,
    /// Admin endpoints accept only a client certificate (no admin token or
    /// operator JWT). Needs `client_ca_file`.
    #[serde(default)]
    pub admin_requires_client_cert: bool,
    /// How often the files are checked for a renewed certificate.
    #[serde(default = "default_tls_reload", with = "crate::duration::serde")]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8200))
}
fn default_store() -> String {
    "sqlite://lessor.db".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".")
}
fn default_policies() -> PathBuf {
    PathBuf::from("policies")
}
fn default_policy_poll() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Largest workload JWT accepted.
    #[serde(default = "default_jwt")]
    pub max_jwt_bytes: usize,
    /// Longest any request may take (reading its body included); then it is
    /// answered 408 `request_timeout`.
    #[serde(default = "default_request_timeout", with = "crate::duration::serde")]
    pub request_timeout: Duration,
    /// Requests served at once by each unauthenticated route (`/metrics`,
    /// `/.well-known/jwks.json`, `/v1/token/introspect`, `/v1/pki/...`,
    /// `/v1/health`); more are answered 503 `overloaded` at once.
    #[serde(default = "default_unauth_route")]
    pub unauthenticated_route_concurrency: usize,
    /// Requests served at once by all unauthenticated routes together, so
    /// they can never hold more than this many store connections (below
    /// the smallest store pool, 8 SQLite readers) and starve issuance or expiry.
    #[serde(default = "default_unauth_total")]
    pub unauthenticated_concurrency: usize,
    /// Refused authentications a source network (IPv4 /24, IPv6 /64) may
    /// have per second (and in a burst) before each further refusal is
    /// answered `auth_failure_delay` late; 0 turns this off. Successful
    /// authentications are never delayed.
    #[serde(default = "default_auth_failures_per_second")]
    pub auth_failures_per_second: u32,
    /// How late an over-budget refusal is answered (at most 10 s).
    #[serde(default = "default_auth_failure_delay", with = "crate::duration::serde")]
    pub auth_failure_delay: Duration,
}

fn default_auth_failures_per_second() -> u32 {
    20
}
fn default_auth_failure_delay() -> Duration {
    Duration::from_millis(500)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_unauth_route() -> usize {
    2
}
fn default_unauth_total() -> usize {
    4
}

fn default_body() -> usize {
    64 * 1024
}
fn default_jwt() -> usize {
    8 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_body(),
            max_jwt_bytes: default_jwt(),
            request_timeout: default_request_timeout(),
            unauthenticated_route_concurrency: default_unauth_route(),
            unauthenticated_concurrency: default_unauth_total(),
            auth_failures_per_second: default_auth_failures_per_second(),
            auth_failure_delay: default_auth_failure_delay(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// Revocations in flight per connection (each connection has its own;
    /// `[connections.<name>] revoke_concurrency` overrides it).
    #[serde(default = "default_concurrency")]
    pub revoke_concurrency: usize,
    /// Due leases loaded per connection per expiry round.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Circuit breaker: after this many consecutive retryable revocation
    /// failures on one connection, stop calling its vendor for a while.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// First pause of an open breaker; doubles each failed probe.
    #[serde(default = "default_breaker_base", with = "crate::duration::serde")]
    pub breaker_base: Duration,
    /// Cap on an open breaker's pause.
    #[serde(default = "default_breaker_max", with = "crate::duration::serde")]
    pub breaker_max: Duration,
    /// Longest the expiry worker sleeps between checks.
    #[serde(default = "default_tick", with = "crate::duration::serde")]
    pub tick: Duration,
    /// A lease still pending after this long is treated as orphaned.
    #[serde(default = "default_pending_grace", with = "crate::duration::serde")]
    pub pending_grace: Duration,
    /// First retry delay after a failed revocation; doubles each attempt.
    #[serde(default = "default_retry_base", with = "crate::duration::serde")]
    pub retry_base: Duration,
    /// Cap on the retry delay. Retries go on forever.
    #[serde(default = "default_retry_max", with = "crate::duration::serde")]
    pub retry_max: Duration,
    /// Longest one revocation call to a vendor may take; past it the attempt
    /// counts as failed (retryable) and the lease is retried later.
    #[serde(default = "default_revoke_timeout", with = "crate::duration::serde")]
    pub revoke_timeout: Duration,
    /// Longest one `issue`, `renew` or `validate` call to a plugin may take;
    /// past it the call is cancelled and fails as retryable (an issue's
    /// pending lease is then revoked). Must be shorter than `pending_grace`,
    /// so an issue still running is never taken for an orphan. Unset: 30 s,
    /// or half of `pending_grace` when that is shorter (see
    /// [`LeaseSettings::call_timeout`]).
    #[serde(default, rename = "call_timeout", with = "crate::duration::serde_opt")]
    pub call_timeout_set: Option<Duration>,
    /// Longest one check (`validate_root`) or rotation (`rotate_root`) of a
    /// managed root credential may take; past it the call is cancelled, it
    /// fails naming this setting and nothing changes (no version stored,
    /// the active one stays). Between 1s and 10m.
    #[serde(default = "default_root_timeout", with = "crate::duration::serde")]
    pub root_timeout: Duration,
    /// PostgreSQL store with replicas: how long expiry work a replica took
    /// stays reserved for it after its last heartbeat. A live replica renews
    /// its claims every `claim_timeout / 3`, so a slow batch keeps them; a
    /// replica that dies (`kill -9`, lost network) has its work taken over
    /// by the others after at most this long. Heartbeats also record each
    /// replica's policy version (`GET /v1/admin/replicas`).
    #[serde(default = "default_claim_timeout", with = "crate::duration::serde")]
    pub claim_timeout: Duration,
    /// Ended leases (revoked, expired) are deleted this long after they
    /// ended, a small batch at a time (`0s` keeps them forever). The audit
    /// log keeps the record of every lease.
    #[serde(default = "default_retention", with = "crate::duration::serde")]
    pub retention: Duration,
}

fn default_concurrency() -> usize {
    16
}
fn default_batch() -> u32 {
    256
}
fn default_breaker_threshold() -> u32 {
    5
}
fn default_breaker_base() -> Duration {
    Duration::from_secs(5)
}
fn default_breaker_max() -> Duration {
    Duration::from_secs(60)
}
fn default_tick() -> Duration {
    Duration::from_millis(500)
}
fn default_pending_grace() -> Duration {
    Duration::from_secs(120)
}
fn default_retry_base() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(600)
}
fn default_revoke_timeout() -> Duration {
    Duration::from_secs(60)
}
/// Default of `leases.root_timeout`.
pub const DEFAULT_ROOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds of `leases.root_timeout`.
pub const ROOT_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(600));

fn default_root_timeout() -> Duration {
    DEFAULT_ROOT_TIMEOUT
}
fn default_claim_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

impl LeaseSettings {
    /// The bound on one `issue`, `renew` or `validate` call: `call_timeout`
    /// when set, else 30 s or half of `pending_grace`, whichever is shorter.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout_set.unwrap_or_else(|| Duration::from_secs(30).min(self.pending_grace / 2))
    }

    /// How often a replica records itself alive and renews its claims.
    pub fn heartbeat(&self) -> Duration {
        self.claim_timeout / 3
    }
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            revoke_concurrency: default_concurrency(),
            batch_size: default_batch(),
            breaker_threshold: default_breaker_threshold(),
            breaker_base: default_breaker_base(),
            breaker_max: default_breaker_max(),
            tick: default_tick(),
            pending_grace: default_pending_grace(),
            retry_base: default_retry_base(),
            retry_max: default_retry_max(),
            revoke_timeout: default_revoke_timeout(),
            call_timeout_set: None,
            root_timeout: default_root_timeout(),
            claim_timeout: default_claim_timeout(),
            retention: default_retention(),
        }
    }
}

/// Where the audit log goes. On by default for `serve` (a file in
/// `data_dir`), because requests that would issue or change credentials are
/// refused (503) when their audit entry cannot be written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `file` (the default), `stdout`, `both`, or `off`.
    #[serde(default = "default_audit_sink")]
    pub sink: String,
    /// The audit file; default `data_dir/audit.log`. Rotation: rename it and
    /// send SIGHUP; the new file continues the hash chain. The latest
    /// signed checkpoint is also kept in `<file>.head`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// HMAC-SHA256 key for sensitive values (`lessor audit hash`); default
    /// `data_dir/audit-hmac.key`, generated (0600) when missing.
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
    /// Ed25519 key that signs checkpoints; default
    /// `data_dir/audit-signing.key`, generated (0600) when missing, its
    /// public key written to `<file>.pub` for verifiers.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Sign a checkpoint after this many entries...
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ...or this long after the last one (if anything was written).
    #[serde(default = "default_checkpoint_interval", with = "crate::duration::serde")]
    pub checkpoint_interval: Duration,
    /// fsync the file after each group write (slower; `write` errors such
    /// as a full disk are reported either way).
    #[serde(default)]
    pub fsync: bool,
    /// Start a new file when the current one would exceed this size
    /// (`100MB`, `1GiB`; `0` never). The old one is renamed
    /// `<file>.<first sequence number>`; the chain continues.
    #[serde(default = "default_max_file_size")]
    pub max_file_size: String,
    /// ...or when the current file is this old (`1d`; `0s` never).
    #[serde(default = "default_max_file_age", with = "crate::duration::serde")]
    pub max_file_age: Duration,
    /// Rotated files kept; older ones are removed. Unset: all are kept.
    #[serde(default)]
    pub keep_files: Option<usize>,
    /// Rotated files older than this are removed. Unset: kept.
    #[serde(default, with = "crate::duration::serde_opt")]
    pub keep_for: Option<Duration>,
    /// Entries waiting for the writer at most. Entries that gate access
    /// wait up to `queue_timeout` for room (then 503); the others are
    /// dropped and counted.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
    #[serde(default = "default_audit_queue_timeout", with = "crate::duration::serde")]
    pub queue_timeout: Duration,
    /// Authentication failures: one summary entry per interval (counts by
    /// configured issuer, reason, source /24 or /64)...
    #[serde(default = "default_auth_failure_interval", with = "crate::duration::serde")]
    pub auth_failure_interval: Duration,
    /// ...and the first this many of each interval in full.
    #[serde(default = "default_auth_failures_in_full")]
    pub auth_failures_in_full: u32,
}

fn default_max_file_size() -> String {
    "100MB".into()
}
fn default_max_file_age() -> Duration {
    Duration::from_secs(86_400)
}
fn default_audit_queue() -> usize {
    16_384
}
fn default_audit_queue_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_auth_failure_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_auth_failures_in_full() -> u32 {
    5
}

/// Parses a size: digits and an optional unit (`B`, `KB`, `MB`, `GB`,
/// `KiB`, `MiB`, `GiB`), e.g. `100MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a size such as `100MB`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(format!("`{s}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

fn default_audit_sink() -> String {
    "file".into()
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sink: default_audit_sink(),
            file: None,
            hmac_key_file: None,
            signing_key_file: None,
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval: default_checkpoint_interval(),
            fsync: false,
            max_file_size: default_max_file_size(),
            max_file_age: default_max_file_age(),
            keep_files: None,
            keep_for: None,
            queue: default_audit_queue(),
            queue_timeout: default_audit_queue_timeout(),
            auth_failure_interval: default_auth_failure_interval(),
            auth_failures_in_full: default_auth_failures_in_full(),
        }
    }
}

/// Limits on issuance. A live lease is pending, active or revoke_failed.
/// 0 means no limit. The defaults are deliberately finite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Live leases one workload (issuer + subject) may hold.
    #[serde(default = "default_per_owner")]
    pub max_active_per_owner: u64,
    /// Live leases per role (a role's `max_active` overrides it).
    #[serde(default = "default_per_role")]
    pub max_active_per_role: u64,
    /// Live leases in all.
    #[serde(default = "default_total")]
    pub max_active_total: u64,
    /// Issue requests one workload may make per minute (per replica).
    #[serde(default = "default_rate")]
    pub issues_per_minute_per_owner: u32,
}

fn default_per_owner() -> u64 {
    100
}
fn default_per_role() -> u64 {
    10_000
}
fn default_total() -> u64 {
    1_000_000
}
fn default_rate() -> u32 {
    120
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_active_per_owner: default_per_owner(),
            max_active_per_role: default_per_role(),
            max_active_total: default_total(),
            issues_per_minute_per_owner: default_rate(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeDoc {
    /// What the scope allows, in plain language.
    pub allows: String,
    /// What it does not allow, in plain language.
    #[serde(default)]
    pub denies: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Plugin kind: `pki`, `token`.
    pub plugin: String,
    /// Environment label, seen by policy as `resource.environment`.
    #[serde(default = "default_env")]
    pub environment: String,
    /// Person or team that owns the vendor account.
    #[serde(default)]
    pub owner: Option<String>,
    /// When the root credential must be reviewed or expires (a vendor
    /// token's end, a contract date); warned about 7 days ahead.
    #[serde(default, deserialize_with = "de_date")]
    pub review_by: Option<time::Date>,
    /// Who the root credential must authenticate as (checked by `verify`).
    #[serde(default)]
    pub expected_identity: Option<ExpectedIdentity>,
    /// A root credential older than this is stale (a warning).
    #[serde(default, with = "crate::duration::serde_opt")]
    pub rotate_after: Option<Duration>,
    /// How long a replaced root credential stays `retiring` (revocation of
    /// leases issued under it, rollback). Longer than the roles' max TTL.
    #[serde(default = "default_overlap", with = "crate::duration::serde")]
    pub overlap: Duration,
    /// Revocations in flight for this connection (default
    /// `leases.revoke_concurrency`).
    #[serde(default)]
    pub revoke_concurrency: Option<usize>,
    /// Plugin-specific connection settings.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
}

fn default_env() -> String {
    "development".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default)]
    pub description: String,
    /// Longest lifetime of one credential, and of the lease across renewals.
    #[serde(with = "crate::duration::serde")]
    pub max_ttl: Duration,
    /// TTL when the request names none.
    #[serde(default, with = "crate::duration::serde_opt")]
    pub default_ttl: Option<Duration>,
    /// Scopes this role may grant (from the scope catalogue).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Scopes granted when the request names none.
    #[serde(default)]
    pub default_scopes: Vec<String>,
    /// Live leases this role may have at once (overrides
    /// `quotas.max_active_per_role`; 0 = no limit).
    #[serde(default)]
    pub max_active: Option<u64>,
    /// Overrides the connection's environment label.
    #[serde(default)]
    pub environment: Option<String>,
    /// Plugin-specific role settings.
    #[serde(default)]
    pub config: toml::Table,
}

impl RoleConfig {
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl.unwrap_or(self.max_ttl).min(self.max_ttl)
    }
}

impl Config {
    /// The environments of customer tokens: each `[customer_tokens] roles`
    /// entry must be a role of a `token` connection, with its own
    /// environment, whose every scope the `[scopes]` catalogue describes
    /// with both `allows` and `denies` (customers choose from these texts,
    /// so "what it does not allow" is required here, unlike for workload
    /// roles). Empty without `[customer_tokens]`.
    pub fn customer_token_catalogue(&self) -> Result<crate::customer_tokens::Catalogue, ConfigError> {
        use crate::customer_tokens::{Environment, ScopeText};
        let bad = |m: String| ConfigError::Invalid(m);
        let mut out = crate::customer_tokens::Catalogue::new();
        let Some(ct) = &self.customer_tokens else { return Ok(out) };
        ct.validate().map_err(bad)?;
        for r in &ct.roles {
            let (cname, rname) = r
                .split_once('/')
                .ok_or_else(|| bad(format!("customer_tokens.roles: `{r}` is not `connection/role`")))?;
            let conn = self
                .connections
                .get(cname)
                .ok_or_else(|| bad(format!("customer_tokens.roles: `{r}`: no connection `{cname}`")))?;
            if conn.plugin != "token" {
                return Err(bad(format!(
                    "customer_tokens.roles: `{r}`: connection `{cname}` is a `{}` connection; customer tokens take their scopes from a `token` one",
                    conn.plugin
                )));
            }
            let role = conn
                .roles
                .get(rname)
                .ok_or_else(|| bad(format!("customer_tokens.roles: `{r}`: connection `{cname}` has no role `{rname}`")))?;
            let env = role.environment.clone().unwrap_or_else(|| conn.environment.clone());
            if role.scopes.is_empty() {
                return Err(bad(format!("customer_tokens.roles: `{r}` grants no scopes")));
            }
            let mut scopes = BTreeMap::new();
            for s in &role.scopes {
                let doc = self.scopes.get(s).ok_or_else(|| bad(format!("customer_tokens: scope `{s}` of `{r}` is not in [scopes]")))?;
                if doc.allows.trim().is_empty() || doc.denies.trim().is_empty() {
                    return Err(bad(format!(
                        "customer_tokens: scope `{s}` of `{r}` needs both `allows` and `denies` in [scopes.\"{s}\"]: customers choose scopes by these texts"
                    )));
                }
                scopes.insert(s.clone(), ScopeText { allows: doc.allows.clone(), denies: doc.denies.clone() });
            }
            if out.insert(env.clone(), Environment { role: r.clone(), scopes }).is_some() {
                return Err(bad(format!(
                    "customer_tokens.roles: two roles have environment `{env}`; one role per environment"
                )));
            }
        }
        for (name, rs) in &ct.resource_servers {
            for e in &rs.environments {
                if !out.contains_key(e) {
                    return Err(bad(format!("customer_tokens.resource_servers.{name}: no environment `{e}`")));
                }
            }
        }
        Ok(out)
    }

    /// Reads a TOML file, applies `LESSOR_*` environment overrides, checks it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, |_| {})
    }

    /// [`Config::load`], with `adjust` applied (command-line flags) after
    /// the environment and before validation.
    pub fn load_with(path: &Path, adjust: impl FnOnce(&mut Config)) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut cfg = Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })?;
        // Relative paths in the file are relative to the file.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            cfg.rebase(dir);
        }
        cfg.apply_env(|k| std::env::var(k).ok())?;
        adjust(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text; no environment, no path rebasing.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    fn rebase(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.policies);
        if let Some(p) = self.seal_key_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.kek.file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.admin_token_file.as_mut() {
            fix(p);
        }
        for p in [&mut self.audit.file, &mut self.audit.hmac_key_file, &mut self.audit.signing_key_file].into_iter().flatten() {
            fix(p);
        }
        if let Some(p) = self.people.as_mut() {
            p.rebase(dir);
        }
        for iss in self.issuers.values_mut() {
            if let Some(p) = iss.jwks_file.as_mut() {
                fix(p);
            }
        }
        if let Some(ct) = self.customer_tokens.as_mut() {
            for rs in ct.resource_servers.values_mut() {
                fix(&mut rs.secret_file);
            }
        }
        if let Some(rest) = self.store.strip_prefix("sqlite://") {
            let p = Path::new(rest);
            if p.is_relative() && rest != ":memory:" {
                self.store = format!("sqlite://{}", dir.join(p).display());
            }
        }
    }

    /// `LESSOR_LISTEN`, `LESSOR_STORE`, `LESSOR_PUBLIC_URL`, `LESSOR_DATA_DIR`,
    /// `LESSOR_POLICIES` override the file.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("LESSOR_LISTEN") {
            self.listen = v
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("LESSOR_LISTEN `{v}`: {e}")))?;
        }
        if let Some(v) = get("LESSOR_STORE") {
            self.store = v;
        }
        if let Some(v) = get("LESSOR_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = get("LESSOR_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("LESSOR_POLICIES") {
            self.policies = PathBuf::from(v);
        }
        Ok(())
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", self.listen)
            })
            .trim_end_matches('/')
            .to_owned()
    }

    pub fn seal_key_path(&self) -> PathBuf {
        self.seal_key_file.clone().unwrap_or_else(|| self.data_dir.join("seal.key"))
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file.clone().unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// The audit log's settings, `None` when `sink = "off"`.
    pub fn audit_settings(&self) -> Result<Option<crate::audit::Settings>, ConfigError> {
        let a = &self.audit;
        let (file, stdout) = match a.sink.as_str() {
            "off" => return Ok(None),
            "file" => (true, false),
            "stdout" => (false, true),
            "both" => (true, true),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "audit.sink `{other}` is not one of file, stdout, both, off"
                )))
            }
        };
        if a.checkpoint_every == 0 || a.checkpoint_interval.is_zero() {
            return Err(ConfigError::Invalid("audit: checkpoint_every and checkpoint_interval must be greater than zero".into()));
        }
        let max_size = parse_size(&a.max_file_size).map_err(|m| ConfigError::Invalid(format!("audit.max_file_size: {m}")))?;
        if max_size != 0 && max_size < 4_000 {
            return Err(ConfigError::Invalid(format!(
                "audit.max_file_size: {} is below 4KB (an entry is up to a few KB); use 0 to never rotate by size",
                a.max_file_size
            )));
        }
        if a.queue == 0 || a.queue > 1 << 24 {
            return Err(ConfigError::Invalid("audit.queue: must be between 1 and 16777216".into()));
        }
        if a.auth_failure_interval.is_zero() {
            return Err(ConfigError::Invalid("audit.auth_failure_interval: must be greater than zero".into()));
        }
        if a.keep_files == Some(0) {
            return Err(ConfigError::Invalid(
                "audit.keep_files: 0 would remove every rotated file at once; leave it unset to keep all".into(),
            ));
        }
        Ok(Some(crate::audit::Settings {
            file: file.then(|| self.audit_file_path()),
            stdout,
            fsync: a.fsync,
            hmac_key_file: self.audit_hmac_key_path(),
            signing_key_file: self.audit.signing_key_file.clone().unwrap_or_else(|| self.data_dir.join("audit-signing.key")),
            checkpoint_every: a.checkpoint_every,
            checkpoint_interval: a.checkpoint_interval,
            rotation: crate::audit::Rotation {
                max_size: (max_size > 0).then_some(max_size),
                max_age: (!a.max_file_age.is_zero()).then_some(a.max_file_age),
                keep_files: a.keep_files,
                keep_for: a.keep_for,
            },
            queue: a.queue,
            queue_timeout: a.queue_timeout,
            auth_failure_interval: a.auth_failure_interval,
            auth_failures_in_full: a.auth_failures_in_full,
        }))
    }

    pub fn audit_file_path(&self) -> PathBuf {
        self.audit.file.clone().unwrap_or_else(|| self.data_dir.join("audit.log"))
    }

    pub fn audit_hmac_key_path(&self) -> PathBuf {
        self.audit.hmac_key_file.clone().unwrap_or_else(|| self.data_dir.join("audit-hmac.key"))
    }

    /// Checks what serde cannot: references between sections, limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match &self.tls {
            None if !self.listen.ip().is_loopback() && !self.allow_plaintext => {
                return bad(format!(
                    "refusing to serve plain HTTP on {}, which is reachable from other machines: workload JWTs and \
                     issued credentials would cross the network in clear. Configure [tls] cert_file and key_file, \
                     or, behind a TLS-terminating proxy, set allow_plaintext = true (serve --allow-plaintext)",
                    self.listen
                ))
            }
            Some(t) if t.admin_requires_client_cert && t.client_ca_file.is_none() => {
                return bad("tls.admin_requires_client_cert needs tls.client_ca_file".into())
            }
            Some(t) if t.reload_interval.is_zero() => return bad("tls.reload_interval must be more than 0".into()),
            Some(t) if t.client_ca_file.is_some() && t.admin_subjects.iter().all(|s| s.trim().is_empty()) => {
                return bad("tls.client_ca_file needs tls.admin_subjects: the subject CNs or SANs of the admins' client \
                            certificates (any certificate the CA signs would otherwise be an admin)"
                    .into())
            }
            Some(t) if t.client_ca_file.is_none() && !(t.admin_subjects.is_empty() && t.client_crl_files.is_empty()) => {
                return bad("tls.admin_subjects and tls.client_crl_files need tls.client_ca_file".into())
            }
            _ => {}
        }
        if self.limits.request_timeout.is_zero() {
            return bad("limits.request_timeout must be more than 0".into());
        }
        if self.reconcile.max_revocations == 0 || self.reconcile.max_revocations > 10_000 {
            return bad(format!(
                "reconcile.max_revocations is {}; it must be between 1 and 10000",
                self.reconcile.max_revocations
            ));
        }
        if !self.reconcile.interval.is_zero() && self.reconcile.interval < Duration::from_secs(1) {
            return bad("reconcile.interval must be at least 1s (or 0s: no scheduled passes)".into());
        }
        if self.limits.unauthenticated_route_concurrency == 0 || self.limits.unauthenticated_concurrency == 0 {
            return bad(
                "limits.unauthenticated_route_concurrency and limits.unauthenticated_concurrency must be at least 1"
                    .into(),
            );
        }
        if self.limits.auth_failure_delay > Duration::from_secs(10) {
            return bad("limits.auth_failure_delay is at most 10s".into());
        }
        for (name, iss) in &self.issuers {
            iss.key_source(name).map_err(ConfigError::Invalid)?;
            if iss.audiences.is_empty() {
                return bad(format!("issuer `{name}`: audiences must name at least one audience"));
            }
            if iss.algorithms.is_empty() {
                return bad(format!("issuer `{name}`: algorithms must not be empty"));
            }
            if iss.jwks_max_stale < iss.jwks_cache_ttl {
                return bad(format!(
                    "issuer `{name}`: jwks_max_stale must be at least jwks_cache_ttl (a cached key set is used that long)"
                ));
            }
            for alg in &iss.algorithms {
                crate::identity::parse_allowed_alg(alg)
                    .map_err(|e| ConfigError::Invalid(format!("issuer `{name}`: {e}")))?;
            }
            if let Some(p) = &iss.preset {
                if crate::identity::mapping::preset(p).is_none() {
                    return bad(format!(
                        "issuer `{name}`: unknown preset `{p}` (known: github-actions, kubernetes)"
                    ));
                }
            }
        }
        let mut seen_iss = BTreeMap::new();
        for (name, iss) in &self.issuers {
            if let Some(other) = seen_iss.insert(iss.issuer.clone(), name.clone()) {
                return bad(format!("issuers `{other}` and `{name}` both use iss `{}`", iss.issuer));
            }
        }
        let k = &self.kek;
        if [k.file.is_some(), k.env.is_some(), k.command.is_some()].iter().filter(|b| **b).count() > 1 {
            return bad("kek: set at most one of file, env, command".into());
        }
        if let Some(c) = &k.command {
            if c.is_empty() {
                return bad("kek.command must name a program".into());
            }
            if k.key_id.as_deref().is_none_or(str::is_empty) {
                return bad("kek.command needs kek.key_id (the id stored with each wrapped key)".into());
            }
        }
        for (cname, conn) in &self.connections {
            if cname.is_empty() || cname.contains('/') {
                return bad(format!("connection name `{cname}` must be non-empty and contain no `/`"));
            }
            if conn.overlap.is_zero() {
                return bad(format!("connection `{cname}`: overlap must be more than 0"));
            }
            for (rname, role) in &conn.roles {
                if rname.is_empty() || rname.contains('/') {
                    return bad(format!("role name `{rname}` in connection `{cname}` must be non-empty and contain no `/`"));
                }
                if role.max_ttl.is_zero() {
                    return bad(format!("role `{cname}/{rname}`: max_ttl must be greater than zero"));
                }
                if let Some(d) = role.default_ttl {
                    if d > role.max_ttl {
                        return bad(format!(
                            "role `{cname}/{rname}`: default_ttl {} exceeds max_ttl {}",
                            crate::fmt_duration(d),
                            crate::fmt_duration(role.max_ttl)
                        ));
                    }
                }
                for s in role.scopes.iter() {
                    if !self.scopes.contains_key(s) {
                        return bad(format!(
                            "role `{cname}/{rname}`: scope `{s}` is not in the [scopes] catalogue"
                        ));
                    }
                }
                for s in role.default_scopes.iter() {
                    if !role.scopes.contains(s) {
                        return bad(format!("role `{cname}/{rname}`: default scope `{s}` is not in its scopes"));
                    }
                }
            }
        }
        self.audit_settings()?;
        if self.leases.revoke_concurrency == 0 || self.leases.batch_size == 0 {
            return bad("leases: revoke_concurrency and batch_size must be at least 1".into());
        }
        if self.leases.breaker_threshold == 0 || self.leases.breaker_base.is_zero() {
            return bad("leases: breaker_threshold and breaker_base must be more than 0".into());
        }
        if self.leases.breaker_max < self.leases.breaker_base {
            return bad(format!(
                "leases.breaker_max ({}) must be at least leases.breaker_base ({})",
                crate::fmt_duration(self.leases.breaker_max),
                crate::fmt_duration(self.leases.breaker_base)
            ));
        }
        for (cname, conn) in &self.connections {
            if conn.revoke_concurrency == Some(0) {
                return bad(format!("connection `{cname}`: revoke_concurrency must be at least 1"));
            }
        }
        if let Some(v) = &self.vault_api {
            v.validate(|c| self.connections.get(c).map(|c| c.plugin.clone()), |i| self.issuers.contains_key(i))
                .map_err(ConfigError::Invalid)?;
        }
        if let Some(p) = &self.people {
            p.validate().map_err(ConfigError::Invalid)?;
        }
        if self.customer_tokens.is_some() {
            self.customer_token_catalogue()?;
        }
        if self.leases.revoke_timeout.is_zero() {
            return bad("leases.revoke_timeout must be more than 0".into());
        }
        if let Some(t) = self.leases.call_timeout_set.filter(|t| t.is_zero() || *t >= self.leases.pending_grace) {
            return bad(format!(
                "leases.call_timeout is {}; it must be more than 0 and less than leases.pending_grace ({})",
                crate::fmt_duration(t),
                crate::fmt_duration(self.leases.pending_grace)
            ));
        }
        let (lo, hi) = ROOT_TIMEOUT_RANGE;
        if self.leases.root_timeout < lo || self.leases.root_timeout > hi {
            return bad(format!(
                "leases.root_timeout is {}; it must be between {} and {}",
                crate::fmt_duration(self.leases.root_timeout),
                crate::fmt_duration(lo),
                crate::fmt_duration(hi)
            ));
        }
        if self.leases.claim_timeout < Duration::from_millis(300) {
            return bad(format!(
                "leases.claim_timeout is {}; it must be at least 300ms (heartbeats renew claims every claim_timeout / 3)",
                crate::fmt_duration(self.leases.claim_timeout)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_settings_default_and_are_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!((c.reconcile.interval, c.reconcile.grace, c.reconcile.max_revocations), (Duration::from_secs(600), Duration::from_secs(300), 100));
        let c = Config::from_toml("[reconcile]\ninterval = \"0s\"\ngrace = \"1h\"").unwrap();
        c.validate().unwrap();
        assert!(c.reconcile.interval.is_zero());
        for (toml, want) in [
            ("[reconcile]\nmax_revocations = 0", "reconcile.max_revocations is 0"),
            ("[reconcile]\ninterval = \"100ms\"", "reconcile.interval must be at least 1s"),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(want), "{toml}: {err}");
        }
        let err = Config::from_toml("[reconcile]\ngrase = \"1m\"").unwrap_err().to_string();
        assert!(err.contains("grase"), "{err}");
        let err = Config::from_toml("[reconcile]\ngrace = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("grace") || err.contains("soon"), "{err}");
    }

    #[test]
    fn claim_and_revoke_timeouts_are_checked() {
        let mut c = Config::from_toml("").unwrap();
        assert_eq!((c.leases.claim_timeout, c.leases.heartbeat()), (Duration::from_secs(30), Duration::from_secs(10)));
        c.leases.claim_timeout = Duration::from_millis(100);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("leases.claim_timeout is 100ms"), "{err}");
        c.leases.claim_timeout = Duration::from_secs(5);
        c.leases.revoke_timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().to_string().contains("leases.revoke_timeout"));
        c.leases.revoke_timeout = Duration::from_secs(60);
        assert_eq!(c.leases.call_timeout(), Duration::from_secs(30));
        c.leases.call_timeout_set = Some(c.leases.pending_grace);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("leases.call_timeout is 2m") && err.contains("pending_grace (2m)"), "{err}");
        c.leases.call_timeout_set = Some(Duration::from_secs(10));
        c.validate().unwrap();
        assert_eq!(c.leases.call_timeout(), Duration::from_secs(10));
        // Unset, it stays below a short pending_grace.
        c.leases.call_timeout_set = None;
        c.leases.pending_grace = Duration::from_secs(3);
        c.validate().unwrap();
        assert_eq!(c.leases.call_timeout(), Duration::from_millis(1500));
        // The root-credential bound: 60s unless set, within 1s..10m.
        assert_eq!(c.leases.root_timeout, Duration::from_secs(60));
        let c2 = Config::from_toml("[leases]\nroot_timeout = \"500ms\"").unwrap();
        let err = c2.validate().unwrap_err().to_string();
        assert!(err.contains("leases.root_timeout is 500ms; it must be between 1s and 10m"), "{err}");
        let c3 = Config::from_toml("[leases]\nroot_timeout = \"2h\"").unwrap();
        assert!(c3.validate().unwrap_err().to_string().contains("leases.root_timeout is 2h"));
        Config::from_toml("[leases]\nroot_timeout = \"5s\"").unwrap().validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = Config::from_toml("listne = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn role_scope_must_be_in_catalogue() {
        let cfg = Config::from_toml(
            r#"
            [connections.tok]
            plugin = "token"
            [connections.tok.roles.orders]
            max_ttl = "10m"
            scopes = ["orders.read"]
            "#,
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("scope `orders.read` is not in the [scopes] catalogue"), "{err}");
    }

    #[test]
    fn customer_token_roles_need_a_token_role_and_scopes_that_say_what_they_do_not_allow() {
        let base = r#"
            [scopes."a.read"]
            allows = "Read a."
            denies = "Cannot change a."
            [scopes."b.write"]
            allows = "Change b."
            [connections.tok]
            plugin = "token"
            environment = "production"
            [connections.tok.roles.ok]
            max_ttl = "10m"
            scopes = ["a.read"]
            [connections.tok.roles.vague]
            max_ttl = "10m"
            scopes = ["a.read", "b.write"]
            [connections.pki]
            plugin = "pki"
            [connections.pki.roles.web]
            max_ttl = "10m"
        "#;
        let with = |ct: &str| Config::from_toml(&format!("{base}\n[customer_tokens]\n{ct}")).unwrap().validate();
        with(r#"roles = ["tok/ok"]"#).unwrap();
        let cat = Config::from_toml(&format!("{base}\n[customer_tokens]\nroles = [\"tok/ok\"]")).unwrap().customer_token_catalogue().unwrap();
        assert_eq!(cat["production"].scopes["a.read"].denies, "Cannot change a.");
        for (ct, want) in [
            (r#"roles = ["tok/vague"]"#, "scope `b.write` of `tok/vague` needs both `allows` and `denies`"),
            (r#"roles = ["pki/web"]"#, "is a `pki` connection"),
            (r#"roles = ["tok/nope"]"#, "has no role `nope`"),
            (r#"roles = ["tok"]"#, "is not `connection/role`"),
            ("roles = []", "at least one token-plugin role"),
            (r#"roles = ["tok/ok"]
                default_expiry = "45d""#, "must be one of the presets"),
            (r#"roles = ["tok/ok"]
                rotation_overlap = "15d""#, "rotation_overlap `15d` must be between 1d and 14d"),
            (r#"roles = ["tok/ok"]
                introspection_cache_ttl = "11s""#, "introspection_cache_ttl"),
            (r#"roles = ["tok/ok"]
                token_prefix = "BAD""#, "token_prefix"),
        ] {
            let err = with(ct).unwrap_err().to_string();
            assert!(err.contains(want), "{ct}: {err}");
        }
    }

    #[test]
    fn audit_is_on_by_default_and_its_sink_is_checked() {
        let cfg = Config::from_toml("data_dir = \"/var/lib/lessor\"").unwrap();
        let s = cfg.audit_settings().unwrap().unwrap();
        assert_eq!(s.file.as_deref(), Some(Path::new("/var/lib/lessor/audit.log")));
        assert!(!s.stdout);
        let cfg = Config::from_toml("[audit]\nsink = \"syslog\"").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("audit.sink `syslog`"), "{err}");
        let err = Config::from_toml("[audit]\npath = \"x\"").unwrap_err().to_string();
        assert!(err.contains("path"), "{err}");
        assert!(Config::from_toml("[audit]\nsink = \"off\"").unwrap().audit_settings().unwrap().is_none());
    }

    #[test]
    fn env_overrides_file() {
        let mut cfg = Config::from_toml("store = \"sqlite://a.db\"").unwrap();
        cfg.apply_env(|k| (k == "LESSOR_STORE").then(|| "sqlite://b.db".to_string())).unwrap();
        assert_eq!(cfg.store, "sqlite://b.db");
    }

    #[test]
    fn symmetric_algorithms_are_refused() {
        let cfg = Config::from_toml(
            r#"
            [issuers.x]
            issuer = "https://x"
            jwks_url = "https://x/jwks"
            audiences = ["lessor"]
            algorithms = ["HS256"]
            "#,
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("HS256"), "{err}");
    }
}
