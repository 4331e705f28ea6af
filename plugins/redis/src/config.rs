//! Connection and role configuration of the Redis / Valkey plugin, parsed
//! from the JSON the core hands over (a TOML table turned into JSON).
//!
//! Owns validation of config only: the node list, reading the admin password
//! (when the config names one) into a [`SecretString`], checking each scope's
//! ACL rules ([`crate::acl::check_rule`]). Knows nothing of connections. The
//! password appears in no message and no `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lessor_plugin::{PluginError, RoleSpec};
use secrecy::SecretString;
use serde::Deserialize;

/// Longest `user_prefix`.
pub const MAX_PREFIX_BYTES: usize = 16;
/// Most nodes one connection may list.
pub const MAX_NODES: usize = 64;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_PREFIX: &str = "lessor";
const DEFAULT_USERNAME: &str = "default";

/// One node's address, as listed (`redis://host:port` or `rediss://...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Whether issue and revoke end with `ACL SAVE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclSave {
    /// On each node whose `CONFIG GET aclfile` names a file (asked once per
    /// node and connection; an admin without CONFIG must choose).
    #[default]
    Auto,
    Always,
    Never,
}

/// Where the admin password came from, for messages (never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::File(p) => write!(f, "`password_file` ({})", p.display()),
            PasswordSource::Env(v) => write!(f, "`password_env` (${v})"),
        }
    }
}

/// Settings of one Redis / Valkey deployment.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Every node of the deployment (primaries and replicas): ACL users are
    /// per node, so each is created and deleted on all of them.
    pub nodes: Vec<NodeUrl>,
    /// The ACL user lessor authenticates as (`AUTH <username> <password>`).
    pub username: String,
    /// The admin password from `password_file` / `password_env`. `None`:
    /// the core manages it (`Plugin::install_root`).
    pub password: Option<(SecretString, PasswordSource)>,
    /// PEM CA bundle for `rediss://` nodes; `None`: the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    /// Bounds connecting and each command, per node.
    pub timeout: Duration,
    pub user_prefix: String,
    pub acl_save: AclSave,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    nodes: Vec<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    user_prefix: Option<String>,
    #[serde(default)]
    acl_save: AclSave,
}

/// Parses one node URL: scheme `redis` or `rediss`, a host, an optional port
/// (6379), no credentials (they come from `username` and the password), no
/// path but `/` or `/0`.
pub fn parse_node(s: &str) -> Result<NodeUrl, String> {
    let u = url::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    let tls = match u.scheme() {
        "redis" => false,
        "rediss" => true,
        other => return Err(format!("`{s}`: scheme `{other}` is not `redis` or `rediss`")),
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "node `{}` holds credentials; set `username` and the password (`password_file`, `password_env` or a managed root credential) instead",
            u.host_str().unwrap_or("?")
        ));
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("`{s}` has no host")),
    };
    if !matches!(u.path(), "" | "/" | "/0") || u.query().is_some() || u.fragment().is_some() {
        return Err(format!("`{s}`: only `redis[s]://host:port` is accepted (ACL users are not per database)"));
    }
    let port = u.port().unwrap_or(6379);
    let url = format!("{}://{}:{port}", u.scheme(), if host.contains(':') { format!("[{host}]") } else { host.clone() });
    Ok(NodeUrl { url, tls, host, port })
}

/// Splits a URL with credentials (`redis://user:password@host:port`, what
/// `lessor dev --redis` takes) into the node, the user (`default` when
/// absent) and the password (empty when absent). Messages never hold the
/// password.
pub fn split_credentials(s: &str) -> Result<(NodeUrl, String, SecretString), String> {
    let mut u = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    let user = percent_encoding::percent_decode_str(u.username())
        .decode_utf8()
        .map_err(|_| "the user name is not UTF-8".to_string())?
        .into_owned();
    let password = percent_encoding::percent_decode_str(u.password().unwrap_or(""))
        .decode_utf8()
        .map_err(|_| "the password is not UTF-8".to_string())?
        .into_owned();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let node = parse_node(u.as_str())?;
    let user = if user.is_empty() { DEFAULT_USERNAME.to_owned() } else { user };
    check_username(&user)?;
    Ok((node, user, SecretString::from(password)))
}

fn check_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("is empty".into());
    }
    if p.len() > MAX_PREFIX_BYTES {
        return Err(format!("is {} bytes; at most {MAX_PREFIX_BYTES}", p.len()));
    }
    if !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err("may only hold a-z, 0-9 and `_`".into());
    }
    Ok(())
}

fn check_username(u: &str) -> Result<(), String> {
    if u.is_empty() || u.len() > 128 || u.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(format!("`username` = `{u}` must be 1 to 128 bytes without spaces or control characters"));
    }
    Ok(())
}

impl ConnectionConfig {
    pub fn from_json(connection: &str, value: serde_json::Value) -> Result<Self, PluginError> {
        let bad = |msg: String| PluginError::Misconfigured(format!("connection `{connection}`: {msg}"));
        let raw: RawConnection = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if raw.nodes.is_empty() {
            return Err(bad("`nodes` is empty; list every node of the deployment".into()));
        }
        if raw.nodes.len() > MAX_NODES {
            return Err(bad(format!("`nodes` lists {}; at most {MAX_NODES}", raw.nodes.len())));
        }
        let mut nodes: Vec<NodeUrl> = Vec::with_capacity(raw.nodes.len());
        for (i, s) in raw.nodes.iter().enumerate() {
            let n = parse_node(s).map_err(|m| bad(format!("`nodes[{i}]`: {m}")))?;
            if nodes.iter().any(|o| o.host == n.host && o.port == n.port) {
                return Err(bad(format!("`nodes[{i}]`: {n} is listed twice")));
            }
            nodes.push(n);
        }
        let username = raw.username.unwrap_or_else(|| DEFAULT_USERNAME.to_owned());
        check_username(&username).map_err(bad)?;
        let password = match (raw.password_file, raw.password_env) {
            (Some(_), Some(_)) => return Err(bad("set either `password_file` or `password_env`, not both".into())),
            (None, None) => None,
            (Some(path), None) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| bad(format!("cannot read `password_file` ({}): {e}", path.display())))?;
                Some((SecretString::from(text.trim_end_matches(['\r', '\n']).to_owned()), PasswordSource::File(path)))
            }
            (None, Some(var)) => {
                let text = std::env::var(&var)
                    .map_err(|e| bad(format!("environment variable `{var}` (from `password_env`): {e}")))?;
                Some((SecretString::from(text), PasswordSource::Env(var)))
            }
        };
        let tls_ca = match raw.tls_ca_file {
            None => None,
            Some(p) => Some(
                std::fs::read(&p).map_err(|e| bad(format!("cannot read `tls_ca_file` ({}): {e}", p.display())))?,
            ),
        };
        if tls_ca.is_some() && !nodes.iter().any(|n| n.tls) {
            return Err(bad("`tls_ca_file` is set but no node is `rediss://`".into()));
        }
        let timeout = match raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(s) => {
                let d = humantime::parse_duration(&s)
                    .map_err(|e| bad(format!("`timeout` = `{s}` is not a duration like \"5s\": {e}")))?;
                if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
                    return Err(bad(format!("`timeout` = `{s}` must be between 100ms and 5m")));
                }
                d
            }
        };
        let user_prefix = raw.user_prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        check_prefix(&user_prefix).map_err(|m| bad(format!("`user_prefix` = `{user_prefix}` {m}")))?;
        Ok(ConnectionConfig { nodes, username, password, tls_ca, timeout, user_prefix, acl_save: raw.acl_save })
    }
}

/// Settings of one role: the ACL rules each scope adds to the user.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    /// Scope -> ACL rules (`~cache:*`, `&events:*`, `+@read`, `-flushall`).
    pub scopes: BTreeMap<String, Vec<String>>,
}

/// A scope's rules: a list, or one string of space-separated rules.
#[derive(Deserialize)]
#[serde(untagged)]
enum Rules {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    scopes: BTreeMap<String, Rules>,
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

impl RoleConfig {
    pub fn from_json(connection: &str, spec: &RoleSpec) -> Result<Self, PluginError> {
        let bad = |msg: String| PluginError::Misconfigured(format!("role `{connection}/{}`: {msg}", spec.name));
        let raw: RawRole = if spec.config.is_null() {
            RawRole { scopes: BTreeMap::new() }
        } else {
            serde_json::from_value(spec.config.clone()).map_err(|e| bad(e.to_string()))?
        };
        let mut scopes = BTreeMap::new();
        for (scope, rules) in raw.scopes {
            if !spec.scopes.contains(&scope) {
                return Err(bad(format!(
                    "`scopes.\"{scope}\"` is for a scope the role cannot grant (its scopes: {})",
                    list_or_none(&spec.scopes)
                )));
            }
            let list: Vec<String> = match rules {
                Rules::One(s) => s.split_whitespace().map(str::to_owned).collect(),
                Rules::Many(v) => v,
            };
            if list.is_empty() {
                return Err(bad(format!("`scopes.\"{scope}\"` has no rules")));
            }
            for (i, r) in list.iter().enumerate() {
                crate::acl::check_rule(r).map_err(|m| bad(format!("`scopes.\"{scope}\"[{i}]` = `{r}`: {m}")))?;
            }
            scopes.insert(scope, list);
        }
        for scope in &spec.scopes {
            if !scopes.contains_key(scope) {
                return Err(bad(format!(
                    "scope `{scope}` has no entry in `scopes` (add e.g. `scopes.\"{scope}\" = [\"~cache:*\", \"+@read\"]`)"
                )));
            }
        }
        Ok(RoleConfig { scopes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(scopes: &[&str], config: serde_json::Value) -> RoleSpec {
        RoleSpec {
            name: "app".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            max_ttl: Duration::from_secs(3600),
            config,
        }
    }

    #[test]
    fn nodes_are_parsed_and_checked() {
        let n = parse_node("redis://10.0.0.1").unwrap();
        assert_eq!((n.host.as_str(), n.port, n.tls), ("10.0.0.1", 6379, false));
        let n = parse_node("rediss://[::1]:7000/").unwrap();
        assert_eq!((n.host.as_str(), n.port, n.tls, n.url.as_str()), ("::1", 7000, true, "rediss://[::1]:7000"));
        assert!(parse_node("redis://u:secretpw@h:1").unwrap_err().contains("holds credentials"));
        assert!(!parse_node("redis://u:secretpw@h:1").unwrap_err().contains("secretpw"));
        assert!(parse_node("http://h").unwrap_err().contains("scheme"));
        assert!(parse_node("redis://h/3").unwrap_err().contains("only"));
        let e = ConnectionConfig::from_json("c", json!({"nodes": ["redis://a:1", "redis://a:1"]})).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = ConnectionConfig::from_json("c", json!({"nodes": []})).unwrap_err();
        assert!(e.to_string().contains("`nodes` is empty"), "{e}");
        let e = ConnectionConfig::from_json("c", json!({"nodes": ["redis://a"], "timeout": "1h"})).unwrap_err();
        assert!(e.to_string().contains("`timeout`"), "{e}");
        let e = ConnectionConfig::from_json("c", json!({"nodes": ["redis://a"], "user_prefix": "Bad-"})).unwrap_err();
        assert!(e.to_string().contains("`user_prefix`"), "{e}");
        let (n, user, pw) = split_credentials("redis://ops:s%40cret@h:7000").unwrap();
        assert_eq!((n.url.as_str(), user.as_str()), ("redis://h:7000", "ops"));
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pw), "s@cret");
        let (_, user, _) = split_credentials("redis://:pw@h").unwrap();
        assert_eq!(user, "default");
        let ok = ConnectionConfig::from_json("c", json!({"nodes": ["redis://a", "redis://b:6380"]})).unwrap();
        assert_eq!(ok.username, "default");
        assert!(ok.password.is_none());
    }

    #[test]
    fn every_scope_needs_valid_rules() {
        let r = RoleConfig::from_json(
            "c",
            &spec(&["cache.read", "cache.write"], json!({"scopes": {"cache.read": "~cache:* +@read", "cache.write": ["~cache:*", "+@write"]}})),
        )
        .unwrap();
        assert_eq!(r.scopes["cache.read"], vec!["~cache:*", "+@read"]);
        let e = RoleConfig::from_json("c", &spec(&["a"], json!({}))).unwrap_err();
        assert!(e.to_string().contains("scope `a` has no entry"), "{e}");
        let e = RoleConfig::from_json("c", &spec(&["a"], json!({"scopes": {"a": "~x nopass"}}))).unwrap_err();
        assert!(e.to_string().contains("`scopes.\"a\"[1]` = `nopass`"), "{e}");
        let e = RoleConfig::from_json("c", &spec(&["a"], json!({"scopes": {"a": "~x", "b": "~y"}}))).unwrap_err();
        assert!(e.to_string().contains("cannot grant"), "{e}");
    }
}
