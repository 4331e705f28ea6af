//! `[customer_tokens]`: which token-plugin roles customers' tokens draw
//! their scopes from, the token prefix, expiry and rotation settings, the
//! introspection cache, usage records, warnings and resource servers
//! (who may do what is Cedar's: `policies/customer_tokens.cedar`).
//!
//! ```toml
//! [customer_tokens]
//! roles = ["api/customers", "api/customers-sandbox"]  # token-plugin roles; one per environment
//! token_prefix = "lsrc"                 # tokens look like lsrc_<38 base62 characters>
//! account_group_prefix = "account:"     # a person's group `account:acme` = member of `acme`
//! default_expiry = "30d"                # one of 24h, 30d, 90d, 180d
//! rotation_overlap = "7d"               # default overlap of a rotation (1d..14d)
//!
//! [customer_tokens.resource_servers.billing-api]
//! secret_file = "/etc/lessor/billing-api.secret"   # >= 32 characters, trimmed
//! environments = ["production"]                   # empty = every environment
//! ```
//!
//! Must not import: http, store, policy, config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

const DAY: u64 = 24 * 3600;

/// The expiry presets a person chooses from.
pub const PRESETS: [(&str, Duration); 4] = [
    ("24h", Duration::from_secs(DAY)),
    ("30d", Duration::from_secs(30 * DAY)),
    ("90d", Duration::from_secs(90 * DAY)),
    ("180d", Duration::from_secs(180 * DAY)),
];
/// The longest preset; anything longer needs policy's leave.
pub const LONGEST_PRESET: Duration = Duration::from_secs(180 * DAY);
/// No token lives longer than this, whatever policy says.
pub const HARD_MAX_EXPIRY: Duration = Duration::from_secs(730 * DAY);
pub const MIN_OVERLAP: Duration = Duration::from_secs(DAY);
pub const MAX_OVERLAP: Duration = Duration::from_secs(14 * DAY);
/// Largest introspection cache lifetime: the bound on how long another
/// replica may still answer `active` for a revoked token.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(10);

fn d(days: u64) -> Duration {
    Duration::from_secs(days * DAY)
}
fn default_prefix() -> String {
    "lsrc".into()
}
fn default_group_prefix() -> String {
    "account:".into()
}
fn default_expiry() -> Duration {
    d(30)
}
fn default_overlap() -> Duration {
    d(7)
}
fn default_warn_before_expiry() -> Duration {
    d(7)
}
fn default_rotate_after() -> Duration {
    d(90)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(1)
}
fn default_cache_capacity() -> u64 {
    100_000
}
fn default_usage_keep() -> u32 {
    20
}
fn default_usage_days() -> u32 {
    90
}
fn default_usage_queue() -> usize {
    10_000
}
fn default_usage_flush() -> Duration {
    Duration::from_secs(1)
}
fn default_warn_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_history_retention() -> Duration {
    d(400)
}

/// `[customer_tokens]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerTokensConfig {
    /// Token-plugin roles (`connection/role`) whose scopes (from the
    /// `[scopes]` catalogue, each with `allows` and `denies`) customers pick
    /// from; the role's environment is the token's environment (one role
    /// per environment).
    pub roles: Vec<String>,
    /// What every token starts with, before `_` (2-16 of a-z 0-9): what
    /// secret scanners look for.
    #[serde(default = "default_prefix")]
    pub token_prefix: String,
    /// A person is a member of account `x` when one of their groups is
    /// `<account_group_prefix>x`.
    #[serde(default = "default_group_prefix")]
    pub account_group_prefix: String,
    /// Expiry when the request names none (a preset).
    #[serde(default = "default_expiry", with = "crate::duration::serde")]
    pub default_expiry: Duration,
    /// Overlap of a rotation when the request names none (1d..14d).
    #[serde(default = "default_overlap", with = "crate::duration::serde")]
    pub rotation_overlap: Duration,
    /// Warn this long before a token expires (1h..90d).
    #[serde(default = "default_warn_before_expiry", with = "crate::duration::serde")]
    pub warn_before_expiry: Duration,
    /// Warn when a token has not been rotated for this long (1d..10y).
    #[serde(default = "default_rotate_after", with = "crate::duration::serde")]
    pub rotate_after: Duration,
    /// How long an introspection may answer from memory (0s..10s): the
    /// most another replica may lag behind a revocation. A revocation is
    /// reported done only after this long.
    #[serde(default = "default_cache_ttl", with = "crate::duration::serde")]
    pub introspection_cache_ttl: Duration,
    /// Tokens kept in the introspection cache (1..10,000,000).
    #[serde(default = "default_cache_capacity")]
    pub introspection_cache_capacity: u64,
    /// Uses kept per token (1..1000).
    #[serde(default = "default_usage_keep")]
    pub usage_keep: u32,
    /// Days of per-day use counts kept (1..3650).
    #[serde(default = "default_usage_days")]
    pub usage_days: u32,
    /// Uses waiting to be written (16..1,000,000); beyond it uses are
    /// dropped and counted, never waited for.
    #[serde(default = "default_usage_queue")]
    pub usage_queue: usize,
    /// How often queued uses are written (10ms..60s).
    #[serde(default = "default_usage_flush", with = "crate::duration::serde")]
    pub usage_flush_interval: Duration,
    /// How often warnings, metrics and history retention run (1s..1h).
    #[serde(default = "default_warn_interval", with = "crate::duration::serde")]
    pub warn_interval: Duration,
    /// Ended tokens (and their uses) are deleted this long after they end
    /// (1d..10y).
    #[serde(default = "default_history_retention", with = "crate::duration::serde")]
    pub history_retention: Duration,
    /// API servers allowed to introspect, by client id.
    #[serde(default)]
    pub resource_servers: BTreeMap<String, ResourceServerConfig>,
}

/// `[customer_tokens.resource_servers.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceServerConfig {
    /// File holding the server's client secret (at least 32 characters;
    /// surrounding whitespace trimmed).
    pub secret_file: PathBuf,
    /// Environments whose tokens it may introspect (empty: all).
    #[serde(default)]
    pub environments: Vec<String>,
}

/// A resource server as loaded: client id, SHA-256 of its secret,
/// environments it may introspect (empty: all).
pub type LoadedResourceServer = (String, [u8; 32], Vec<String>);

impl CustomerTokensConfig {
    /// Checks what needs no other section (roles and scopes are checked
    /// against `[connections]` and `[scopes]` by `config`).
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.token_prefix;
        if !(2..=16).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(format!("customer_tokens.token_prefix `{p}` must be 2-16 characters of a-z 0-9"));
        }
        if self.account_group_prefix.is_empty() || self.account_group_prefix.len() > 64 {
            return Err("customer_tokens.account_group_prefix must be 1-64 characters".into());
        }
        if !PRESETS.iter().any(|(_, d)| *d == self.default_expiry) {
            return Err(format!(
                "customer_tokens.default_expiry `{}` must be one of the presets 24h, 30d, 90d, 180d",
                crate::customer_tokens::fmt_days(self.default_expiry)
            ));
        }
        let within = |name: &str, v: Duration, lo: Duration, hi: Duration| -> Result<(), String> {
            if v < lo || v > hi {
                return Err(format!(
                    "customer_tokens.{name} `{}` must be between {} and {}",
                    crate::customer_tokens::fmt_days(v),
                    crate::customer_tokens::fmt_days(lo),
                    crate::customer_tokens::fmt_days(hi)
                ));
            }
            Ok(())
        };
        within("rotation_overlap", self.rotation_overlap, MIN_OVERLAP, MAX_OVERLAP)?;
        within("warn_before_expiry", self.warn_before_expiry, Duration::from_secs(3600), d(90))?;
        within("rotate_after", self.rotate_after, d(1), d(3650))?;
        within("introspection_cache_ttl", self.introspection_cache_ttl, Duration::ZERO, MAX_CACHE_TTL)?;
        within("usage_flush_interval", self.usage_flush_interval, Duration::from_millis(10), Duration::from_secs(60))?;
        within("warn_interval", self.warn_interval, Duration::from_secs(1), Duration::from_secs(3600))?;
        within("history_retention", self.history_retention, d(1), d(3650))?;
        if !(1..=10_000_000).contains(&self.introspection_cache_capacity) {
            return Err("customer_tokens.introspection_cache_capacity must be 1..10000000".into());
        }
        if !(1..=1000).contains(&self.usage_keep) {
            return Err("customer_tokens.usage_keep must be 1..1000".into());
        }
        if !(1..=3650).contains(&self.usage_days) {
            return Err("customer_tokens.usage_days must be 1..3650".into());
        }
        if !(16..=1_000_000).contains(&self.usage_queue) {
            return Err("customer_tokens.usage_queue must be 16..1000000".into());
        }
        if self.roles.is_empty() {
            return Err("customer_tokens.roles must name at least one token-plugin role (`connection/role`)".into());
        }
        for (name, rs) in &self.resource_servers {
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(format!("customer_tokens.resource_servers.{name}: a name is 1-64 of A-Z a-z 0-9 - _ ."));
            }
            if rs.secret_file.as_os_str().is_empty() {
                return Err(format!("customer_tokens.resource_servers.{name}.secret_file is empty"));
            }
        }
        Ok(())
    }

    /// Reads each resource server's secret file: its name, the secret's
    /// SHA-256 (the secret itself is not kept) and its environments.
    pub fn load_resource_servers(&self) -> Result<Vec<LoadedResourceServer>, String> {
        use sha2::Digest;
        let mut out = Vec::new();
        for (name, rs) in &self.resource_servers {
            let text = std::fs::read_to_string(&rs.secret_file).map_err(|e| {
                format!("customer_tokens.resource_servers.{name}.secret_file {}: {e}", rs.secret_file.display())
            })?;
            let text = zeroize::Zeroizing::new(text);
            let secret = text.trim();
            if secret.len() < 32 || secret.len() > 256 {
                return Err(format!(
                    "customer_tokens.resource_servers.{name}.secret_file {} must hold 32-256 characters",
                    rs.secret_file.display()
                ));
            }
            out.push((name.clone(), sha2::Sha256::digest(secret.as_bytes()).into(), rs.environments.clone()));
        }
        Ok(out)
    }
}
