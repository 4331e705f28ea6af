//! `[vault_api]`: which Vault mount paths lessor answers, and how they map
//! to lessor connections and issuers.
//!
//! ```toml
//! [vault_api]
//! session_ttl = "1h"        # lifetime of a login's client token
//! session_max_ttl = "1h"    # renew-self never extends a token past this
//! logins_per_minute = 30    # per workload, per replica (0 = no limit)
//!
//! [vault_api.auth.jwt]      # POST /v1/auth/jwt/login
//! issuers = ["github"]      # names in [issuers]; empty = every issuer
//! roles = []                # allowed `role` names; empty = any
//!
//! [vault_api.mounts.database]   # GET /v1/database/creds/<role>
//! connection = "pg"
//! ```
//!
//! Must not import: http, store, policy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Mount paths a Vault mount may not use: lessor's own endpoints under
/// `/v1`, and Vault's system and auth trees.
pub const RESERVED_MOUNTS: &[&str] =
    &["sys", "auth", "leases", "roles", "admin", "policy", "health", "openapi.json", "identity", "cubbyhole"];

/// Shortest and longest client-token lifetimes.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

fn default_logins_per_minute() -> u32 {
    30
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// `[vault_api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultApiConfig {
    /// Lifetime of the client token a login returns (default 1h).
    #[serde(default = "default_session_ttl", with = "crate::duration::serde")]
    pub session_ttl: Duration,
    /// How far `auth/token/renew-self` may extend a token, counted from its
    /// login (default: `session_ttl`, so a renewal never extends it).
    #[serde(default, with = "crate::duration::serde_opt")]
    pub session_max_ttl: Option<Duration>,
    /// Logins a workload (issuer + subject) may make per minute, per
    /// replica (a burst of this many, refilled at this rate; 0 = no limit).
    /// Each login is a store write; an agent logs in about once a session.
    #[serde(default = "default_logins_per_minute")]
    pub logins_per_minute: u32,
    /// JWT auth mounts, by path (`jwt` answers `auth/jwt/login`).
    #[serde(default)]
    pub auth: BTreeMap<String, AuthMount>,
    /// Secret mounts, by path (`database` answers `database/creds/<role>`).
    #[serde(default)]
    pub mounts: BTreeMap<String, SecretMount>,
}

/// One JWT auth mount.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthMount {
    /// Issuer names (from `[issuers]`) whose JWTs may log in here; empty =
    /// every configured issuer.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// `role` values accepted at login; empty = any (Cedar sees the role
    /// as `context.vault_role` on every request the token makes).
    #[serde(default)]
    pub roles: Vec<String>,
}

/// One secret mount: a lessor connection seen through Vault's paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretMount {
    /// The connection whose roles this mount serves (`<mount>/creds/<role>`
    /// is the lessor role `<connection>/<role>`).
    pub connection: String,
}

impl VaultApiConfig {
    pub fn session_max_ttl(&self) -> Duration {
        self.session_max_ttl.unwrap_or(self.session_ttl)
    }

    /// Checks names and references; `connection_kind` says a connection's
    /// plugin kind (None: no such connection), `issuer_known` whether an
    /// issuer name is configured.
    pub fn validate(&self, connection_kind: impl Fn(&str) -> Option<String>, issuer_known: impl Fn(&str) -> bool) -> Result<(), String> {
        if self.session_ttl < MIN_SESSION_TTL || self.session_ttl > MAX_SESSION_TTL {
            return Err(format!(
                "vault_api.session_ttl is {}; it must be between {} and {}",
                crate::fmt_duration(self.session_ttl),
                crate::fmt_duration(MIN_SESSION_TTL),
                crate::fmt_duration(MAX_SESSION_TTL)
            ));
        }
        let max = self.session_max_ttl();
        if max < self.session_ttl || max > MAX_SESSION_TTL {
            return Err(format!(
                "vault_api.session_max_ttl is {}; it must be at least session_ttl ({}) and at most {}",
                crate::fmt_duration(max),
                crate::fmt_duration(self.session_ttl),
                crate::fmt_duration(MAX_SESSION_TTL)
            ));
        }
        for (path, a) in &self.auth {
            check_path("vault_api.auth", path)?;
            if path == "token" {
                return Err("vault_api.auth.token: `token` is Vault's token store (auth/token/...), not a login mount".into());
            }
            for i in &a.issuers {
                if !issuer_known(i) {
                    return Err(format!("vault_api.auth.{path}: issuer `{i}` is not in [issuers]"));
                }
            }
            for r in &a.roles {
                if !valid_role_name(r) {
                    return Err(format!("vault_api.auth.{path}: role `{r}` must be 1-64 of A-Z a-z 0-9 _ - ."));
                }
            }
        }
        for (path, m) in &self.mounts {
            check_path("vault_api.mounts", path)?;
            if RESERVED_MOUNTS.contains(&path.as_str()) {
                return Err(format!(
                    "vault_api.mounts.{path}: `{path}` is taken by lessor's or Vault's own paths (reserved: {})",
                    RESERVED_MOUNTS.join(", ")
                ));
            }
            if connection_kind(&m.connection).is_none() {
                return Err(format!("vault_api.mounts.{path}: connection `{}` is not in [connections]", m.connection));
            }
        }
        Ok(())
    }
}

/// A mount path: one segment of `A-Za-z0-9_-.` (Vault allows nested
/// mounts; lessor keeps them flat so a path names its mount unambiguously).
fn check_path(section: &str, path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= 64
        && path != "."
        && path != ".."
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{section}: mount path `{}` must be 1-64 of A-Z a-z 0-9 _ - . (one segment)", path.escape_debug()))
    }
}

/// A Vault role name as lessor accepts it at login.
pub fn valid_role_name(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> VaultApiConfig {
        toml::from_str(text).unwrap()
    }

    fn validate(c: &VaultApiConfig) -> Result<(), String> {
        c.validate(|n| (n == "pg").then(|| "postgres".to_string()), |i| i == "github")
    }

    #[test]
    fn defaults_and_references() {
        let c = cfg("[auth.jwt]\n[mounts.database]\nconnection = \"pg\"\n");
        assert_eq!(c.session_ttl, Duration::from_secs(3600));
        assert_eq!(c.session_max_ttl(), c.session_ttl);
        validate(&c).unwrap();
        let e = validate(&cfg("[mounts.database]\nconnection = \"nope\"\n")).unwrap_err();
        assert!(e.contains("connection `nope` is not in [connections]"), "{e}");
        let e = validate(&cfg("[auth.jwt]\nissuers = [\"gitlab\"]\n")).unwrap_err();
        assert!(e.contains("issuer `gitlab`"), "{e}");
    }

    #[test]
    fn reserved_and_malformed_paths_are_refused() {
        for bad in ["sys", "leases", "admin"] {
            let e = validate(&cfg(&format!("[mounts.{bad}]\nconnection = \"pg\"\n"))).unwrap_err();
            assert!(e.contains("reserved"), "{e}");
        }
        let e = validate(&cfg("[mounts.\"a/b\"]\nconnection = \"pg\"\n")).unwrap_err();
        assert!(e.contains("one segment"), "{e}");
        let e = validate(&cfg("[auth.token]\n")).unwrap_err();
        assert!(e.contains("token store"), "{e}");
    }

    #[test]
    fn ttls_are_bounded() {
        let e = validate(&cfg("session_ttl = \"1s\"\n")).unwrap_err();
        assert!(e.contains("session_ttl"), "{e}");
        let e = validate(&cfg("session_ttl = \"1h\"\nsession_max_ttl = \"10m\"\n")).unwrap_err();
        assert!(e.contains("at least session_ttl"), "{e}");
        let e = validate(&cfg("session_ttl = \"1h\"\nsession_max_ttl = \"48h\"\n")).unwrap_err();
        assert!(e.contains("at most 24h"), "{e}");
    }
}
