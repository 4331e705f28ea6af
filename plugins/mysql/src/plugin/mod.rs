//! The `Plugin` implementation: issue, renew, revoke and validate
//! just-in-time MySQL / MariaDB users, and manage the admin DSN (root
//! credential) in versions. Must not import: the core (`lessor`).
//!
//! This module holds the plugin's state (root credentials and their pools,
//! the parsed roles) and the [`Plugin`] impl, whose work is done by its
//! children, one responsibility each: `connect` (admin DSNs, pools,
//! reaching the server, the session's flavour and backslash mode, mapping
//! sqlx errors), `issue` (creating accounts, granting roles, renewing),
//! `revoke` (finding a lease's accounts, locking, killing sessions,
//! dropping; listing for the reconciler) and `root` (validating and
//! rotating root credentials). Vendor logic that does not need a connection
//! lives apart: naming and passwords (`naming.rs`), quoting and templates
//! (`sql.rs`, `scan.rs`), config (`config.rs`). Never logs or returns an
//! admin DSN's password, a generated password or its hash, or a statement.

mod connect;
mod issue;
mod pool;
mod revoke;
mod root;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseRef, Plugin, PluginContext, PluginError, Registration,
    RenewRequest, RoleSpec, RootCredentials, RootSecretSpec, Validation, VendorObject,
};
use lessor_plugin_sql::root::{dsn_part, find_role, parse_roles, rfc3339, scrub_error, scrub_with, RootVersions, VersionedRoot};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Row};
use time::OffsetDateTime;
use tracing::instrument;
use zeroize::Zeroizing;

use crate::config::{ConnectionConfig, RoleConfig};
use crate::naming::{lease_hex, lease_suffix, mysql_lease_of, mysql_owned_regex, mysql_user, native_hash, new_password, user_name, Flavor};
use crate::sql::{account, like_escape, quote_ident, quote_literal, Backslash, Vars};

use connect::*;
use pool::{ConnPool, Pooled};
use revoke::*;

/// The plugin kind in config (`plugin = "mysql"`).
pub const KIND: &str = "mysql";

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

/// Builds the MySQL / MariaDB plugin for one connection. Connects to
/// nothing: the pool connects on first use, so lessor starts while the
/// server is down ([`Plugin::validate`] reports that).
pub async fn build(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Arc<dyn Plugin>, PluginError> {
    Ok(Arc::new(MysqlPlugin::new(ctx, connection, roles)?))
}

/// Where the admin connection goes, for messages. No password.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    user: String,
}

/// A configured role: its parsed table and `max_ttl`.
type Role = lessor_plugin_sql::root::Role<RoleConfig>;

/// Pooled admin connections idle this long are closed (at the pool's next
/// use; see [`pool`]).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// One root credential (admin DSN) and its lazily connecting pool.
struct Root {
    version: Option<i64>,
    dsn: SecretString,
    target: Target,
    options: MySqlConnectOptions,
    pool: ConnPool,
    /// What the pool's sessions talk to and their backslash mode, pinned
    /// by the first connection ([`connect::pin_session`]).
    session: Arc<OnceLock<Session>>,
    /// The DSN's password, raw and percent-decoded: scrubbed from every
    /// message as a last line.
    never_show: Vec<SecretString>,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("version", &self.version)
            .field("server", &self.target.addr())
            .field("user", &self.target.user)
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

/// What the admin session is talking to: the server's flavour and how the
/// session reads backslashes in literals.
#[derive(Debug, Clone, Copy)]
struct Session {
    flavor: Flavor,
    backslash: Backslash,
}

/// What one issue creates at the server.
#[derive(Clone, Copy)]
struct Creation<'a> {
    /// `'user'@'host'`, quoted.
    acct: &'a str,
    /// The user name alone (a MariaDB account may log in to set its own
    /// default role, see `issue.rs`).
    user: &'a str,
    password: &'a SecretString,
    /// What the server receives instead (`issue::auth_string`).
    hash: &'a SecretString,
    server_roles: &'a [String],
    /// (label, rendered statement)
    grants: &'a [(String, String)],
}

/// The admin's identity and what it may do.
struct Admin {
    /// `CURRENT_USER()`, `user@host`.
    current: String,
    user: String,
    host: String,
    version: String,
    create_user: bool,
    grant_option: bool,
    /// PROCESS (see others' sessions) and CONNECTION ADMIN or SUPER (end them).
    kill: bool,
}

/// Just-in-time MySQL / MariaDB users. See the crate docs.
pub struct MysqlPlugin {
    connection: String,
    config: ConnectionConfig,
    roles: BTreeMap<String, Role>,
    roots: RootVersions<Root>,
    /// What "now" is (the context's clock): expiry checks read it.
    clock: lessor_plugin::Clock,
}

impl fmt::Debug for MysqlPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlPlugin")
            .field("connection", &self.connection)
            .field("active_root", &self.roots.active_opt())
            .field("root_versions", &self.roots.version_numbers())
            .field("dsn", &self.config.dsn.as_ref().map(|(_, source)| source))
            .field("user_prefix", &self.config.user_prefix)
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MysqlPlugin {
    pub fn new(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Self, PluginError> {
        let config = ConnectionConfig::from_json(&ctx.connection, connection)?;
        let roles = parse_roles(&ctx.connection, &roles, |spec| RoleConfig::from_json(&ctx.connection, spec))?;
        let mut plugin =
            MysqlPlugin { roots: RootVersions::new(&ctx.connection, None), connection: ctx.connection, config, roles, clock: ctx.clock };
        if let Some((dsn, source)) = &plugin.config.dsn {
            let root = plugin.root(None, dsn.clone()).map_err(|m| {
                PluginError::Misconfigured(format!("connection `{}`: the DSN in {source} {m}", plugin.connection))
            })?;
            plugin.roots = RootVersions::new(&plugin.connection, Some(root));
        }
        Ok(plugin)
    }

    fn root(&self, version: Option<i64>, dsn: SecretString) -> Result<Root, String> {
        let (options, never_show) = connect_options(&dsn)?;
        let target = Target::of(&options);
        let session = Arc::new(OnceLock::new());
        let pool = ConnPool::new(options.clone(), session.clone(), self.config.pool_size, self.config.connect_timeout, IDLE_TIMEOUT);
        Ok(Root { version, dsn, target, options, pool, session, never_show })
    }

    fn active_root(&self) -> Result<Arc<Root>, PluginError> {
        self.roots.active()
    }

    fn root_for(&self, lease: &LeaseRef) -> Result<Arc<Root>, PluginError> {
        self.roots.for_lease(lease)
    }

    fn role(&self, name: &str) -> Result<&Role, PluginError> {
        find_role(&self.connection, &self.roles, name)
    }
}

#[async_trait]
impl Plugin for MysqlPlugin {
    fn kind(&self) -> &str {
        KIND
    }

    /// Revoking locks the account, ends its sessions and drops it: it stops
    /// working when `revoke` returns.
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: true, revocation: lessor_plugin::Revocation::Immediate }
    }

    async fn validate(&self) -> Result<Validation, PluginError> {
        self.validate_active().await
    }

    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        self.issue_account(req).await
    }

    /// The account needs no change (its end is lessor's revocation); renew
    /// checks that it still exists.
    async fn renew(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        self.renew_accounts(req).await
    }

    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        self.revoke_accounts(lease).await
    }

    /// Users named like this connection's leases, read from `mysql.user`
    /// with the active root credential, one name per user (whatever its
    /// hosts), in byte order: on MariaDB `<prefix>_<readable>_<32 hex>` (see
    /// [`lessor_plugin_sql::naming::owned_regex`]), on MySQL 8 `<prefix>_<22 base-62 digits>` (the whole
    /// lease id in 32 characters, see [`crate::naming::mysql_lease_of`]).
    /// Never the admin's own user, never a server role.
    async fn list_objects(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        self.list_accounts(after, limit).await
    }

    fn root_credentials(&self) -> Option<&dyn RootCredentials> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lessor_plugin_sql::naming::{lease_of, owned_regex};
    use lessor_plugin::{LeaseId, Workload};

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn listed_names_map_back_to_core_lease_ids() {
        let id = LeaseId::new("lse_0123456789abcdef0123456789abcdef");
        let w = Workload::default();
        let name = user_name(Flavor::MariaDb, "lessor", "app", &w, &lease_hex(&id).unwrap());
        assert_eq!(lease_of(&name), Some(id));
        assert_eq!(owned_regex("lessor"), "^lessor_.+_[0-9a-f]{32}$");
        assert_eq!(owned_regex("jit_1"), "^jit\\_1_.+_[0-9a-f]{32}$");
        assert_eq!(lease_of("lessor_admin"), None);
        assert_eq!(lease_of("lessor_app_0123456789ABCDEF0123456789abcdef"), None);
    }

    #[test]
    fn rotated_dsn_keeps_everything_but_the_password() {
        let pw = secret("N3w-pass_word");
        for (old, want) in [
            ("mysql://admin:old@db:3306/app", "mysql://admin:N3w-pass_word@db:3306/app"),
            ("mariadb://a%40b:old@db/?ssl-mode=required", "mariadb://a%40b:N3w-pass_word@db/?ssl-mode=required"),
        ] {
            assert_eq!(dsn_with_password(&secret(old), &pw).unwrap().expose_secret(), want);
        }
    }

    /// Expiry checks read the context's clock, not the system's.
    #[tokio::test]
    async fn expiry_is_checked_on_the_contexts_clock() {
        let role = RoleSpec { name: "app".into(), scopes: vec![], max_ttl: Duration::from_secs(3600), config: Value::Null };
        lessor_plugin::conformance::expiry_uses_the_context_clock("app", |ctx| MysqlPlugin::new(ctx, json!({}), vec![role]).unwrap()).await.unwrap();
    }

    /// A DSN's password never surfaces in `Debug`, errors or `Display`.
    #[tokio::test]
    async fn the_root_password_never_shows() {
        const CANARY: &str = "Canary-Zq7xW9";
        let ctx = PluginContext::for_tests("my", "https://lessor.test");
        let role = RoleSpec { name: "app".into(), scopes: vec![], max_ttl: Duration::from_secs(3600), config: Value::Null };
        let p = MysqlPlugin::new(ctx, json!({"connect_timeout": "150ms"}), vec![role]).unwrap();
        let shown = |what: String| assert!(!what.contains(CANARY), "{what}");
        let lease = LeaseRef {
            lease_id: LeaseId::new("lse_0123456789abcdef0123456789abcdef"),
            role: "app".into(),
            handle: None,
            expires_at: OffsetDateTime::now_utc() + Duration::from_secs(60),
            root_version: Some(7),
        };
        match p.revoke(&lease).await {
            Err(PluginError::Retryable(m)) => assert!(m.contains("has no active root credential"), "{m}"),
            other => panic!("expected the no-root error, got {other:?}"),
        }
        for dsn in [
            format!("postgres://u:{CANARY}@h/db"),
            format!("mysql://u:{CANARY}@h/db?bogus=1"),
            format!("mysql://u:{CANARY}@h:notaport/db"),
            CANARY.to_owned(),
        ] {
            for e in [p.validate_root(&secret(&dsn)).await.unwrap_err(), p.install_root(1, secret(&dsn), true).await.unwrap_err()] {
                assert!(matches!(e, PluginError::InvalidRequest(_)), "{dsn}: {e:?}");
                shown(format!("{e} {e:?}"));
            }
        }
        let dsn = format!("mysql://admin:{CANARY}@127.0.0.1:1/");
        match p.validate_root(&secret(&dsn)).await {
            Err(PluginError::Retryable(m)) => {
                assert!(m.starts_with("cannot reach MySQL/MariaDB at 127.0.0.1:1"), "{m}");
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
        for e in [p.validate().await.unwrap_err(), p.issue(req).await.unwrap_err(), p.revoke(&lease).await.unwrap_err(), p.rotate_root().await.unwrap_err()] {
            assert!(e.is_retryable(), "{e:?}");
            shown(format!("{e} {e:?}"));
        }
    }
}
