//! Issuer configuration (`[issuers.<name>]`): owned here, where it is
//! used; `config` re-exports it as part of the file's schema.
//!
//! Must not import: config, http, store, policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `<issuer>/.well-known/openid-configuration` -> `jwks_uri`.
    Discovery,
    JwksUrl(String),
    JwksFile(PathBuf),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Use OIDC discovery (the default when no jwks_url/jwks_file is set).
    #[serde(default)]
    pub discovery: bool,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Accepted audiences; the token's `aud` must contain one.
    pub audiences: Vec<String>,
    /// Allowed signing algorithms (asymmetric only).
    #[serde(default = "default_algs")]
    pub algorithms: Vec<String>,
    /// Clock-skew leeway for `exp`, `nbf`, `iat`.
    #[serde(default = "default_leeway", with = "crate::duration::serde")]
    pub leeway: Duration,
    /// Reject tokens whose `iat` is older than this.
    #[serde(default, with = "crate::duration::serde_opt")]
    pub max_token_age: Option<Duration>,
    /// Claim mapping preset: `github-actions`, `kubernetes`, or none.
    #[serde(default)]
    pub preset: Option<String>,
    /// Extra mappings: principal attribute -> claim path (`a.b.c`, or a JSON
    /// pointer `/kubernetes.io/namespace`).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// On an unknown `kid`, refetch the key set at most this often.
    #[serde(default = "default_refetch", with = "crate::duration::serde")]
    pub min_refetch_interval: Duration,
    /// How long a fetched key set is used before it is refreshed.
    #[serde(default = "default_jwks_ttl", with = "crate::duration::serde")]
    pub jwks_cache_ttl: Duration,
    /// After a failed key set fetch, no new fetch for this long (requests
    /// use the last good set, or are refused, meanwhile).
    #[serde(default = "default_jwks_failure_cache", with = "crate::duration::serde")]
    pub jwks_failure_cache: Duration,
    /// While the issuer is unreachable, the last good key set is used for
    /// at most this long after it was fetched; then tokens are refused.
    #[serde(default = "default_jwks_max_stale", with = "crate::duration::serde")]
    pub jwks_max_stale: Duration,
}

fn default_algs() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_jwks_failure_cache() -> Duration {
    Duration::from_secs(5)
}
fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl IssuerConfig {
    /// Where the keys come from; an error naming the issuer when more
    /// than one of discovery, jwks_url, jwks_file is set.
    pub fn key_source(&self, name: &str) -> Result<KeySource, String> {
        match (&self.jwks_url, &self.jwks_file, self.discovery) {
            (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => {
                Err(format!("issuer `{name}`: set only one of discovery, jwks_url, jwks_file"))
            }
            (Some(u), None, false) => Ok(KeySource::JwksUrl(u.clone())),
            (None, Some(f), false) => Ok(KeySource::JwksFile(f.clone())),
            (None, None, _) => Ok(KeySource::Discovery),
        }
    }
}

