//! Connection and role configuration of the MySQL / MariaDB plugin, parsed
//! from the JSON the core hands over (a TOML table turned into JSON).
//!
//! Owns validation of config only: reading the admin DSN from its file or
//! environment variable into a [`SecretString`], parsing templates, checking
//! that every scope maps to server roles or grants. Knows nothing of pools or
//! SQL execution. The DSN's password appears in no message and no `Debug`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lessor_plugin::{PluginError, RoleSpec};
use secrecy::SecretString;
use serde::Deserialize;

use lessor_plugin_sql::config::{check_prefix as check_name_prefix, connect_timeout, list_or_none, pool_size, read_dsn};
pub use lessor_plugin_sql::config::DsnSource;

use crate::sql::{Template, MAX_IDENT_CHARS};

/// Longest `user_prefix`: leaves 23 lease characters within MySQL's 32.
pub const MAX_PREFIX_BYTES: usize = 8;

const DEFAULT_PREFIX: &str = "lessor";
/// Default host pattern of a role's accounts.
pub const DEFAULT_HOST: &str = "%";
/// MySQL's and MariaDB's limit on the host part of an account.
const MAX_HOST_CHARS: usize = 255;

/// Settings of one MySQL / MariaDB connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The admin DSN from `dsn_file` / `dsn_env`; `None`: the core manages
    /// the root credential and installs it.
    pub dsn: Option<(SecretString, DsnSource)>,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    pub user_prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(default)]
    dsn_file: Option<PathBuf>,
    #[serde(default)]
    dsn_env: Option<String>,
    #[serde(default)]
    pool_size: Option<u32>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    user_prefix: Option<String>,
}

impl ConnectionConfig {
    pub fn from_json(connection: &str, value: serde_json::Value) -> Result<Self, PluginError> {
        let bad = |msg: String| PluginError::Misconfigured(format!("connection `{connection}`: {msg}"));
        let value = if value.is_null() { serde_json::json!({}) } else { value };
        let raw: RawConnection = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let dsn = read_dsn(raw.dsn_file, raw.dsn_env, bad)?;
        let pool_size = pool_size(raw.pool_size, bad)?;
        let connect_timeout = connect_timeout(raw.connect_timeout, Some((Duration::from_secs(300), "5m")), bad)?;
        let user_prefix = raw.user_prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        check_prefix(&user_prefix).map_err(|m| bad(format!("`user_prefix` = `{user_prefix}` {m}")))?;
        Ok(ConnectionConfig { dsn, pool_size, connect_timeout, user_prefix })
    }
}

fn check_prefix(p: &str) -> Result<(), String> {
    check_name_prefix(
        p,
        MAX_PREFIX_BYTES,
        " (MySQL user names are at most 32 characters, and the lease id needs the rest)",
    )
}

/// Settings of one role of a MySQL / MariaDB connection.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    /// The host part of every account the role creates (`'user'@'host'`).
    pub host: String,
    /// Database the issued DSN names (none by default).
    pub database: Option<String>,
    /// Scope -> server roles (`CREATE ROLE` at the server) granted to the
    /// account and made its default roles.
    pub roles: BTreeMap<String, Vec<String>>,
    /// Scope -> statement templates run after the roles are granted.
    pub grants: BTreeMap<String, Vec<Template>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    grants: BTreeMap<String, Vec<String>>,
}

fn check_host(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("is empty (use \"%\" for any host)".into());
    }
    if h.chars().count() > MAX_HOST_CHARS {
        return Err(format!("is longer than {MAX_HOST_CHARS} characters"));
    }
    if !h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '%' | '_' | '.' | '-' | ':' | '/')) {
        return Err("may only hold letters, digits and `% _ . - : /` (a host name, an IP address or netmask, `%` wildcards)".into());
    }
    Ok(())
}

fn check_server_role(r: &str) -> Result<(), String> {
    if r.is_empty() || r.chars().count() > MAX_IDENT_CHARS || r.ends_with(' ') {
        return Err("is not a role name (1 to 64 characters, no trailing space)".into());
    }
    if r.chars().any(|c| c.is_control()) {
        return Err("holds a control character".into());
    }
    Ok(())
}

impl RoleConfig {
    /// Parses a role's plugin table. `Null` and `{}` give the defaults, which
    /// suit only a role without scopes (every scope needs `roles` or
    /// `grants`).
    pub fn from_json(connection: &str, spec: &RoleSpec) -> Result<Self, PluginError> {
        let bad = |msg: String| PluginError::Misconfigured(format!("role `{connection}/{}`: {msg}", spec.name));
        let raw: RawRole = if spec.config.is_null() {
            RawRole::default()
        } else {
            serde_json::from_value(spec.config.clone()).map_err(|e| bad(e.to_string()))?
        };
        let host = raw.host.unwrap_or_else(|| DEFAULT_HOST.to_owned());
        check_host(&host).map_err(|m| bad(format!("`host` = `{host}` {m}")))?;
        if let Some(db) = &raw.database {
            if db.is_empty() || db.chars().count() > MAX_IDENT_CHARS || db.contains('\0') {
                return Err(bad(format!("`database` = `{db}` is not a database name (1 to 64 characters)")));
            }
        }
        let known = |field: &str, scope: &str| -> Result<(), PluginError> {
            if spec.scopes.iter().any(|s| s == scope) {
                Ok(())
            } else {
                Err(bad(format!(
                    "`{field}.\"{scope}\"` is for a scope the role cannot grant (its scopes: {})",
                    list_or_none(&spec.scopes)
                )))
            }
        };
        for (scope, list) in &raw.roles {
            known("roles", scope)?;
            for (i, r) in list.iter().enumerate() {
                check_server_role(r).map_err(|m| bad(format!("`roles.\"{scope}\"[{i}]` = `{r}` {m}")))?;
            }
        }
        let mut grants = BTreeMap::new();
        for (scope, list) in raw.grants {
            known("grants", &scope)?;
            let mut parsed = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                let t = Template::parse(s).map_err(|e| bad(format!("`grants.\"{scope}\"[{i}]`: {e}")))?;
                parsed.push(t);
            }
            grants.insert(scope, parsed);
        }
        for scope in &spec.scopes {
            let has_roles = raw.roles.get(scope).is_some_and(|l| !l.is_empty());
            let has_grants = grants.get(scope).is_some_and(|l: &Vec<Template>| !l.is_empty());
            if !has_roles && !has_grants {
                return Err(bad(format!(
                    "scope `{scope}` maps to nothing: add `roles.\"{scope}\" = [\"a_server_role\"]` (preferred) or `grants.\"{scope}\" = [\"GRANT ... TO {{{{name}}}}\"]`"
                )));
            }
        }
        Ok(RoleConfig { host, database: raw.database, roles: raw.roles, grants })
    }

    /// The server roles the granted scopes map to, each once, in order.
    pub fn server_roles(&self, scopes: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in scopes.iter().filter_map(|s| self.roles.get(s)).flatten() {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;
    use std::io::Write;

    fn msg(e: PluginError) -> String {
        match e {
            PluginError::Misconfigured(m) => m,
            other => panic!("expected Misconfigured, got {other:?}"),
        }
    }

    fn spec(scopes: &[&str], config: serde_json::Value) -> RoleSpec {
        RoleSpec {
            name: "app".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            max_ttl: Duration::from_secs(3600),
            config,
        }
    }

    #[test]
    fn connection_defaults_and_errors() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"mysql://admin:hunter2secret@db:3306/app\n").unwrap();
        let c = ConnectionConfig::from_json("my", json!({"dsn_file": f.path()})).unwrap();
        assert_eq!(c.dsn.as_ref().unwrap().0.expose_secret(), "mysql://admin:hunter2secret@db:3306/app");
        assert_eq!((c.pool_size, c.connect_timeout, c.user_prefix.as_str()), (4, Duration::from_secs(5), "lessor"));
        assert!(!format!("{c:?}").contains("hunter2secret"));
        assert!(ConnectionConfig::from_json("my", json!(null)).unwrap().dsn.is_none());
        let p = f.path().to_str().unwrap();
        for (v, want) in [
            (json!({"dsn_file": p, "dsn_env": "X"}), "not both"),
            (json!({"dsn_file": "/nonexistent/dsn"}), "cannot read `dsn_file` (/nonexistent/dsn)"),
            (json!({"dsn_env": "LESSOR_MY_SURELY_UNSET"}), "`LESSOR_MY_SURELY_UNSET` (from `dsn_env`)"),
            (json!({"pool_size": 0}), "`pool_size` = 0"),
            (json!({"connect_timeout": "soon"}), "`connect_timeout` = `soon`"),
            (json!({"user_prefix": "Lessor"}), "`user_prefix` = `Lessor` may only"),
            (json!({"user_prefix": "ninebytes"}), "at most 8"),
            (json!({"dsn": "mysql://x"}), "unknown field `dsn`"),
        ] {
            let m = msg(ConnectionConfig::from_json("my", v.clone()).unwrap_err());
            assert!(m.starts_with("connection `my`: ") && m.contains(want), "{v}: {m}");
        }
    }

    #[test]
    fn roles_and_grants() {
        let r = RoleConfig::from_json("my", &spec(&[], json!(null))).unwrap();
        assert_eq!(r.host, "%");
        let r = RoleConfig::from_json(
            "my",
            &spec(
                &["orders.read", "orders.write"],
                json!({"host": "10.0.%", "roles": {"orders.read": ["orders_reader"], "orders.write": ["orders_reader", "orders_writer"]},
                       "grants": {"orders.write": ["GRANT INSERT ON shop.orders TO {{name}}"]}}),
            ),
        )
        .unwrap();
        assert_eq!(r.host, "10.0.%");
        assert_eq!(r.server_roles(&["orders.read".into(), "orders.write".into()]), ["orders_reader", "orders_writer"]);
        assert_eq!(r.grants["orders.write"].len(), 1);
    }

    #[test]
    fn role_errors_name_role_and_field() {
        for (scopes, v, want) in [
            (vec!["orders.read"], json!({}), "scope `orders.read` maps to nothing"),
            (vec![], json!({"roles": {"x": ["r"]}}), "`roles.\"x\"` is for a scope the role cannot grant"),
            (vec!["a"], json!({"roles": {"a": [""]}}), "`roles.\"a\"[0]` = `` is not a role name"),
            (vec!["a"], json!({"grants": {"a": ["GRANT r TO {{nme}}"]}}), "`grants.\"a\"[0]`: unknown placeholder `{{nme}}`"),
            (vec!["a"], json!({"grants": {"a": ["GRANT r TO {{name}} -- {{claim:x}}"]}}), "is inside a `--` or `#` comment"),
            (vec![], json!({"host": ""}), "`host` = `` is empty"),
            (vec![], json!({"host": "a'b"}), "`host` = `a'b` may only hold"),
            (vec![], json!({"hots": "%"}), "unknown field `hots`"),
        ] {
            let m = msg(RoleConfig::from_json("my", &spec(&scopes, v.clone())).unwrap_err());
            assert!(m.starts_with("role `my/app`: ") && m.contains(want), "{v}: {m}");
        }
    }
}
