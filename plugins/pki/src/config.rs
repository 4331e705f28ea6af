//! Configuration of a `pki` connection and its roles, as the core hands it over
//! (TOML tables turned into JSON). Parsing only: what the values mean is
//! `plugin.rs`'s business. Every struct refuses unknown fields.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lessor_plugin::PluginError;
use serde::{Deserialize, Deserializer};

/// How long a revoked serial stays on the CRL after the certificate's
/// `not_after`, when `crl_retention` is not set.
pub const DEFAULT_CRL_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How often a replica checks whether another one revoked something, when
/// `crl_refresh` is not set.
pub const DEFAULT_CRL_REFRESH: Duration = Duration::from_secs(5);

/// Bounds of `crl_refresh`: often enough to matter, rare enough not to be a
/// store load.
const CRL_REFRESH_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// Connection-level settings (`[connections.<name>]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// How long a revoked serial stays on the CRL after the certificate's
    /// `not_after` (humantime, e.g. `"24h"`).
    #[serde(
        default = "default_crl_retention",
        deserialize_with = "humantime_duration"
    )]
    pub crl_retention: Duration,
    /// How stale a replica's CRL may be about revocations made on other
    /// replicas (humantime, 100ms to 10m): each replica compares the
    /// store's CRL generation at most this often (its own revocations show
    /// at once).
    #[serde(
        default = "default_crl_refresh",
        deserialize_with = "humantime_duration"
    )]
    pub crl_refresh: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            crl_retention: DEFAULT_CRL_RETENTION,
            crl_refresh: DEFAULT_CRL_REFRESH,
        }
    }
}

fn default_crl_retention() -> Duration {
    DEFAULT_CRL_RETENTION
}

fn default_crl_refresh() -> Duration {
    DEFAULT_CRL_REFRESH
}

fn humantime_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like \"24h\": {e}")))
}

/// Role-level settings (`[roles.<name>.config]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The role's CA. Default: generate one (P-256).
    #[serde(default)]
    pub ca: CaConfig,
    /// DNS or URI name templates; `{claim}` is filled from the workload.
    #[serde(default)]
    pub allowed_names: Vec<String>,
    /// The key type lessor generates, and the only one accepted in a CSR.
    #[serde(default)]
    pub key_type: KeyType,
    /// Template for the subject CN (default: the certificate's first name).
    #[serde(default)]
    pub common_name: Option<String>,
}

/// Where a role's CA comes from: `generate = { ... }` or
/// `cert_file` + `key_file`. Which combination is valid is checked by
/// [`CaConfig::source`], so that the error can be precise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    #[serde(default)]
    pub generate: Option<GenerateCa>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// A CA lessor generates on first start and keeps in its state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateCa {
    /// Subject CN (default: `lessor <connection>/<role> CA`).
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub key_type: CaKeyType,
}

/// The validated choice of [`CaConfig`].
#[derive(Debug, Clone)]
pub enum CaSource {
    Generate(GenerateCa),
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

impl CaConfig {
    /// The one CA source this config describes; `role` names the role in errors.
    pub fn source(&self, role: &str) -> Result<CaSource, PluginError> {
        match (&self.generate, &self.cert_file, &self.key_file) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err(PluginError::Misconfigured(format!(
                "role `{role}`: `ca` takes either `generate` or `cert_file` + `key_file`, not both"
            )))
            }
            (Some(g), None, None) => Ok(CaSource::Generate(g.clone())),
            (None, Some(cert), Some(key)) => Ok(CaSource::Files {
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            (None, Some(_), None) => Err(PluginError::Misconfigured(format!(
                "role `{role}`: `ca.cert_file` is set but `ca.key_file` is not"
            ))),
            (None, None, Some(_)) => Err(PluginError::Misconfigured(format!(
                "role `{role}`: `ca.key_file` is set but `ca.cert_file` is not"
            ))),
            (None, None, None) => Ok(CaSource::Generate(GenerateCa::default())),
        }
    }
}

/// Key type of issued certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    #[default]
    #[serde(rename = "p256")]
    P256,
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "rsa2048")]
    Rsa2048,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::P256 => "P-256",
            KeyType::Ed25519 => "Ed25519",
            KeyType::Rsa2048 => "RSA-2048",
        })
    }
}

/// Key type of a generated CA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum CaKeyType {
    #[default]
    #[serde(rename = "p256")]
    P256,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl From<CaKeyType> for KeyType {
    fn from(k: CaKeyType) -> Self {
        match k {
            CaKeyType::P256 => KeyType::P256,
            CaKeyType::Ed25519 => KeyType::Ed25519,
        }
    }
}

/// Parses the connection table; `null` and `{}` give the defaults.
pub fn parse_connection(value: serde_json::Value) -> Result<ConnectionConfig, PluginError> {
    if value.is_null() {
        return Ok(ConnectionConfig::default());
    }
    let c: ConnectionConfig = serde_json::from_value(value)
        .map_err(|e| PluginError::Misconfigured(format!("pki connection config: {e}")))?;
    if !CRL_REFRESH_RANGE.contains(&c.crl_refresh) {
        return Err(PluginError::Misconfigured(format!(
            "pki connection config: `crl_refresh` = {} must be between 100ms and 10m",
            humantime::format_duration(c.crl_refresh)
        )));
    }
    Ok(c)
}

/// Parses one role's table; `role` names the role in errors.
pub fn parse_role(role: &str, value: serde_json::Value) -> Result<RoleConfig, PluginError> {
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    serde_json::from_value(value)
        .map_err(|e| PluginError::Misconfigured(format!("role `{role}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn misconfigured(r: Result<impl fmt::Debug, PluginError>) -> String {
        match r {
            Err(PluginError::Misconfigured(m)) => m,
            other => panic!("expected Misconfigured, got {other:?}"),
        }
    }

    #[test]
    fn connection_defaults_and_retention() {
        assert_eq!(
            parse_connection(json!(null)).unwrap().crl_retention,
            DEFAULT_CRL_RETENTION
        );
        assert_eq!(
            parse_connection(json!({})).unwrap().crl_retention,
            DEFAULT_CRL_RETENTION
        );
        let c = parse_connection(json!({"crl_retention": "90m"})).unwrap();
        assert_eq!(c.crl_retention, Duration::from_secs(90 * 60));
        let m = misconfigured(parse_connection(json!({"crl_retention": "soon"})));
        assert!(m.contains("soon"), "{m}");
        let m = misconfigured(parse_connection(json!({"crl_retension": "1h"})));
        assert!(m.contains("unknown field `crl_retension`"), "{m}");
    }

    #[test]
    fn crl_refresh_default_and_bounds() {
        assert_eq!(parse_connection(json!({})).unwrap().crl_refresh, DEFAULT_CRL_REFRESH);
        let c = parse_connection(json!({"crl_refresh": "30s"})).unwrap();
        assert_eq!(c.crl_refresh, Duration::from_secs(30));
        for bad in ["0s", "10ms", "1h"] {
            let m = misconfigured(parse_connection(json!({ "crl_refresh": bad })));
            assert!(m.contains("`crl_refresh`") && m.contains("between 100ms and 10m"), "{bad}: {m}");
        }
    }

    #[test]
    fn role_errors_name_role_and_field() {
        let m = misconfigured(parse_role(
            "web",
            json!({"allowed_names": ["a"], "key": "p256"}),
        ));
        assert!(
            m.starts_with("role `web`:") && m.contains("unknown field `key`"),
            "{m}"
        );
        let m = misconfigured(parse_role("web", json!({"key_type": "rsa4096"})));
        assert!(m.contains("rsa4096"), "{m}");
        let m = misconfigured(parse_role(
            "web",
            json!({"ca": {"generate": {"key_type": "rsa2048"}}}),
        ));
        assert!(m.contains("rsa2048"), "{m}");
    }

    #[test]
    fn ca_source_combinations() {
        let ca = |v| {
            parse_role("web", json!({ "ca": v }))
                .unwrap()
                .ca
                .source("web")
        };
        assert!(matches!(ca(json!({})), Ok(CaSource::Generate(_))));
        assert!(matches!(
            ca(json!({"generate": {}})),
            Ok(CaSource::Generate(_))
        ));
        assert!(matches!(
            ca(json!({"cert_file": "c", "key_file": "k"})),
            Ok(CaSource::Files { .. })
        ));
        let m = misconfigured(ca(json!({"cert_file": "c"})));
        assert_eq!(
            m,
            "role `web`: `ca.cert_file` is set but `ca.key_file` is not"
        );
        let m = misconfigured(ca(json!({"key_file": "k"})));
        assert_eq!(
            m,
            "role `web`: `ca.key_file` is set but `ca.cert_file` is not"
        );
        let m = misconfigured(ca(
            json!({"generate": {}, "cert_file": "c", "key_file": "k"}),
        ));
        assert!(m.contains("not both"), "{m}");
    }
}
