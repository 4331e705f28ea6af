//! The `Plugin` implementation: issue, renew, revoke and validate
//! just-in-time MySQL / MariaDB users, and manage the admin DSN (root
//! credential) in versions.
//!
//! Owns the root credentials and their pools, the issue/revoke statement
//! sequences, root validation and rotation, and the mapping of sqlx errors
//! to [`PluginError`]. Vendor logic that does not need a connection lives
//! apart: naming and passwords (`naming.rs`), quoting and templates
//! (`sql.rs`, `scan.rs`), config (`config.rs`). Never logs or returns an
//! admin DSN's password, a generated password or its hash, or a statement.
//!
//! Why one file (over 800 lines): issue, renew, revoke, listing and the
//! root-credential versions share the pools, the active/retiring root
//! switch and one error mapping; split, each part would reach into the
//! others' state.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginContext, PluginError, Registration,
    RenewRequest, RoleSpec, RootCredentials, RootSecretSpec, Validation, VendorObject,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::instrument;
use zeroize::Zeroizing;

use crate::config::{ConnectionConfig, RoleConfig};
use crate::naming::{lease_hex, lease_suffix, native_hash, new_password, user_name, Flavor, LEASE_HEX_LEN, MIN_LEASE_HEX_LEN};
use crate::sql::{account, like_escape, quote_ident, quote_literal, Backslash, Vars};

/// `expires_at` may exceed now + the role's `max_ttl` by this much.
const TTL_SLACK: Duration = Duration::from_secs(5);

/// DSN query parameters sqlx understands; anything else is refused.
const DSN_PARAMS: &[&str] = &[
    "ssl-mode", "sslmode", "ssl-ca", "sslca", "charset", "collation", "statement-cache-capacity", "socket",
    "timezone", "time-zone",
];

/// MySQL error numbers the plugin acts on.
mod er {
    /// Access denied for user (wrong password).
    pub const ACCESS_DENIED: u16 = 1045;
    /// Unknown database.
    pub const BAD_DB: u16 = 1049;
    /// Operation CREATE USER / ALTER USER / DROP USER failed for an account.
    pub const CANNOT_USER: u16 = 1396;
    /// Unknown thread id (a session that ended by itself).
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// Lock wait timeout, deadlock: retrying helps.
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const LOCK_DEADLOCK: u16 = 1213;
    /// Too many connections; server shutting down; lost connection.
    pub const CON_COUNT: u16 = 1040;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const CONNECTION_KILLED: u16 = 1927;
}

/// The plugin kind in config (`plugin = "mysql"`).
pub const KIND: &str = "mysql";

/// How the core knows this plugin (see [`lessor_plugin::Registration`]).
pub fn registration() -> Registration {
    Registration {
        kind: KIND,
        sdk_version: lessor_plugin::SDK_VERSION,
        build: |ctx, connection, roles| Box::pin(build(ctx, connection, roles)),
        validate_config,
        ca_files: lessor_plugin::no_ca_files,
    }
}

/// Checks the connection and role tables as [`build`] does, without
/// reading `dsn_file` or `dsn_env` (they may exist only where lessor runs)
/// and without connecting.
pub fn validate_config(connection: &Value, roles: &[RoleSpec]) -> Result<(), String> {
    let mut connection = connection.clone();
    if let Some(t) = connection.as_object_mut() {
        if t.contains_key("dsn_file") && t.contains_key("dsn_env") {
            return Err("set either `dsn_file` or `dsn_env`, not both".into());
        }
        t.remove("dsn_file");
        t.remove("dsn_env");
    }
    ConnectionConfig::from_json("", connection).map_err(|e| e.to_string())?;
    for spec in roles {
        RoleConfig::from_json("", spec).map_err(|e| e.to_string())?;
        if spec.max_ttl.is_zero() {
            return Err(format!("role `{}`: `max_ttl` is zero", spec.name));
        }
    }
    Ok(())
}

/// The core's lease ids are `lse_` and 32 lowercase hex digits
/// (`lessor::lease::new_lease_id`), so a MariaDB user name's `_<32 hex>`
/// suffix is the whole id's letters and digits ([`lease_hex`]) and maps
/// back to it.
const CORE_LEASE_ID_PREFIX: &str = "lse_";

/// A regular expression matching exactly the MariaDB names [`user_name`]
/// makes from the core's lease ids under `prefix`: `<prefix>_<readable>_<32
/// hex>`. The admin (`lessor_admin`) and anything else merely starting with
/// the prefix does not match, so the reconciler can never take it.
fn owned_regex(prefix: &str) -> String {
    let mut p = String::from("^");
    for c in prefix.chars() {
        if !c.is_ascii_alphanumeric() {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str(&format!("_.+_[0-9a-f]{{{LEASE_HEX_LEN}}}$"));
    p
}

/// The lease id a listed user name derives from (see [`owned_regex`]).
fn lease_of(name: &str) -> Option<LeaseId> {
    let (_, hex) = name.rsplit_once('_')?;
    let ok = hex.len() == LEASE_HEX_LEN && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| LeaseId::new(format!("{CORE_LEASE_ID_PREFIX}{hex}")))
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

impl Target {
    fn of(o: &MySqlConnectOptions) -> Target {
        Target {
            host: o.get_socket().map(|p| p.display().to_string()).unwrap_or_else(|| o.get_host().to_owned()),
            port: o.get_port(),
            user: o.get_username().to_owned(),
        }
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

struct Role {
    config: RoleConfig,
    max_ttl: Duration,
}

/// One root credential (admin DSN) and its lazily connecting pool.
struct Root {
    version: Option<i64>,
    dsn: SecretString,
    target: Target,
    options: MySqlConnectOptions,
    pool: MySqlPool,
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

#[derive(Default)]
struct Roots {
    active: Option<Arc<Root>>,
    versions: BTreeMap<i64, Arc<Root>>,
}

/// What the admin session is talking to, asked once per operation.
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
    password: &'a SecretString,
    server_roles: &'a [String],
    /// (label, rendered statement)
    grants: &'a [(String, String)],
}

/// Just-in-time MySQL / MariaDB users. See the crate docs.
pub struct MysqlPlugin {
    connection: String,
    config: ConnectionConfig,
    roles: BTreeMap<String, Role>,
    roots: RwLock<Roots>,
}

impl fmt::Debug for MysqlPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roots = self.roots_read();
        f.debug_struct("MysqlPlugin")
            .field("connection", &self.connection)
            .field("active_root", &roots.active)
            .field("root_versions", &roots.versions.keys().collect::<Vec<_>>())
            .field("dsn", &self.config.dsn.as_ref().map(|(_, source)| source))
            .field("user_prefix", &self.config.user_prefix)
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

fn scrub_with(never_show: &[SecretString], mut msg: String) -> String {
    for s in never_show {
        let s = s.expose_secret();
        if !s.is_empty() && msg.contains(s) {
            msg = msg.replace(s, "***");
        }
    }
    msg
}

fn scrub_error(never_show: &[SecretString], err: PluginError) -> PluginError {
    match err {
        PluginError::Retryable(m) => PluginError::Retryable(scrub_with(never_show, m)),
        PluginError::Permanent(m) => PluginError::Permanent(scrub_with(never_show, m)),
        PluginError::InvalidRequest(m) => PluginError::InvalidRequest(scrub_with(never_show, m)),
        PluginError::Misconfigured(m) => PluginError::Misconfigured(scrub_with(never_show, m)),
        other => other,
    }
}

/// Parses an admin DSN without echoing it. The error completes "the DSN ...".
fn connect_options(dsn: &SecretString) -> Result<(MySqlConnectOptions, Vec<SecretString>), String> {
    let text = dsn.expose_secret();
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "mysql" | "mariadb") {
        return Err(format!("has scheme `{}`; expected `mysql://` or `mariadb://`", url.scheme()));
    }
    let mut never_show = Vec::new();
    if let Some(pw) = url.password() {
        never_show.push(SecretString::from(pw.to_owned()));
        if let Some(d) = percent_decode(pw) {
            never_show.push(SecretString::from(d));
        }
    }
    for (key, _) in url.query_pairs() {
        if !DSN_PARAMS.contains(&key.as_ref()) {
            return Err(format!("has an unknown parameter `{key}`"));
        }
    }
    never_show.retain(|s| !s.expose_secret().is_empty());
    // sqlx reads only `mysql://`; `mariadb://` is the same protocol.
    let for_sqlx = Zeroizing::new(match url.scheme() {
        "mariadb" => format!("mysql{}", &text["mariadb".len()..]),
        _ => text.to_owned(),
    });
    let options = MySqlConnectOptions::from_str(&for_sqlx)
        .map_err(|e| format!("is not usable: {}", scrub_with(&never_show, e.to_string())))?;
    // Creation statements carry a password hash: never log statements.
    let options = options
        .log_statements(log::LevelFilter::Off)
        .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
    Ok((options, never_show))
}

/// Characters left as they are in a DSN's user, password and database.
const DSN_KEEP: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn dsn_part(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, DSN_KEEP).to_string()
}

/// `dsn` with its password replaced (everything else kept). The error
/// completes "the DSN ...".
fn dsn_with_password(dsn: &SecretString, password: &SecretString) -> Result<SecretString, String> {
    let url = url::Url::parse(dsn.expose_secret()).map_err(|e| format!("is not a URL: {e}"))?;
    let encoded = Zeroizing::new(dsn_part(password.expose_secret()));
    let mut out = String::with_capacity(dsn.expose_secret().len() + encoded.len() + 8);
    out.push_str(url.scheme());
    out.push_str("://");
    out.push_str(url.username());
    out.push(':');
    out.push_str(&encoded);
    out.push('@');
    out.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(url.path());
    if let Some(q) = url.query() {
        out.push('?');
        out.push_str(q);
    }
    Ok(SecretString::from(out))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn check_expiry(expires_at: OffsetDateTime, max_ttl: Duration) -> Result<(), PluginError> {
    let now = OffsetDateTime::now_utc();
    if expires_at <= now {
        return Err(PluginError::InvalidRequest(format!("expires_at {} is not in the future", rfc3339(expires_at))));
    }
    let ttl = Duration::try_from(expires_at - now).unwrap_or_default();
    if ttl > max_ttl.saturating_add(TTL_SLACK) {
        let h = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        return Err(PluginError::InvalidRequest(format!("ttl {} exceeds role max {}", h(ttl), h(max_ttl))));
    }
    Ok(())
}

fn db_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(d) => d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()),
        _ => None,
    }
}

async fn exec(conn: &mut MySqlConnection, sql: &str) -> Result<(), sqlx::Error> {
    // A bare string: the text protocol, never prepared or cached (each
    // statement carries per-lease values).
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

async fn session(conn: &mut MySqlConnection) -> Result<Session, sqlx::Error> {
    let row = sqlx::query("SELECT CAST(@@version AS CHAR), CAST(@@SESSION.sql_mode AS CHAR)").fetch_one(conn).await?;
    let version: String = row.try_get(0)?;
    let mode: String = row.try_get(1)?;
    let no_escapes = mode.split(',').any(|m| m.trim().eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"));
    Ok(Session {
        flavor: Flavor::of_version(&version),
        backslash: if no_escapes { Backslash::Literal } else { Backslash::Escapes },
    })
}

/// The accounts of a lease: the handle's (when it belongs to the lease)
/// and every user with the connection's prefix and the lease's suffix.
async fn find_accounts(
    conn: &mut MySqlConnection,
    hint: Option<(&str, &str)>,
    pattern: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let (hu, hh) = hint.unwrap_or(("", ""));
    let rows = sqlx::query(
        "SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user \
         WHERE (User = ? AND Host = ?) OR User LIKE ? ESCAPE '!' ORDER BY User, Host",
    )
    .bind(hu)
    .bind(hh)
    .bind(pattern)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Ends every session of `user` but this one. A session that ended by
/// itself meanwhile is fine.
async fn kill_sessions(conn: &mut MySqlConnection, user: &str) -> Result<usize, sqlx::Error> {
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()",
    )
    .bind(user)
    .fetch_all(&mut *conn)
    .await?;
    let mut killed = 0;
    for id in ids {
        match exec(conn, &format!("KILL CONNECTION {id}")).await {
            Ok(()) => killed += 1,
            Err(e) if db_number(&e) == Some(er::NO_SUCH_THREAD) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(killed)
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

async fn whoami(conn: &mut MySqlConnection) -> Result<Admin, sqlx::Error> {
    let row = sqlx::query("SELECT CAST(CURRENT_USER() AS CHAR), CAST(@@version AS CHAR)").fetch_one(&mut *conn).await?;
    let current: String = row.try_get(0)?;
    let version: String = row.try_get(1)?;
    let (user, host) = current.rsplit_once('@').map(|(u, h)| (u.to_owned(), h.to_owned())).unwrap_or((current.clone(), String::new()));
    let grantee = format!("'{}'@'{}'", user.replace('\'', "''"), host.replace('\'', "''"));
    let rows = sqlx::query(
        "SELECT CAST(PRIVILEGE_TYPE AS CHAR), CAST(IS_GRANTABLE AS CHAR) FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ?",
    )
    .bind(&grantee)
    .fetch_all(&mut *conn)
    .await?;
    let mut privs = Vec::new();
    let mut grant_option = false;
    for r in &rows {
        let p: String = r.try_get(0)?;
        let g: String = r.try_get(1)?;
        grant_option |= g.eq_ignore_ascii_case("YES");
        privs.push(p.to_ascii_uppercase());
    }
    let has = |p: &str| privs.iter().any(|x| x == p);
    Ok(Admin {
        create_user: has("CREATE USER"),
        kill: has("PROCESS") && (has("SUPER") || has("CONNECTION ADMIN") || has("CONNECTION_ADMIN")),
        grant_option,
        current,
        user,
        host,
        version,
    })
}

impl MysqlPlugin {
    pub fn new(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Self, PluginError> {
        let config = ConnectionConfig::from_json(&ctx.connection, connection)?;
        let mut parsed = BTreeMap::new();
        for spec in &roles {
            let role_config = RoleConfig::from_json(&ctx.connection, spec)?;
            if spec.max_ttl.is_zero() {
                return Err(PluginError::Misconfigured(format!("role `{}/{}`: `max_ttl` is zero", ctx.connection, spec.name)));
            }
            parsed.insert(spec.name.clone(), Role { config: role_config, max_ttl: spec.max_ttl });
        }
        let mut plugin = MysqlPlugin { connection: ctx.connection, config, roles: parsed, roots: RwLock::new(Roots::default()) };
        if let Some((dsn, source)) = &plugin.config.dsn {
            let root = plugin.root(None, dsn.clone()).map_err(|m| {
                PluginError::Misconfigured(format!("connection `{}`: the DSN in {source} {m}", plugin.connection))
            })?;
            plugin.roots = RwLock::new(Roots { active: Some(Arc::new(root)), versions: BTreeMap::new() });
        }
        Ok(plugin)
    }

    fn root(&self, version: Option<i64>, dsn: SecretString) -> Result<Root, String> {
        let (options, never_show) = connect_options(&dsn)?;
        let target = Target::of(&options);
        let pool = MySqlPoolOptions::new()
            .max_connections(self.config.pool_size)
            .min_connections(0)
            .acquire_timeout(self.config.connect_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        Ok(Root { version, dsn, target, options, pool, never_show })
    }

    fn roots_read(&self) -> std::sync::RwLockReadGuard<'_, Roots> {
        self.roots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn roots_write(&self) -> std::sync::RwLockWriteGuard<'_, Roots> {
        self.roots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn no_root(&self) -> PluginError {
        PluginError::Retryable(format!(
            "connection `{c}` has no active root credential: set one with `lessor connection set-secret {c}`",
            c = self.connection
        ))
    }

    fn active_root(&self) -> Result<Arc<Root>, PluginError> {
        self.roots_read().active.clone().ok_or_else(|| self.no_root())
    }

    fn root_for(&self, lease: &LeaseRef) -> Result<Arc<Root>, PluginError> {
        let roots = self.roots_read();
        lease
            .root_version
            .and_then(|v| roots.versions.get(&v))
            .or(roots.active.as_ref())
            .cloned()
            .ok_or_else(|| self.no_root())
    }

    /// A connection for renewing or revoking `lease`: from the root it was
    /// issued under while that one is installed; from the active root when
    /// that one no longer logs in (its password was rotated away).
    async fn lease_conn(&self, lease: &LeaseRef) -> Result<(Arc<Root>, sqlx::pool::PoolConnection<sqlx::MySql>), PluginError> {
        let root = self.root_for(lease)?;
        if let Some(e) = self.refused(&root).await {
            return Err(e);
        }
        match root.pool.acquire().await {
            Ok(c) => Ok((root, c)),
            Err(e) if db_number(&e) == Some(er::ACCESS_DENIED) => {
                let active = self.active_root()?;
                if Arc::ptr_eq(&active, &root) {
                    return Err(self.fail(&root, e, "connecting"));
                }
                tracing::info!(root_version = ?root.version, "the lease's root credential no longer logs in; using the active one");
                let c = self.acquire(&active).await?;
                Ok((active, c))
            }
            Err(e) => Err(self.fail(&root, e, "connecting")),
        }
    }

    fn role(&self, name: &str) -> Result<&Role, PluginError> {
        self.roles.get(name).ok_or_else(|| {
            PluginError::InvalidRequest(format!(
                "unknown role `{name}` (connection `{}` has: {})",
                self.connection,
                self.roles.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Maps a sqlx error: unreachable -> `Retryable`; the server's refusal
    /// -> `Permanent` with its message (never the statement); scrubbed.
    fn fail(&self, root: &Root, e: sqlx::Error, what: &str) -> PluginError {
        let at = root.target.addr();
        let unreachable = |reason: String| PluginError::Retryable(format!("cannot reach {what_server} at {at}: {reason}", what_server = "MySQL/MariaDB"));
        let number = db_number(&e);
        let err = match e {
            sqlx::Error::Database(d) => {
                let msg = d.message().to_owned();
                match number {
                    Some(er::ACCESS_DENIED) => {
                        PluginError::Permanent(format!("password rejected for user `{}` at {at}", root.target.user))
                    }
                    Some(er::BAD_DB) => PluginError::Permanent(format!("cannot use database at {at}: {msg}")),
                    Some(er::CON_COUNT | er::SERVER_SHUTDOWN | er::CONNECTION_KILLED) => unreachable(msg),
                    Some(er::LOCK_WAIT_TIMEOUT | er::LOCK_DEADLOCK) => PluginError::Retryable(format!("{what}: {msg}")),
                    _ => PluginError::Permanent(format!("{what}: {msg}")),
                }
            }
            sqlx::Error::Io(e) => unreachable(e.to_string()),
            sqlx::Error::Tls(e) => unreachable(format!("TLS: {e}")),
            sqlx::Error::Protocol(m) => unreachable(format!("protocol error: {m}")),
            sqlx::Error::PoolTimedOut => unreachable(format!(
                "no connection within {}",
                humantime::format_duration(self.config.connect_timeout)
            )),
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => unreachable("the connection pool is closed".into()),
            sqlx::Error::Configuration(e) => PluginError::Misconfigured(format!("connection `{}`: {e}", self.connection)),
            other => PluginError::Permanent(format!("{what}: {other}")),
        };
        scrub_error(&root.never_show, err)
    }

    /// A pooled admin connection. With nothing idle, the server's port is
    /// tried first so "connection refused" is a retryable error at once
    /// (the pool would retry until `connect_timeout`).
    async fn acquire(&self, root: &Root) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, PluginError> {
        if let Some(e) = self.refused(root).await {
            return Err(e);
        }
        root.pool.acquire().await.map_err(|e| self.fail(root, e, "connecting"))
    }

    /// With nothing idle in the pool, tries the server's port first, so
    /// "connection refused" is a retryable error at once (the pool would
    /// retry until `connect_timeout`).
    async fn refused(&self, root: &Root) -> Option<PluginError> {
        if root.pool.num_idle() > 0 || root.options.get_socket().is_some() {
            return None;
        }
        let t = &root.target;
        let limit = self.config.connect_timeout;
        let reason = match tokio::time::timeout(limit, tokio::net::TcpStream::connect((t.host.as_str(), t.port))).await {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no TCP connection within {}", humantime::format_duration(limit)),
        };
        Some(PluginError::Retryable(format!("cannot reach MySQL/MariaDB at {}: {reason}", t.addr())))
    }

    fn render_err(&self, role: &str, e: crate::sql::RenderError) -> PluginError {
        PluginError::InvalidRequest(format!("role `{}/{role}`: {e}", self.connection))
    }

    /// Creates the account, grants its roles and runs the grant templates.
    /// MySQL and MariaDB commit every account statement at once (no
    /// transactional DDL), so a failure part way drops the account again.
    async fn create(&self, root: &Root, conn: &mut MySqlConnection, sess: Session, job: &Creation<'_>) -> Result<(), PluginError> {
        let Creation { acct, password, server_roles, grants } = *job;
        let hash = native_hash(password);
        let create = Zeroizing::new(match sess.flavor {
            // The authentication string, not the password, reaches the server.
            Flavor::MariaDb => format!(
                "CREATE USER {acct} IDENTIFIED BY PASSWORD {}",
                quote_literal(hash.expose_secret(), sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?
            ),
            // MySQL 8 has no `mysql_native_password` by default (8.4) and its
            // caching_sha2 hash is salted per account: the password goes in
            // the statement, which MySQL rewrites in its logs.
            Flavor::MySql => format!(
                "CREATE USER {acct} IDENTIFIED BY {}",
                quote_literal(password.expose_secret(), sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?
            ),
        });
        let never_show = [password.clone(), hash];
        let scrub = |e: PluginError| scrub_error(&never_show, e);
        if let Err(e) = exec(conn, &create).await {
            let exists = db_number(&e) == Some(er::CANNOT_USER);
            let err = scrub(self.fail(root, e, "creating the account"));
            return Err(if exists {
                PluginError::Permanent(format!("account {acct} exists already (a lease id is never reused); revoke the lease to drop it"))
            } else {
                err
            });
        }
        let result = self.grant_all(root, conn, sess, acct, server_roles, grants).await;
        if let Err(e) = result {
            if let Err(d) = exec(conn, &format!("DROP USER IF EXISTS {acct}")).await {
                tracing::warn!(error = %self.fail(root, d, "dropping"), "a half-created account was not dropped; revocation of the pending lease will");
            }
            return Err(scrub(e));
        }
        Ok(())
    }

    async fn grant_all(
        &self,
        root: &Root,
        conn: &mut MySqlConnection,
        sess: Session,
        acct: &str,
        server_roles: &[String],
        grants: &[(String, String)],
    ) -> Result<(), PluginError> {
        if !server_roles.is_empty() {
            let list = server_roles
                .iter()
                .map(|r| quote_ident(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PluginError::Misconfigured(e.to_string()))?
                .join(", ");
            // One role per GRANT: MariaDB's syntax takes one.
            for r in server_roles {
                let q = quote_ident(r).map_err(|e| PluginError::Misconfigured(e.to_string()))?;
                if let Err(e) = exec(conn, &format!("GRANT {q} TO {acct}")).await {
                    let err = self.fail(root, e, &format!("granting role {r}"));
                    return Err(match err {
                        PluginError::Permanent(m) => PluginError::Permanent(format!(
                            "{m} (the admin account needs each role WITH ADMIN OPTION, or ROLE_ADMIN on MySQL)"
                        )),
                        other => other,
                    });
                }
            }
            let default = match sess.flavor {
                Flavor::MySql => format!("SET DEFAULT ROLE ALL TO {acct}"),
                Flavor::MariaDb => format!("SET DEFAULT ROLE {list} FOR {acct}"),
            };
            if let Err(e) = exec(conn, &default).await {
                return Err(self.fail(root, e, "setting the default role"));
            }
        }
        for (label, sql) in grants {
            if let Err(e) = exec(conn, sql).await {
                return Err(self.fail(root, e, &format!("{label} failed")));
            }
        }
        Ok(())
    }

    /// Locks, disconnects and drops every account of a lease; returns how
    /// many were dropped and sessions ended. Gone accounts count as done.
    async fn drop_accounts(&self, root: &Root, conn: &mut MySqlConnection, lease: &LeaseRef) -> Result<(usize, usize), PluginError> {
        let Some(hex) = lease_hex(&lease.lease_id) else {
            // Such an id never named an account.
            return Ok((0, 0));
        };
        let prefix = &self.config.user_prefix;
        let suffix = lease_suffix(prefix, &hex);
        let pattern = format!("{}!_%{}", like_escape(prefix), like_escape(&suffix));
        let hint = lease.handle.as_ref().and_then(|h| Some((h.get("user")?.as_str()?, h.get("host")?.as_str()?)));
        let hint = hint.filter(|(u, _)| u.starts_with(&format!("{prefix}_")) && u.ends_with(&suffix));
        let sess = session(conn).await.map_err(|e| self.fail(root, e, "reading the session's sql_mode"))?;
        let accounts = find_accounts(conn, hint, &pattern).await.map_err(|e| self.fail(root, e, "finding the lease's accounts"))?;
        let mut killed = 0;
        for (user, host) in &accounts {
            let acct = account(user, host, sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?;
            // Locked first: no new session can start while the others end.
            match exec(conn, &format!("ALTER USER {acct} ACCOUNT LOCK")).await {
                Ok(()) => {}
                Err(e) if db_number(&e) == Some(er::CANNOT_USER) => continue,
                Err(e) => return Err(self.fail(root, e, &format!("locking account {acct}"))),
            }
            killed += kill_sessions(conn, user).await.map_err(|e| self.fail(root, e, &format!("ending the sessions of {acct}")))?;
            exec(conn, &format!("DROP USER IF EXISTS {acct}"))
                .await
                .map_err(|e| self.fail(root, e, &format!("dropping account {acct}")))?;
            // A session that logged in just before the lock.
            killed += kill_sessions(conn, user).await.map_err(|e| self.fail(root, e, &format!("ending the sessions of {acct}")))?;
        }
        Ok((accounts.len(), killed))
    }

    async fn admin_validation(&self, conn: &mut MySqlConnection, root: &Root) -> Result<(Admin, Validation), PluginError> {
        let admin = whoami(conn).await.map_err(|e| self.fail(root, e, "asking who the admin is"))?;
        let mut details = BTreeMap::new();
        details.insert("server".to_owned(), root.target.addr());
        details.insert("version".to_owned(), admin.version.clone());
        details.insert("flavor".to_owned(), Flavor::of_version(&admin.version).label().to_owned());
        let mut warnings = Vec::new();
        if !admin.create_user {
            warnings.push(format!("`{}` lacks CREATE USER (needed to create lease users)", admin.current));
        }
        if !admin.grant_option {
            warnings.push(format!("`{}` lacks GRANT OPTION (needed to grant roles to lease users)", admin.current));
        }
        if !admin.kill {
            warnings.push(format!(
                "`{}` lacks PROCESS and CONNECTION ADMIN (or SUPER): revocation cannot end a lease user's open sessions",
                admin.current
            ));
        }
        let v = Validation { identity: admin.current.clone(), details, warnings };
        Ok((admin, v))
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

    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn validate(&self) -> Result<Validation, PluginError> {
        let root = self.active_root()?;
        let mut conn = self.acquire(&root).await?;
        Ok(self.admin_validation(&mut conn, &root).await?.1)
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %req.role, lease_id = %req.lease_id))]
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let role = self.role(&req.role)?;
        check_expiry(req.expires_at, role.max_ttl)?;
        if let Some(k) = req.params.keys().next() {
            return Err(PluginError::InvalidRequest(format!("the mysql plugin takes no request parameters (got `{k}`)")));
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in &req.scopes {
            if !role.config.roles.contains_key(s) && !role.config.grants.contains_key(s) {
                return Err(PluginError::InvalidRequest(format!(
                    "scope `{s}` is not one of role `{}/{}`'s scopes",
                    self.connection, req.role
                )));
            }
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let hex = lease_hex(&req.lease_id).ok_or_else(|| {
            PluginError::InvalidRequest(format!(
                "lease id `{}` has fewer than {MIN_LEASE_HEX_LEN} letters and digits to name a user after",
                req.lease_id
            ))
        })?;
        let root = self.active_root()?;
        let mut conn = self.acquire(&root).await?;
        let sess = session(&mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
        let server_roles = role.config.server_roles(&scopes);
        if sess.flavor == Flavor::MariaDb && server_roles.len() > 1 {
            return Err(PluginError::Permanent(format!(
                "role `{}/{}`: MariaDB gives an account one default role, but scopes {} map to {}: map them to one server role that has the others granted",
                self.connection,
                req.role,
                scopes.join(", "),
                server_roles.join(", ")
            )));
        }
        let user = user_name(sess.flavor, &self.config.user_prefix, &req.role, &req.workload, &hex);
        let host = role.config.host.as_str();
        // Every claim is checked before anything is created.
        let vars = Vars { user: &user, host, workload: Some(&req.workload), backslash: sess.backslash };
        let mut grants = Vec::new();
        for scope in &scopes {
            for (i, t) in role.config.grants.get(scope).into_iter().flatten().enumerate() {
                let sql = t.render(&vars).map_err(|e| self.render_err(&req.role, e))?;
                grants.push((format!("grant (scope `{scope}`) statement {}", i + 1), sql));
            }
        }
        let acct = account(&user, host, sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?;
        let password = new_password()?;
        let job = Creation { acct: &acct, password: &password, server_roles: &server_roles, grants: &grants };
        self.create(&root, &mut conn, sess, &job).await?;
        tracing::debug!(mysql_user = %user, scopes = scopes.len(), root_version = ?root.version, "account created");

        let mut public = Map::new();
        public.insert("username".into(), json!(user));
        public.insert("host".into(), json!(root.target.host));
        public.insert("port".into(), json!(root.target.port));
        public.insert("account_host".into(), json!(host));
        public.insert("roles".into(), json!(server_roles));
        if let Some(db) = &role.config.database {
            public.insert("database".into(), json!(db));
        }
        public.insert("expires_at".into(), json!(rfc3339(req.expires_at)));
        let dsn_host = if root.target.host.contains(':') { format!("[{}]", root.target.host) } else { root.target.host.clone() };
        let dsn = format!(
            "mysql://{}:{}@{dsn_host}:{}/{}",
            dsn_part(&user),
            dsn_part(password.expose_secret()),
            root.target.port,
            role.config.database.as_deref().map(dsn_part).unwrap_or_default()
        );
        let mut secret = BTreeMap::new();
        secret.insert("password".to_owned(), password);
        secret.insert("dsn".to_owned(), SecretString::from(dsn));
        Ok(Issued {
            handle: json!({ "user": user, "host": host }),
            public,
            secret,
            // Neither server can end a password at an instant: the account
            // lives until lessor revokes it at this expiry (see the crate docs).
            expires_at: req.expires_at,
            root_version: root.version,
        })
    }

    /// The account needs no change (its end is lessor's revocation); renew
    /// checks that it still exists.
    #[instrument(skip_all, fields(connection = %self.connection, role = %req.lease.role, lease_id = %req.lease.lease_id))]
    async fn renew(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        let role = self.role(&req.lease.role)?;
        check_expiry(req.expires_at, role.max_ttl)?;
        let (root, mut conn) = self.lease_conn(&req.lease).await?;
        let hex = lease_hex(&req.lease.lease_id).unwrap_or_default();
        let prefix = &self.config.user_prefix;
        let pattern = format!("{}!_%{}", like_escape(prefix), like_escape(&lease_suffix(prefix, &hex)));
        let found = find_accounts(&mut conn, None, &pattern).await.map_err(|e| self.fail(&root, e, "finding the lease's account"))?;
        if found.is_empty() || hex.is_empty() {
            return Err(PluginError::Permanent(format!(
                "the account of lease `{}` no longer exists at {}; it was revoked",
                req.lease.lease_id,
                root.target.addr()
            )));
        }
        Ok(req.expires_at)
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %lease.role, lease_id = %lease.lease_id))]
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let (root, mut conn) = self.lease_conn(lease).await?;
        let (dropped, killed) = self.drop_accounts(&root, &mut conn, lease).await?;
        if dropped > 0 {
            tracing::debug!(accounts = dropped, sessions_ended = killed, "lease accounts dropped");
        }
        Ok(())
    }

    /// MariaDB users named like this connection's leases
    /// (`<prefix>_<readable>_<32 hex>`, see [`owned_regex`]), read from
    /// `mysql.user` with the active root credential, one name per user
    /// (whatever its hosts), in byte order. Never the admin's own user, never
    /// a server role. MySQL 8's 32-character names hold only part of the
    /// lease id, so there the listing is `Unsupported`.
    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn list_objects(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        let root = self.active_root()?;
        let mut conn = self.acquire(&root).await?;
        let sess = session(&mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
        if sess.flavor == Flavor::MySql {
            return Err(PluginError::Unsupported(
                "listing accounts on MySQL 8: its user names (at most 32 characters) hold only part of the lease id".into(),
            ));
        }
        let prefix = &self.config.user_prefix;
        let rows = sqlx::query(
            "SELECT CAST(User AS BINARY) AS u FROM mysql.user \
             WHERE User LIKE ? ESCAPE '!' AND CAST(User AS BINARY) REGEXP ? AND CAST(User AS BINARY) > CAST(? AS BINARY) \
             AND is_role <> 'Y' AND User <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
             GROUP BY u ORDER BY u LIMIT ?",
        )
        .bind(format!("{}!_%", like_escape(prefix)))
        .bind(owned_regex(prefix))
        .bind(after.unwrap_or(""))
        .bind(u64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail(&root, e, "listing users"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let raw: Vec<u8> = r.try_get(0).map_err(|e| PluginError::Permanent(format!("listing users: {e}")))?;
            let name = String::from_utf8(raw).map_err(|_| PluginError::Permanent("listing users: a user name is not UTF-8".into()))?;
            out.push(VendorObject { lease_id: lease_of(&name), name });
        }
        Ok(out)
    }

    fn root_credentials(&self) -> Option<&dyn RootCredentials> {
        Some(self)
    }
}

/// The admin DSN is managed by the core (see the crate docs).
#[async_trait]
impl RootCredentials for MysqlPlugin {
    fn spec(&self) -> RootSecretSpec {
        RootSecretSpec { describes: "the admin DSN, mysql://user:password@host:port/".into(), can_rotate: true }
    }

    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn validate_root(&self, candidate: &SecretString) -> Result<Validation, PluginError> {
        let (options, never_show) = connect_options(candidate)
            .map_err(|m| PluginError::InvalidRequest(format!("connection `{}`: the candidate DSN {m}", self.connection)))?;
        let target = Target::of(&options);
        let probe = Root {
            version: None,
            dsn: SecretString::from(String::new()),
            target: target.clone(),
            pool: MySqlPoolOptions::new().max_connections(1).connect_lazy_with(options.clone()),
            options: options.clone(),
            never_show,
        };
        let conn = tokio::time::timeout(self.config.connect_timeout, MySqlConnection::connect_with(&options)).await;
        let mut conn = match conn {
            Err(_) => {
                return Err(PluginError::Retryable(format!(
                    "cannot reach MySQL/MariaDB at {}: no connection within {}",
                    target.addr(),
                    humantime::format_duration(self.config.connect_timeout)
                )))
            }
            Ok(Err(e)) => return Err(self.fail(&probe, e, "checking the candidate")),
            Ok(Ok(c)) => c,
        };
        let result = self.admin_validation(&mut conn, &probe).await;
        let _ = conn.close().await;
        let (admin, mut v) = result?;
        if !admin.create_user {
            return Err(PluginError::Permanent(format!("`{}` lacks CREATE USER (needed to create lease users)", admin.current)));
        }
        if !admin.grant_option {
            return Err(PluginError::Permanent(format!("`{}` lacks GRANT OPTION (needed to grant roles to lease users)", admin.current)));
        }
        v.details.insert("account_host".to_owned(), admin.host.clone());
        let _ = admin.user;
        Ok(v)
    }

    async fn install_root(&self, version: i64, secret: SecretString, active: bool) -> Result<(), PluginError> {
        let existing = self.roots_read().versions.get(&version).cloned();
        let root = match existing {
            Some(r) if r.dsn.expose_secret() == secret.expose_secret() => r,
            _ => Arc::new(self.root(Some(version), secret).map_err(|m| {
                PluginError::InvalidRequest(format!(
                    "root credential version {version} of connection `{}`: the DSN {m}",
                    self.connection
                ))
            })?),
        };
        let mut roots = self.roots_write();
        roots.versions.insert(version, root.clone());
        if active {
            roots.active = Some(root);
        } else if roots.active.as_ref().is_some_and(|a| a.version == Some(version)) {
            roots.active = None;
        }
        drop(roots);
        tracing::info!("root credential installed");
        Ok(())
    }

    async fn remove_root(&self, version: i64) -> Result<(), PluginError> {
        let mut roots = self.roots_write();
        if roots.active.as_ref().is_some_and(|a| a.version == Some(version)) {
            return Err(PluginError::InvalidRequest(format!(
                "root credential version {version} of connection `{}` is the active one; activate another before removing it",
                self.connection
            )));
        }
        let removed = roots.versions.remove(&version);
        drop(roots);
        if removed.is_some() {
            tracing::info!("root credential removed");
        }
        Ok(())
    }

    /// Sets a new 256-bit random password on the account the active DSN
    /// logs in as (`ALTER USER ... IDENTIFIED BY`; on MariaDB `IDENTIFIED BY
    /// PASSWORD` with the hash, so the plaintext never reaches the server)
    /// and returns the DSN with it. The old password stops working at once
    /// for new connections, so the core activates the new version straight
    /// away.
    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn rotate_root(&self) -> Result<SecretString, PluginError> {
        let root = self.active_root()?;
        let password = new_password()?;
        let dsn = dsn_with_password(&root.dsn, &password).map_err(|m| {
            PluginError::Permanent(format!("connection `{}`: the active DSN {m}", self.connection))
        })?;
        let mut conn = self.acquire(&root).await?;
        let sess = session(&mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
        let admin = whoami(&mut conn).await.map_err(|e| self.fail(&root, e, "asking who the admin is"))?;
        if admin.user != root.target.user {
            return Err(PluginError::Permanent(format!(
                "the active DSN names user `{}` but logs in as `{}`; cannot rotate its password",
                root.target.user, admin.current
            )));
        }
        let acct = account(&admin.user, &admin.host, sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?;
        let hash = native_hash(&password);
        let lit = |s: &SecretString| quote_literal(s.expose_secret(), sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()));
        let stmt = Zeroizing::new(match sess.flavor {
            Flavor::MariaDb => format!("ALTER USER {acct} IDENTIFIED BY PASSWORD {}", lit(&hash)?),
            Flavor::MySql => format!("ALTER USER {acct} IDENTIFIED BY {}", lit(&password)?),
        });
        if let Err(e) = exec(&mut conn, &stmt).await {
            let err = self.fail(&root, e, &format!("changing the password of {acct}"));
            return Err(scrub_error(&[password, hash], err));
        }
        // The pooled connections stay logged in; new ones need the new DSN.
        tracing::info!(mysql_user = %admin.current, "root password rotated; the previous one no longer works");
        Ok(dsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
