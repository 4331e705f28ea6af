//! Connection and role configuration of the token plugin, parsed from the
//! JSON the core hands over. Owns validation of config only; knows nothing of
//! keys, state or tokens.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use lessor_plugin::PluginError;
use serde::{Deserialize, Serialize};

/// Claims the plugin sets itself; a role's `extra_claims` may not override them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "iat",
    "nbf",
    "exp",
    "jti",
    "scope",
    "lessor_role",
    "token_type",
    "active",
];

const DEFAULT_ROTATE_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// The JWS algorithm of newly created signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// The name used in JWS headers and JWKs.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of one token connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Algorithm of keys this instance creates (`ES256` or `EdDSA`).
    pub algorithm: Algorithm,
    /// Age at which the current signing key is replaced.
    pub rotate_every: Duration,
    /// `iss` of issued tokens; defaults to the core's public URL.
    pub issuer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    rotate_every: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

impl ConnectionConfig {
    /// Parses the connection table. `Null` and `{}` give the defaults.
    pub fn from_json(
        connection: &str,
        value: serde_json::Value,
        public_url: &str,
    ) -> Result<Self, PluginError> {
        let bad =
            |msg: String| PluginError::Misconfigured(format!("connection `{connection}`: {msg}"));
        let raw: RawConnection = if value.is_null() {
            RawConnection {
                algorithm: Algorithm::default(),
                rotate_every: None,
                issuer: None,
            }
        } else {
            serde_json::from_value(value).map_err(|e| bad(e.to_string()))?
        };
        let rotate_every = match raw.rotate_every {
            None => DEFAULT_ROTATE_EVERY,
            Some(s) => {
                let d = humantime::parse_duration(&s).map_err(|e| {
                    bad(format!(
                        "`rotate_every` = `{s}` is not a duration like \"24h\": {e}"
                    ))
                })?;
                if d < Duration::from_secs(1) {
                    return Err(bad(format!("`rotate_every` = `{s}` must be at least 1s")));
                }
                d
            }
        };
        let issuer = raw.issuer.unwrap_or_else(|| public_url.to_owned());
        if issuer.trim().is_empty() {
            return Err(bad(
                "`issuer` is empty (and so is the public URL it defaults to)".into(),
            ));
        }
        Ok(ConnectionConfig {
            algorithm: raw.algorithm,
            rotate_every,
            issuer,
        })
    }
}

/// Settings of one role of a token connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleConfig {
    /// `aud` of the role's tokens; defaults to `lessor:<connection>/<role>`.
    pub audience: String,
    /// Static string claims added to every token of the role.
    pub extra_claims: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    extra_claims: serde_json::Map<String, serde_json::Value>,
}

impl RoleConfig {
    /// Parses a role's plugin table. `Null` and `{}` give the defaults.
    pub fn from_json(
        connection: &str,
        role: &str,
        value: serde_json::Value,
    ) -> Result<Self, PluginError> {
        let bad =
            |msg: String| PluginError::Misconfigured(format!("role `{connection}/{role}`: {msg}"));
        let raw: RawRole = if value.is_null() {
            RawRole {
                audience: None,
                extra_claims: serde_json::Map::new(),
            }
        } else {
            serde_json::from_value(value).map_err(|e| bad(e.to_string()))?
        };
        let audience = raw
            .audience
            .unwrap_or_else(|| format!("lessor:{connection}/{role}"));
        if audience.trim().is_empty() {
            return Err(bad("`audience` is empty".into()));
        }
        let mut extra_claims = BTreeMap::new();
        for (name, value) in raw.extra_claims {
            if RESERVED_CLAIMS.contains(&name.as_str()) {
                return Err(bad(format!(
                    "`extra_claims.{name}` would override a claim the plugin sets itself"
                )));
            }
            match value {
                serde_json::Value::String(s) => {
                    extra_claims.insert(name, s);
                }
                other => {
                    return Err(bad(format!(
                        "`extra_claims.{name}` must be a string, not {}",
                        json_kind(&other)
                    )))
                }
            }
        }
        Ok(RoleConfig {
            audience,
            extra_claims,
        })
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(e: PluginError) -> String {
        match e {
            PluginError::Misconfigured(m) => m,
            other => panic!("expected Misconfigured, got {other:?}"),
        }
    }

    #[test]
    fn connection_defaults() {
        for v in [json!(null), json!({})] {
            let c = ConnectionConfig::from_json("tok", v, "https://lessor.example").unwrap();
            assert_eq!(c.algorithm, Algorithm::ES256);
            assert_eq!(c.rotate_every, Duration::from_secs(86400));
            assert_eq!(c.issuer, "https://lessor.example");
        }
    }

    #[test]
    fn connection_fields() {
        let c = ConnectionConfig::from_json(
            "tok",
            json!({"algorithm": "EdDSA", "rotate_every": "90m", "issuer": "https://iss"}),
            "https://lessor.example",
        )
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::EdDSA);
        assert_eq!(c.rotate_every, Duration::from_secs(5400));
        assert_eq!(c.issuer, "https://iss");
    }

    #[test]
    fn connection_errors_name_the_field() {
        let m = msg(
            ConnectionConfig::from_json("tok", json!({"rotate_every": "soon"}), "u").unwrap_err(),
        );
        assert!(
            m.contains("connection `tok`") && m.contains("rotate_every"),
            "{m}"
        );
        let m = msg(
            ConnectionConfig::from_json("tok", json!({"rotate_every": "0s"}), "u").unwrap_err(),
        );
        assert!(m.contains("rotate_every"), "{m}");
        let m = msg(
            ConnectionConfig::from_json("tok", json!({"algorithm": "RS256"}), "u").unwrap_err(),
        );
        assert!(m.contains("RS256"), "{m}");
        let m = msg(ConnectionConfig::from_json("tok", json!({"rotate": "1h"}), "u").unwrap_err());
        assert!(m.contains("unknown field `rotate`"), "{m}");
        let m = msg(ConnectionConfig::from_json("tok", json!({}), "").unwrap_err());
        assert!(m.contains("issuer"), "{m}");
    }

    #[test]
    fn role_defaults_and_fields() {
        let r = RoleConfig::from_json("tok", "orders", json!(null)).unwrap();
        assert_eq!(r.audience, "lessor:tok/orders");
        assert!(r.extra_claims.is_empty());
        let r = RoleConfig::from_json(
            "tok",
            "orders",
            json!({"audience": "orders-api", "extra_claims": {"team": "shop"}}),
        )
        .unwrap();
        assert_eq!(r.audience, "orders-api");
        assert_eq!(r.extra_claims.get("team").map(String::as_str), Some("shop"));
    }

    #[test]
    fn role_errors_name_role_and_field() {
        let m = msg(RoleConfig::from_json("tok", "orders", json!({"audiance": "x"})).unwrap_err());
        assert!(m.contains("tok/orders") && m.contains("audiance"), "{m}");
        let m = msg(
            RoleConfig::from_json("tok", "orders", json!({"extra_claims": {"sub": "x"}}))
                .unwrap_err(),
        );
        assert!(
            m.contains("tok/orders") && m.contains("extra_claims.sub"),
            "{m}"
        );
        let m = msg(
            RoleConfig::from_json("tok", "orders", json!({"extra_claims": {"n": 1}})).unwrap_err(),
        );
        assert!(m.contains("extra_claims.n") && m.contains("string"), "{m}");
        let m = msg(RoleConfig::from_json("tok", "orders", json!({"audience": " "})).unwrap_err());
        assert!(m.contains("audience"), "{m}");
    }
}
