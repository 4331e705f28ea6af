//! `[people]`: how long person sessions last and which OpenID Connect
//! providers people sign in with.
//!
//! ```toml
//! [people]
//! idle_timeout = "30m"        # 1s..24h: a session unused this long ends
//! absolute_timeout = "12h"    # 1s..30d, at least idle_timeout
//! [people.providers.corp]
//! issuer = "https://login.example.com"   # <issuer>/.well-known/openid-configuration
//! client_id = "lessor"
//! client_secret_file = "/etc/lessor/oidc-secret"   # owner-only (0600), trimmed
//! scopes = ["openid", "email", "profile", "groups"]
//! [people.providers.corp.claims]
//! subject = "sub"
//! email = "email"
//! name = "name"
//! groups = "groups"
//! ```
//!
//! Must not import: http, store, policy, lease, config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Bounds of `idle_timeout` and `absolute_timeout`. The lower bounds are
/// low so tests can watch sessions end; production values are minutes to
/// hours.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_IDLE: Duration = Duration::from_secs(24 * 3600);
pub const MAX_ABSOLUTE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most clock skew tolerated on an ID token's `exp`/`iat`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Largest client secret file read.
const MAX_SECRET_BYTES: u64 = 4096;

fn default_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_absolute() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].into_iter().map(String::from).collect()
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "PS256", "EdDSA"].into_iter().map(String::from).collect()
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_discovery_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// `[people]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeopleConfig {
    /// A session not used for this long ends (default 30m).
    #[serde(default = "default_idle", with = "crate::duration::serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however much it is used
    /// (default 12h).
    #[serde(default = "default_absolute", with = "crate::duration::serde")]
    pub absolute_timeout: Duration,
    /// OpenID Connect providers, by a short name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// One OpenID Connect provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The issuer URL; the ID token's `iss` must equal it exactly.
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (owner-only, trimmed).
    pub client_secret_file: PathBuf,
    /// Scopes asked for; must include `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Which claims become the person's attributes.
    #[serde(default)]
    pub claims: ClaimNames,
    /// ID token signature algorithms accepted (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `iat` (default 60s, at most 5m).
    #[serde(default = "default_leeway", with = "crate::duration::serde")]
    pub leeway: Duration,
    /// How long the discovery document and key set are cached (default 1h).
    #[serde(default = "default_discovery_ttl", with = "crate::duration::serde")]
    pub discovery_cache_ttl: Duration,
}

/// `[people.providers.<name>.claims]`: claim names in the ID token (or
/// userinfo) for each person attribute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimNames {
    #[serde(default = "sub")]
    pub subject: String,
    #[serde(default = "email")]
    pub email: String,
    #[serde(default = "name")]
    pub name: String,
    #[serde(default = "groups")]
    pub groups: String,
}

fn sub() -> String {
    "sub".into()
}
fn email() -> String {
    "email".into()
}
fn name() -> String {
    "name".into()
}
fn groups() -> String {
    "groups".into()
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames { subject: sub(), email: email(), name: name(), groups: groups() }
    }
}

/// A provider name: 1-64 of `a-z 0-9 _ -`.
pub fn valid_provider_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl PeopleConfig {
    /// Makes relative secret paths relative to `dir` (the config file's).
    pub fn rebase(&mut self, dir: &Path) {
        for p in self.providers.values_mut() {
            if p.client_secret_file.is_relative() {
                p.client_secret_file = dir.join(&p.client_secret_file);
            }
        }
    }

    /// Checks bounds and names (not the secret files: see
    /// [`ProviderConfig::read_secret`]).
    pub fn validate(&self) -> Result<(), String> {
        let f = crate::fmt_duration;
        if self.idle_timeout < MIN_TIMEOUT || self.idle_timeout > MAX_IDLE {
            return Err(format!(
                "people.idle_timeout is {}; it must be between {} and {}",
                f(self.idle_timeout),
                f(MIN_TIMEOUT),
                f(MAX_IDLE)
            ));
        }
        if self.absolute_timeout < self.idle_timeout || self.absolute_timeout > MAX_ABSOLUTE {
            return Err(format!(
                "people.absolute_timeout is {}; it must be at least idle_timeout ({}) and at most 30 days",
                f(self.absolute_timeout),
                f(self.idle_timeout)
            ));
        }
        if self.providers.is_empty() {
            return Err("people: name at least one provider ([people.providers.<name>])".into());
        }
        for (name, p) in &self.providers {
            let at = format!("people.providers.{name}");
            if !valid_provider_name(name) {
                return Err(format!("{at}: a provider name is 1-64 of a-z 0-9 _ -"));
            }
            check_issuer(&p.issuer).map_err(|e| format!("{at}.issuer: {e}"))?;
            if p.client_id.trim().is_empty() || p.client_id.len() > 256 {
                return Err(format!("{at}.client_id must be 1-256 characters"));
            }
            if !p.scopes.iter().any(|s| s == "openid") {
                return Err(format!("{at}.scopes must include `openid`"));
            }
            if let Some(s) = p.scopes.iter().find(|s| s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic())) {
                return Err(format!("{at}.scopes: `{}` is not a scope (1-128 printable ASCII, no spaces)", s.escape_debug()));
            }
            if p.algorithms.is_empty() {
                return Err(format!("{at}.algorithms must not be empty"));
            }
            for a in &p.algorithms {
                crate::identity::parse_allowed_alg(a).map_err(|e| format!("{at}.algorithms: {e}"))?;
            }
            if p.leeway > MAX_LEEWAY {
                return Err(format!("{at}.leeway is {}; at most {}", f(p.leeway), f(MAX_LEEWAY)));
            }
            if p.discovery_cache_ttl < Duration::from_secs(1) || p.discovery_cache_ttl > Duration::from_secs(24 * 3600) {
                return Err(format!("{at}.discovery_cache_ttl must be between 1s and 24h"));
            }
            let c = &p.claims;
            for (k, v) in [("subject", &c.subject), ("email", &c.email), ("name", &c.name), ("groups", &c.groups)] {
                if v.is_empty() || v.len() > 128 {
                    return Err(format!("{at}.claims.{k} must name a claim (1-128 characters)"));
                }
            }
        }
        let mut seen = BTreeMap::new();
        for (name, p) in &self.providers {
            if let Some(other) = seen.insert(p.issuer.trim_end_matches('/'), name) {
                return Err(format!("people.providers `{other}` and `{name}` both use issuer `{}`", p.issuer));
            }
        }
        Ok(())
    }
}

/// An issuer URL: `https://...`, or `http://` to a loopback host (tests,
/// `lessor dev`); no query or fragment.
fn check_issuer(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("`{u}` is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{u}` must have no query or fragment"));
    }
    let host = url.host_str().ok_or_else(|| format!("`{u}` has no host"))?;
    let loopback = host == "localhost"
        || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!("`{u}` must use https (plain http only to a loopback host)")),
        s => Err(format!("`{u}`: scheme `{s}` is not http(s)")),
    }
}

impl ProviderConfig {
    /// Reads the client secret: the file must exist, be readable by its
    /// owner only (no group or world bits) and hold 1-4096 bytes (trimmed).
    pub fn read_secret(&self, name: &str) -> Result<SecretString, String> {
        let p = &self.client_secret_file;
        let at = format!("people.providers.{name}.client_secret_file {}", p.display());
        let meta = std::fs::metadata(p).map_err(|e| format!("{at}: {e}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!("{at}: mode is {mode:03o}; a client secret must be readable by its owner only (chmod 600)"));
            }
        }
        if meta.len() > MAX_SECRET_BYTES {
            return Err(format!("{at}: larger than {MAX_SECRET_BYTES} bytes"));
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(p).map_err(|e| format!("{at}: {e}"))?);
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("{at}: the file is empty"));
        }
        Ok(SecretString::from(t.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> PeopleConfig {
        toml::from_str(&format!(
            "{extra}\n[providers.corp]\nissuer = \"https://login.example.com\"\nclient_id = \"lessor\"\nclient_secret_file = \"s\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_bounds() {
        let c = cfg("");
        assert_eq!(c.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.absolute_timeout, Duration::from_secs(12 * 3600));
        assert_eq!(c.providers["corp"].claims.subject, "sub");
        c.validate().unwrap();
        let e = cfg("idle_timeout = \"48h\"\nabsolute_timeout = \"72h\"").validate().unwrap_err();
        assert!(e.contains("people.idle_timeout is 48h"), "{e}");
        let e = cfg("idle_timeout = \"2h\"\nabsolute_timeout = \"1h\"").validate().unwrap_err();
        assert!(e.contains("at least idle_timeout"), "{e}");
        let e = cfg("absolute_timeout = \"31d\"").validate().unwrap_err();
        assert!(e.contains("at most 30 days"), "{e}");
    }

    #[test]
    fn providers_are_checked() {
        let mut c = cfg("");
        c.providers.get_mut("corp").unwrap().issuer = "http://login.example.com".into();
        assert!(c.validate().unwrap_err().contains("must use https"));
        c.providers.get_mut("corp").unwrap().issuer = "http://127.0.0.1:9000".into();
        c.validate().unwrap();
        c.providers.get_mut("corp").unwrap().scopes = vec!["email".into()];
        assert!(c.validate().unwrap_err().contains("must include `openid`"));
        let mut c = cfg("");
        c.providers.get_mut("corp").unwrap().algorithms = vec!["HS256".into()];
        assert!(c.validate().unwrap_err().contains("symmetric"));
        let e = toml::from_str::<PeopleConfig>("[providers.x]\nissuer = \"https://a\"\nclient_id = \"c\"\nclient_secret_file = \"s\"\nclient_secret = \"no\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_secret"), "{e}");
    }

    #[test]
    fn the_secret_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "  s3cret\n").unwrap();
        let mut c = cfg("");
        c.providers.get_mut("corp").unwrap().client_secret_file = p.clone();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = c.providers["corp"].read_secret("corp").unwrap_err();
            assert!(e.contains("mode is 644"), "{e}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        use secrecy::ExposeSecret;
        assert_eq!(c.providers["corp"].read_secret("corp").unwrap().expose_secret(), "s3cret");
    }
}
