//! Connection and role configuration of the PostgreSQL plugin, parsed from
//! the JSON the core hands over (a TOML table turned into JSON).
//!
//! Owns validation of config only: reading the admin DSN (when the config
//! names one) from its file or environment variable into a [`SecretString`],
//! parsing templates, checking that every scope has grants. Knows nothing of
//! pools or SQL execution. The DSN's password appears in no message and no
//! `Debug` output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lessor_plugin::{PluginError, RoleSpec};
use secrecy::SecretString;
use serde::Deserialize;

use lessor_plugin_sql::config::{check_prefix as check_name_prefix, connect_timeout, list_or_none, pool_size, read_dsn};
pub use lessor_plugin_sql::config::DsnSource;

use crate::sql::{Named, Placeholder, Template};

/// Longest `role_prefix`, leaving room for a readable part and the lease hex
/// within PostgreSQL's 63-byte names.
pub const MAX_PREFIX_BYTES: usize = 16;

const DEFAULT_PREFIX: &str = "lessor";

/// Default creation statements. No direct grant on the database: an ACL
/// entry per lease would grow `pg_database`'s row until PostgreSQL refuses
/// it ("row is too big", a few hundred entries); CONNECT comes from PUBLIC
/// or from a group role granted by a scope.
pub const DEFAULT_CREATION: &[&str] = &["CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}"];

/// Default renewal statements.
pub const DEFAULT_RENEWAL: &[&str] = &["ALTER ROLE {{name}} VALID UNTIL {{expiry}}"];

/// TLS towards the server; maps to libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tls {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

/// What revocation does with objects the role owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnedObjects {
    /// `REASSIGN OWNED BY role TO admin; DROP OWNED BY role`.
    #[default]
    Reassign,
    /// Refuse (a retryable error naming an object) while the role owns any.
    Fail,
}

/// Settings of one PostgreSQL connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The admin DSN from `dsn_file` / `dsn_env`: the broker's root
    /// credential for this server. `None`: the core manages the root
    /// credential and installs it (`RootCredentials::install_root`).
    pub dsn: Option<(SecretString, DsnSource)>,
    pub pool_size: u32,
    /// Bounds establishing (or waiting for) a connection.
    pub connect_timeout: Duration,
    /// `None`: the DSN's `sslmode` if it has one, else `prefer`.
    pub tls: Option<Tls>,
    pub role_prefix: String,
    pub owned_objects: OwnedObjects,
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
    tls: Option<Tls>,
    #[serde(default)]
    role_prefix: Option<String>,
    #[serde(default)]
    owned_objects: OwnedObjects,
}

impl ConnectionConfig {
    /// Parses the connection table and reads the DSN from its file or
    /// environment variable. With neither (or no table at all) the root
    /// credential is managed by the core: `dsn` is `None`.
    pub fn from_json(connection: &str, value: serde_json::Value) -> Result<Self, PluginError> {
        let bad =
            |msg: String| PluginError::Misconfigured(format!("connection `{connection}`: {msg}"));
        let value = if value.is_null() { serde_json::json!({}) } else { value };
        let raw: RawConnection = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let dsn = read_dsn(raw.dsn_file, raw.dsn_env, bad)?;
        let pool_size = pool_size(raw.pool_size, bad)?;
        let connect_timeout = connect_timeout(raw.connect_timeout, None, bad)?;
        let role_prefix = raw.role_prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        check_prefix(&role_prefix).map_err(|m| bad(format!("`role_prefix` = `{role_prefix}` {m}")))?;
        Ok(ConnectionConfig {
            dsn,
            pool_size,
            connect_timeout,
            tls: raw.tls,
            role_prefix,
            owned_objects: raw.owned_objects,
        })
    }
}

fn check_prefix(p: &str) -> Result<(), String> {
    check_name_prefix(p, MAX_PREFIX_BYTES, "")?;
    if p == "pg" || p.starts_with("pg_") {
        return Err("would make names starting with `pg_`, which PostgreSQL reserves".into());
    }
    Ok(())
}

/// Settings of one role of a PostgreSQL connection.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    /// The database the role's statements run in and its DSN names;
    /// `None` means the admin DSN's database.
    pub database: Option<String>,
    pub creation: Vec<Template>,
    /// Scope -> statements run when the scope is granted.
    pub grants: BTreeMap<String, Vec<Template>>,
    /// `None`: the default revocation (see the crate docs).
    pub revocation: Option<Vec<Template>>,
    pub renewal: Vec<Template>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    creation: Option<Vec<String>>,
    #[serde(default)]
    grants: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    revocation: Option<Vec<String>>,
    #[serde(default)]
    renewal: Option<Vec<String>>,
}

/// Which placeholders a list of statements may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Creation,
    Grants,
    Revocation,
    Renewal,
}

impl Section {
    fn allows(self, p: &Placeholder) -> bool {
        match p {
            Placeholder::Named(Named::Password) => self == Section::Creation,
            Placeholder::Named(Named::Name | Named::Expiry | Named::Database | Named::Admin) => true,
            Placeholder::Claim(_) | Placeholder::ClaimIdent(_) => {
                matches!(self, Section::Creation | Section::Grants)
            }
        }
    }

    fn why_not(self, p: &Placeholder) -> &'static str {
        match p {
            Placeholder::Named(Named::Password) => "the password exists only while the role is created",
            _ => "workload claims are known only when issuing (creation and grants)",
        }
    }
}

fn templates(
    field: &str,
    section: Section,
    sources: Vec<String>,
) -> Result<Vec<Template>, String> {
    let mut out = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        let t = Template::parse(s).map_err(|e| format!("`{field}[{i}]`: {e}"))?;
        if let Some(p) = t.placeholders().find(|p| !section.allows(p)) {
            return Err(format!(
                "`{field}[{i}]` uses {p}, which {field} cannot use: {}",
                section.why_not(p)
            ));
        }
        out.push(t);
    }
    Ok(out)
}

fn defaults(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl RoleConfig {
    /// Parses a role's plugin table. `Null` and `{}` give the defaults, which
    /// suit only a role without scopes (every scope needs `grants`).
    pub fn from_json(connection: &str, spec: &RoleSpec) -> Result<Self, PluginError> {
        let bad = |msg: String| {
            PluginError::Misconfigured(format!("role `{connection}/{}`: {msg}", spec.name))
        };
        let raw: RawRole = if spec.config.is_null() {
            RawRole {
                database: None,
                creation: None,
                grants: BTreeMap::new(),
                revocation: None,
                renewal: None,
            }
        } else {
            serde_json::from_value(spec.config.clone()).map_err(|e| bad(e.to_string()))?
        };
        if let Some(db) = &raw.database {
            if db.is_empty() || db.len() > crate::sql::MAX_IDENT_BYTES || db.contains('\0') {
                return Err(bad(format!(
                    "`database` = `{db}` is not a database name (1 to 63 bytes, no NUL)"
                )));
            }
        }
        let creation = templates(
            "creation",
            Section::Creation,
            raw.creation.unwrap_or_else(|| defaults(DEFAULT_CREATION)),
        )
        .map_err(bad)?;
        if creation.is_empty() {
            return Err(bad("`creation` is empty; it must create the role".into()));
        }
        let mut grants = BTreeMap::new();
        for (scope, list) in raw.grants {
            if !spec.scopes.contains(&scope) {
                return Err(bad(format!(
                    "`grants.\"{scope}\"` is for a scope the role cannot grant (its scopes: {})",
                    list_or_none(&spec.scopes)
                )));
            }
            let parsed =
                templates(&format!("grants.\"{scope}\""), Section::Grants, list).map_err(bad)?;
            grants.insert(scope, parsed);
        }
        for scope in &spec.scopes {
            if !grants.contains_key(scope) {
                return Err(bad(format!(
                    "scope `{scope}` has no entry in `grants` (add `grants.\"{scope}\" = [\"GRANT ... TO {{{{name}}}}\"]`)"
                )));
            }
        }
        let revocation = raw
            .revocation
            .map(|list| templates("revocation", Section::Revocation, list))
            .transpose()
            .map_err(bad)?;
        if revocation.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad(
                "`revocation` is empty; leave it out for the default, or end it with `DROP ROLE {{name}}`".into(),
            ));
        }
        let renewal = templates(
            "renewal",
            Section::Renewal,
            raw.renewal.unwrap_or_else(|| defaults(DEFAULT_RENEWAL)),
        )
        .map_err(bad)?;
        if renewal.is_empty() {
            return Err(bad(
                "`renewal` is empty; it must move `VALID UNTIL` to {{expiry}}".into(),
            ));
        }
        Ok(RoleConfig {
            database: raw.database,
            creation,
            grants,
            revocation,
            renewal,
        })
    }

    /// Every template of the role, with the section it is in.
    pub fn issue_templates<'a>(&'a self, scopes: &'a [String]) -> impl Iterator<Item = &'a Template> {
        self.creation.iter().chain(
            scopes
                .iter()
                .filter_map(|s| self.grants.get(s))
                .flatten(),
        )
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

    fn dsn_file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
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
    fn connection_defaults_and_fields() {
        let f = dsn_file("postgres://lessor_admin:hunter2secret@db:5432/app\n");
        let c = ConnectionConfig::from_json("pg", json!({"dsn_file": f.path()})).unwrap();
        let (dsn, source) = c.dsn.as_ref().unwrap();
        assert_eq!(dsn.expose_secret(), "postgres://lessor_admin:hunter2secret@db:5432/app");
        assert_eq!(source, &DsnSource::File(f.path().to_owned()));
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.tls, None);
        assert_eq!(c.role_prefix, "lessor");
        assert_eq!(c.owned_objects, OwnedObjects::Reassign);
        assert!(!format!("{c:?}").contains("hunter2secret"));

        std::env::set_var("LESSOR_PG_CONFIG_TEST_DSN", "postgres://u:pw@h/db");
        let c = ConnectionConfig::from_json(
            "pg",
            json!({"dsn_env": "LESSOR_PG_CONFIG_TEST_DSN", "pool_size": 2, "connect_timeout": "750ms",
                   "tls": "verify-full", "role_prefix": "jit_1", "owned_objects": "fail"}),
        )
        .unwrap();
        assert_eq!(c.pool_size, 2);
        assert_eq!(c.connect_timeout, Duration::from_millis(750));
        assert_eq!(c.tls, Some(Tls::VerifyFull));
        assert_eq!(c.role_prefix, "jit_1");
        assert_eq!(c.owned_objects, OwnedObjects::Fail);
        assert_eq!(c.dsn.unwrap().1, DsnSource::Env("LESSOR_PG_CONFIG_TEST_DSN".into()));
    }

    #[test]
    fn without_a_dsn_the_root_credential_is_managed() {
        for v in [json!(null), json!({}), json!({"pool_size": 2})] {
            let c = ConnectionConfig::from_json("pg", v.clone()).unwrap();
            assert!(c.dsn.is_none(), "{v}");
        }
        let c = ConnectionConfig::from_json("pg", json!({"pool_size": 2})).unwrap();
        assert_eq!(c.pool_size, 2);
    }

    #[test]
    fn connection_errors_name_the_field() {
        let f = dsn_file("postgres://u:pw@h/db");
        let p = f.path().to_str().unwrap();
        let cases = [
            (json!({"dsn_file": p, "dsn_env": "X"}), "not both"),
            (json!({"dsn_file": "/nonexistent/dsn"}), "cannot read `dsn_file` (/nonexistent/dsn)"),
            (json!({"dsn_env": "LESSOR_PG_SURELY_UNSET"}), "`LESSOR_PG_SURELY_UNSET` (from `dsn_env`)"),
            (json!({"dsn_file": p, "pool_size": 0}), "`pool_size` = 0"),
            (json!({"dsn_file": p, "connect_timeout": "soon"}), "`connect_timeout` = `soon`"),
            (json!({"dsn_file": p, "tls": "maybe"}), "maybe"),
            (json!({"dsn_file": p, "role_prefix": "Lessor"}), "`role_prefix` = `Lessor` may only"),
            (json!({"dsn_file": p, "role_prefix": "a_very_long_prefix"}), "at most 16"),
            (json!({"dsn_file": p, "role_prefix": "pg_x"}), "reserves"),
            (json!({"dsn_file": p, "owned_objects": "keep"}), "keep"),
            (json!({"dsn_file": p, "dsn": "postgres://x"}), "unknown field `dsn`"),
        ];
        for (v, want) in cases {
            let m = msg(ConnectionConfig::from_json("pg", v.clone()).unwrap_err());
            assert!(m.starts_with("connection `pg`: "), "{v}: {m}");
            assert!(m.contains(want), "{v}: {m} lacks {want}");
        }
        let empty = dsn_file("\n");
        let m = msg(ConnectionConfig::from_json("pg", json!({"dsn_file": empty.path()})).unwrap_err());
        assert!(m.contains("is empty"), "{m}");
    }

    #[test]
    fn role_defaults_and_grants() {
        let r = RoleConfig::from_json("pg", &spec(&[], json!(null))).unwrap();
        assert_eq!(r.creation.len(), 1);
        assert_eq!(r.creation[0].source(), DEFAULT_CREATION[0]);
        assert_eq!(r.renewal[0].source(), DEFAULT_RENEWAL[0]);
        assert!(r.revocation.is_none() && r.database.is_none());

        let r = RoleConfig::from_json(
            "pg",
            &spec(
                &["orders.read"],
                json!({"database": "shop", "grants": {"orders.read": ["GRANT SELECT ON orders TO {{name}}"]},
                       "revocation": ["DROP OWNED BY {{name}}", "DROP ROLE {{name}}"]}),
            ),
        )
        .unwrap();
        assert_eq!(r.database.as_deref(), Some("shop"));
        assert_eq!(r.grants["orders.read"].len(), 1);
        assert_eq!(r.revocation.unwrap().len(), 2);
    }

    #[test]
    fn role_errors_name_role_and_field() {
        let cases = [
            (vec!["orders.read"], json!({}), "scope `orders.read` has no entry in `grants`"),
            (vec![], json!({"grants": {"x": ["SELECT 1"]}}), "`grants.\"x\"` is for a scope the role cannot grant"),
            (vec![], json!({"creation": ["CREATE ROLE {{nme}}"]}), "`creation[0]`: unknown placeholder `{{nme}}`"),
            (vec![], json!({"creation": ["CREATE ROLE {{name}", "x"]}), "`creation[0]`: `{{` at byte 12 is never closed"),
            (vec![], json!({"creation": []}), "`creation` is empty"),
            (vec![], json!({"renewal": ["ALTER ROLE {{name}} PASSWORD {{password}}"]}), "`renewal[0]` uses {{password}}"),
            (vec![], json!({"revocation": ["DROP SCHEMA {{claim_ident:ns}}"]}), "`revocation[0]` uses {{claim_ident:ns}}"),
            (vec![], json!({"revocation": []}), "`revocation` is empty"),
            (vec!["a"], json!({"grants": {"a": ["GRANT {{password}}"]}}), "`grants.\"a\"[0]` uses {{password}}"),
            (vec![], json!({"database": ""}), "`database` = ``"),
            (vec![], json!({"databse": "x"}), "unknown field `databse`"),
            (
                vec![],
                json!({"creation": ["CREATE ROLE {{name}} LOGIN", "GRANT app TO {{name}} -- {{claim:workflow}}"]}),
                "`creation[1]`: `{{claim:workflow}}` at byte 25 is inside a `--` comment",
            ),
            (
                vec!["a"],
                json!({"grants": {"a": ["COMMENT ON ROLE {{name}} IS 'team {{claim_ident:team}}'"]}}),
                "`grants.\"a\"[0]`: `{{claim_ident:team}}` at byte 34 is inside a string literal",
            ),
            (
                vec![],
                json!({"creation": ["CREATE ROLE {{name}} /* {{claim:x}} */"]}),
                "`creation[0]`: `{{claim:x}}` at byte 24 is inside a `/* */` comment",
            ),
        ];
        for (scopes, v, want) in cases {
            let m = msg(RoleConfig::from_json("pg", &spec(&scopes, v.clone())).unwrap_err());
            assert!(m.starts_with("role `pg/app`: "), "{v}: {m}");
            assert!(m.contains(want), "{v}: {m} lacks {want}");
        }
    }
}
