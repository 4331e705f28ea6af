//! The `Plugin` implementation: issue, renew, revoke and validate
//! just-in-time PostgreSQL roles. Must not import: the core (`lessor`).
//!
//! This module holds the plugin's state (the root credentials and their
//! per-database pools, the parsed roles) and the [`Plugin`] impl, whose
//! work is done by its children, one responsibility each: `connect`
//! (admin DSNs, pools, reaching the server, mapping sqlx errors), `catalog`
//! (role names, queries on `pg_roles` and friends, listing for the
//! reconciler), `issue` (creation and renewal transactions), `revoke`
//! (ending sessions, owned objects, dropping roles) and `root` (validating
//! and rotating root credentials). Never logs or returns an admin DSN's
//! password, a generated password or a statement's text.

mod catalog;
mod connect;
mod issue;
mod revoke;
mod root;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseRef, Plugin, PluginContext, PluginError,
    Registration, RenewRequest, RoleSpec, RootCredentials, RootSecretSpec, Validation, VendorObject,
    Workload,
};
use lessor_plugin_sql::naming::new_password;
use lessor_plugin_sql::root::{dsn_part, find_role, parse_roles, rfc3339, scrub_error, scrub_with, RootVersions, VersionedRoot};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use time::OffsetDateTime;
use tracing::instrument;

use crate::config::{ConnectionConfig, OwnedObjects, RoleConfig, Tls, DEFAULT_CREATION};
use crate::sql::{like_escape, quote_ident, RenderError, Template, Vars};

use catalog::*;
use connect::*;
use issue::*;

pub use lessor_plugin_sql::naming::{lease_hex, LEASE_HEX_LEN, MIN_LEASE_HEX_LEN};
pub use catalog::role_name;

/// Role names are PostgreSQL identifiers: at most 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// The plugin kind in config (`plugin = "postgres"`).
pub const KIND: &str = "postgres";

/// How the core knows this plugin (see [`lessor_plugin::Registration`]).
pub fn registration() -> Registration {
    Registration {
        kind: KIND,
        sdk_version: lessor_plugin::SDK_VERSION,
        vault: lessor_plugin::VaultShape::Database,
        build: |ctx, connection, roles| Box::pin(build(ctx, connection, roles)),
        validate_config,
        ca_files: lessor_plugin::no_ca_files,
    }
}

/// Checks the connection and role tables as [`build`] does, without
/// reading `dsn_file` or `dsn_env` (they may exist only where lessor runs)
/// and without connecting.
pub fn validate_config(connection: &Value, roles: &[RoleSpec]) -> Result<(), String> {
    lessor_plugin_sql::root::validate_config(
        connection,
        roles,
        |c| ConnectionConfig::from_json("", c).map(drop),
        |spec| RoleConfig::from_json("", spec).map(drop),
    )
}

/// Builds the PostgreSQL plugin for one connection. The core calls this.
///
/// Does not connect: the pools connect on first use, so lessor starts while
/// PostgreSQL is down ([`Plugin::validate`] reports that).
pub async fn build(
    ctx: PluginContext,
    connection: Value,
    roles: Vec<RoleSpec>,
) -> Result<Arc<dyn Plugin>, PluginError> {
    Ok(Arc::new(PostgresPlugin::new(ctx, connection, roles)?))
}

/// Where the admin connection goes, for messages. No password.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    user: String,
    database: String,
    socket: bool,
}

/// A configured role: its parsed table and `max_ttl`.
type Role = lessor_plugin_sql::root::Role<RoleConfig>;

/// The database a role's statements run in: its own, else the one of the
/// root credential's DSN.
fn role_database<'a>(role: &'a Role, root: &'a Root) -> &'a str {
    role.config.database.as_deref().unwrap_or(&root.target.database)
}

/// One root credential (admin DSN) and its lazily connecting pools.
struct Root {
    /// The core's version of it; `None` for the DSN of `dsn_file` /
    /// `dsn_env`.
    version: Option<i64>,
    dsn: SecretString,
    target: Target,
    /// One pool per database: the DSN's and every role's own.
    pools: BTreeMap<String, PgPool>,
    /// Values that must never appear in a message (the DSN's password, raw
    /// and percent-encoded); scrubbed from every error as a last line.
    never_show: Vec<SecretString>,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("version", &self.version)
            .field("server", &self.target.addr())
            .field("user", &self.target.user)
            .field("database", &self.target.database)
            .finish()
    }
}

impl VersionedRoot for Root {
    fn version(&self) -> Option<i64> {
        self.version
    }

    fn dsn(&self) -> &SecretString {
        &self.dsn
    }
}

/// What one issue transaction creates.
#[derive(Clone, Copy)]
struct Creation<'a> {
    req: &'a IssueRequest,
    role: &'a Role,
    name: &'a str,
    /// The SCRAM verifier (not the password).
    verifier: &'a str,
    expiry: &'a str,
    scopes: &'a [String],
}

/// The lease a revocation is for, and where it runs.
#[derive(Clone, Copy)]
struct Revocation<'a> {
    lease: &'a LeaseRef,
    /// `None` when the lease's role is no longer configured.
    role: Option<&'a Role>,
    db: &'a str,
    admin: &'a str,
}

/// Just-in-time PostgreSQL roles. See the crate docs.
pub struct PostgresPlugin {
    connection: String,
    config: ConnectionConfig,
    roles: BTreeMap<String, Role>,
    /// What "now" is (the context's clock): expiry checks read it.
    clock: lessor_plugin::Clock,
    /// Swapped under a short lock that is never held across an await: an
    /// operation takes the `Arc<Root>` it needs and finishes with it.
    roots: RootVersions<Root>,
}

impl fmt::Debug for PostgresPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresPlugin")
            .field("connection", &self.connection)
            .field("active_root", &self.roots.active_opt())
            .field("root_versions", &self.roots.version_numbers())
            .field("dsn", &self.config.dsn.as_ref().map(|(_, source)| source))
            .field("pool_size", &self.config.pool_size)
            .field("tls", &self.config.tls)
            .field("role_prefix", &self.config.role_prefix)
            .field("owned_objects", &self.config.owned_objects)
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Who the admin session is.
struct Admin {
    name: String,
    superuser: bool,
}

/// Statements sent as one simple-query message, with where each begins so a
/// failure can be attributed to its template.
#[derive(Default)]
struct Script {
    sql: String,
    /// (character offset where the statement starts, label)
    starts: Vec<(usize, String)>,
}

impl PostgresPlugin {
    /// Parses the config and, when it names a DSN, creates that root's
    /// (lazy) pools. Connects to nothing. Without `dsn_file` / `dsn_env` the
    /// plugin has no root credential until the core installs one.
    pub fn new(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Self, PluginError> {
        let config = ConnectionConfig::from_json(&ctx.connection, connection)?;
        let roles = parse_roles(&ctx.connection, &roles, |spec| RoleConfig::from_json(&ctx.connection, spec))?;
        let mut plugin = PostgresPlugin {
            roots: RootVersions::new(&ctx.connection, None),
            connection: ctx.connection,
            config,
            roles,
            clock: ctx.clock,
        };
        if let Some((dsn, source)) = &plugin.config.dsn {
            let root = plugin.root(None, dsn.clone()).map_err(|m| {
                PluginError::Misconfigured(format!(
                    "connection `{}`: the DSN in {source} {m}",
                    plugin.connection
                ))
            })?;
            plugin.roots = RootVersions::new(&plugin.connection, Some(root));
        }
        Ok(plugin)
    }

    /// A root credential with a lazily connecting pool for its DSN's
    /// database and each role's own. The error completes "the DSN ...".
    fn root(&self, version: Option<i64>, dsn: SecretString) -> Result<Root, String> {
        let (options, never_show) = connect_options(&dsn, self.config.tls)?;
        let target = Target::of(&options);
        let databases = std::iter::once(target.database.clone())
            .chain(self.roles.values().filter_map(|r| r.config.database.clone()));
        let mut pools = BTreeMap::new();
        for db in databases {
            if pools.contains_key(&db) {
                continue;
            }
            let pool = PgPoolOptions::new()
                .max_connections(self.config.pool_size)
                .min_connections(0)
                .acquire_timeout(self.config.connect_timeout)
                .idle_timeout(Some(Duration::from_secs(300)))
                .test_before_acquire(false)
                .connect_lazy_with(options.clone().database(&db));
            pools.insert(db, pool);
        }
        Ok(Root {
            version,
            dsn,
            target,
            pools,
            never_show,
        })
    }

    /// The root credential new issuance uses.
    fn active_root(&self) -> Result<Arc<Root>, PluginError> {
        self.roots.active()
    }

    /// The root a lease was issued under while it is installed, else the
    /// active one (any admin with CREATEROLE can renew or drop the role).
    fn root_for(&self, lease: &LeaseRef) -> Result<Arc<Root>, PluginError> {
        self.roots.for_lease(lease)
    }

    fn role(&self, name: &str) -> Result<&Role, PluginError> {
        find_role(&self.connection, &self.roles, name)
    }
}

#[async_trait]
impl Plugin for PostgresPlugin {
    fn kind(&self) -> &str {
        KIND
    }

    /// Revoking drops the login role (after ending its sessions): it stops
    /// working when `revoke` returns.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_renew: true,
            revocation: lessor_plugin::Revocation::Immediate,
        }
    }

    async fn validate(&self) -> Result<Validation, PluginError> {
        self.validate_active().await
    }

    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        self.issue_role(req).await
    }

    async fn renew(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        self.renew_role(req).await
    }

    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        self.revoke_role(lease).await
    }

    /// Roles named like this connection's leases (`<prefix>_<readable>_<32
    /// hex>`, see [`owned_regex`]), read from `pg_roles` with the active
    /// root credential. Superusers are never listed: lessor never makes
    /// one, and must not be the one to drop one.
    async fn list_objects(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        self.list_roles(after, limit).await
    }

    fn root_credentials(&self) -> Option<&dyn RootCredentials> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lessor_plugin_sql::root::percent_decode;
    use lessor_plugin::LeaseId;

    #[test]
    fn listed_names_map_back_to_core_lease_ids() {
        let id = LeaseId::new("lse_0123456789abcdef0123456789abcdef");
        let w = Workload::default();
        let name = role_name("lessor", "app", &w, &lease_hex(&id).unwrap());
        assert_eq!(lease_of(&name), Some(id));
        assert_eq!(owned_regex("lessor"), "^lessor_.+_[0-9a-f]{32}$");
        assert_eq!(owned_regex("jit_1"), "^jit\\_1_.+_[0-9a-f]{32}$");
        assert_eq!(lease_of("lessor_admin"), None);
        assert_eq!(lease_of("lessor_app_0123456789ABCDEF0123456789abcdef"), None);
    }

    #[test]
    fn names_keep_the_hex_and_fit() {
        let hex = "0123456789abcdef0123456789abcdef";
        let mut w = Workload {
            subject: "repo:shop/Orders-API:ref".into(),
            ..Default::default()
        };
        assert_eq!(
            role_name("lessor", "app", &w, hex),
            format!("lessor_app_orders_api_ref_{hex}")
        );
        w.attributes.insert("repository".into(), "x/".repeat(40) + &"Y".repeat(80));
        let n = role_name("a_sixteen_bytes_", &"r".repeat(100), &w, hex);
        assert!(n.len() <= MAX_NAME_BYTES, "{n}");
        assert!(n.ends_with(&format!("_{hex}")) && n.starts_with("a_sixteen_bytes__r"), "{n}");
        let n = role_name("lessor", "日本", &Workload::default(), "abcdef12");
        assert_eq!(n, "lessor_x_abcdef12");
    }

    #[test]
    fn pattern_escapes() {
        assert_eq!(lease_pattern("jit_1", "abc"), "jit\\_1\\_%\\_abc");
    }

    #[test]
    fn expiry_rounds_down_to_micros() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_900_000_000_123_456_789).unwrap();
        let (t2, s) = pg_expiry(t);
        assert_eq!(s, "2030-03-17T17:46:40.123456Z");
        assert!(t2 <= t);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%2F").unwrap(), "p@ss/");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn rotated_dsn_keeps_everything_but_the_password() {
        let pw = secret("N3w-pass_word");
        let cases = [
            ("postgres://lessor_admin:old@db:5432/app", "postgres://lessor_admin:N3w-pass_word@db:5432/app"),
            ("postgresql://a%40b:old@db/app?sslmode=require&application_name=x",
             "postgresql://a%40b:N3w-pass_word@db/app?sslmode=require&application_name=x"),
            ("postgres://u@[::1]:6432/app?password=old&sslmode=disable",
             "postgres://u:N3w-pass_word@[::1]:6432/app?sslmode=disable"),
            ("postgres://u:old@db/app?password=old", "postgres://u:N3w-pass_word@db/app"),
        ];
        for (old, want) in cases {
            let got = dsn_with_password(&secret(old), &pw).unwrap();
            assert_eq!(got.expose_secret(), want);
            let (options, _) = connect_options(&got, None).unwrap();
            assert_eq!(Target::of(&options).user, Target::of(&connect_options(&secret(old), None).unwrap().0).user);
        }
    }

    /// Expiry checks read the context's clock, not the system's.
    #[tokio::test]
    async fn expiry_is_checked_on_the_contexts_clock() {
        let role = RoleSpec { name: "app".into(), scopes: vec![], max_ttl: Duration::from_secs(3600), config: Value::Null };
        lessor_plugin::conformance::expiry_uses_the_context_clock("app", |ctx| PostgresPlugin::new(ctx, json!({}), vec![role]).unwrap()).await.unwrap();
    }

    /// A DSN's password must not surface in `Debug`, errors or their
    /// `Display`, whatever goes wrong.
    #[tokio::test]
    async fn the_root_password_never_shows() {
        const CANARY: &str = "Canary-Zq7xW9";
        let ctx = PluginContext::for_tests("pg", "https://lessor.test");
        let role = RoleSpec {
            name: "app".into(),
            scopes: vec![],
            max_ttl: Duration::from_secs(3600),
            config: Value::Null,
        };
        let p = PostgresPlugin::new(ctx, json!({"connect_timeout": "150ms"}), vec![role]).unwrap();
        let shown = |what: String| {
            assert!(!what.contains(CANARY) && !what.contains("Canary%2DZq7xW9"), "{what}");
        };
        let lease = LeaseRef {
            lease_id: LeaseId::new("lse_0123456789abcdef0123456789abcdef"),
            role: "app".into(),
            handle: None,
            expires_at: OffsetDateTime::now_utc() + Duration::from_secs(60),
            root_version: Some(7),
        };
        let no_root = "connection `pg` has no active root credential: set one with `lessor connection set-secret pg`";
        match p.revoke(&lease).await {
            Err(PluginError::Retryable(m)) => assert_eq!(m, no_root),
            other => panic!("expected the no-root error, got {other:?}"),
        }

        let malformed = [
            format!("mysql://u:{CANARY}@h/db"),
            format!("postgres://u:{CANARY}@h/db?bogus=1"),
            format!("postgres://u:{CANARY}@h/db?sslmode=sometimes"),
            format!("postgres://u:{CANARY}@h:notaport/db"),
            format!("postgres://u@h/db?password={CANARY}&sslmode=sometimes"),
            CANARY.to_owned(),
        ];
        for dsn in &malformed {
            for e in [
                p.validate_root(&secret(dsn)).await.unwrap_err(),
                p.install_root(1, secret(dsn), true).await.unwrap_err(),
            ] {
                assert!(matches!(e, PluginError::InvalidRequest(_)), "{e:?}");
                shown(format!("{e} {e:?}"));
            }
        }

        // Nothing listens on port 1: every path fails, none shows the password.
        let dsn = format!("postgres://lessor_admin:{CANARY}@127.0.0.1:1/app?sslmode=disable");
        match p.validate_root(&secret(&dsn)).await {
            Err(PluginError::Retryable(m)) => {
                assert!(m.starts_with("cannot reach PostgreSQL at 127.0.0.1:1: "), "{m}");
                shown(m);
            }
            other => panic!("expected Retryable, got {other:?}"),
        }
        p.install_root(7, secret(&dsn), true).await.unwrap();
        let debug = format!("{p:?}");
        shown(debug.clone());
        assert!(debug.contains("127.0.0.1:1") && debug.contains("version: Some(7)"), "{debug}");
        let req = IssueRequest {
            lease_id: lease.lease_id.clone(),
            role: "app".into(),
            workload: Workload::default(),
            scopes: vec![],
            expires_at: lease.expires_at,
            params: Map::new(),
        };
        let errors = [
            p.validate().await.unwrap_err(),
            p.issue(req).await.unwrap_err(),
            p.revoke(&lease).await.unwrap_err(),
            p.rotate_root().await.unwrap_err(),
        ];
        for e in errors {
            assert!(e.is_retryable(), "{e:?}");
            shown(format!("{e} {e:?}"));
        }
    }

    #[test]
    fn dsn_parts_are_encoded() {
        assert_eq!(dsn_part("a@b:c/d"), "a%40b%3Ac%2Fd");
        assert_eq!(dsn_part("Ab-_9"), "Ab-_9");
    }
}
