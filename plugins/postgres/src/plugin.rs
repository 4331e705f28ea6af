//! The `Plugin` implementation: issue, renew, revoke and validate
//! just-in-time PostgreSQL roles.
//!
//! Owns the root credentials (admin DSNs) and their connection pools (per
//! root version, one per database, connecting lazily), role naming, the
//! issue/renew/revoke transactions, root validation and rotation, and the
//! mapping of sqlx errors to [`PluginError`]. Never logs or returns an admin
//! DSN's password, a generated password or a statement's text.
//!
//! Why one file: issue, renew, revoke, reconnect and root-credential versions
//! share the per-version pools and the statement helpers; SQL rendering
//! (`sql.rs`), the scanner (`scan.rs`) and config (`config.rs`) are apart.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginContext, PluginError,
    Registration, RenewRequest, RoleSpec, RootCredentials, RootSecretSpec, Validation, VendorObject,
    Workload,
};
use rand::TryRngCore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::instrument;
use zeroize::Zeroizing;

use crate::config::{ConnectionConfig, OwnedObjects, RoleConfig, Tls, DEFAULT_CREATION};
use crate::sql::{like_escape, quote_ident, RenderError, Template, Vars};

/// `expires_at` may exceed now + the role's `max_ttl` by this much (the core
/// computed it a moment before calling).
const TTL_SLACK: Duration = Duration::from_secs(5);

/// Role names are PostgreSQL identifiers: at most 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// The lease-derived suffix of a role name: at most this many of the lease
/// id's last letters and digits...
pub const LEASE_HEX_LEN: usize = 32;
/// ...and at least this many (shorter ids cannot name a role safely).
pub const MIN_LEASE_HEX_LEN: usize = 8;

/// Random bytes in a generated password (256 bits).
const PASSWORD_BYTES: usize = 32;

/// Server-side limits on the admin sessions, so a stuck lock cannot hang a
/// revocation forever (the core retries a timed-out one).
const SESSION_OPTIONS: &[(&str, &str)] = &[("lock_timeout", "15s"), ("statement_timeout", "60s")];

/// Query parameters sqlx understands in a DSN; anything else is refused
/// (sqlx would log an unknown one with its value).
const DSN_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The plugin kind in config (`plugin = "postgres"`).
pub const KIND: &str = "postgres";

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

impl Target {
    fn of(options: &PgConnectOptions) -> Target {
        Target {
            host: options
                .get_socket()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| options.get_host().to_owned()),
            port: options.get_port(),
            user: options.get_username().to_owned(),
            database: options
                .get_database()
                .unwrap_or(options.get_username())
                .to_owned(),
            socket: options.get_socket().is_some(),
        }
    }

    /// `host:port` (IPv6 in brackets), or the socket directory.
    fn addr(&self) -> String {
        if self.socket {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn at(&self, db: &str) -> String {
        format!("{}/{db}", self.addr())
    }
}

struct Role {
    config: RoleConfig,
    max_ttl: Duration,
}

impl Role {
    /// The database the role's statements run in: its own, else the one of
    /// the root credential's DSN.
    fn database<'a>(&'a self, root: &'a Root) -> &'a str {
        self.config.database.as_deref().unwrap_or(&root.target.database)
    }
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

/// The installed root credentials.
#[derive(Default)]
struct Roots {
    /// Used for new issuance (and for leases whose version is not installed).
    active: Option<Arc<Root>>,
    /// Managed versions, active and retiring.
    versions: BTreeMap<i64, Arc<Root>>,
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
    /// Swapped under a short lock that is never held across an await: an
    /// operation takes the `Arc<Root>` it needs and finishes with it.
    roots: RwLock<Roots>,
}

impl fmt::Debug for PostgresPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roots = self.roots_read();
        f.debug_struct("PostgresPlugin")
            .field("connection", &self.connection)
            .field("active_root", &roots.active)
            .field("root_versions", &roots.versions.keys().collect::<Vec<_>>())
            .field("dsn", &self.config.dsn.as_ref().map(|(_, source)| source))
            .field("pool_size", &self.config.pool_size)
            .field("tls", &self.config.tls)
            .field("role_prefix", &self.config.role_prefix)
            .field("owned_objects", &self.config.owned_objects)
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Parses an admin DSN without echoing it, returning the connect options
/// and the strings that must be scrubbed from messages. The error completes
/// "the DSN ..." and holds no part of the DSN but its scheme or a parameter
/// name.
fn connect_options(
    dsn: &SecretString,
    tls: Option<Tls>,
) -> Result<(PgConnectOptions, Vec<SecretString>), String> {
    let dsn = dsn.expose_secret();
    let url = url::Url::parse(dsn).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "has scheme `{}`; expected `postgres://` or `postgresql://`",
            url.scheme()
        ));
    }
    let mut never_show = Vec::new();
    if let Some(pw) = url.password() {
        never_show.push(SecretString::from(pw.to_owned()));
        if let Ok(decoded) = percent_decode(pw) {
            never_show.push(SecretString::from(decoded));
        }
    }
    for (key, value) in url.query_pairs() {
        if key.starts_with("options[") {
            continue;
        }
        if !DSN_PARAMS.contains(&key.as_ref()) {
            return Err(format!("has an unknown parameter `{key}`"));
        }
        if key == "password" {
            never_show.push(SecretString::from(value.into_owned()));
        }
    }
    never_show.retain(|s| !s.expose_secret().is_empty());
    let scrub = |m: String| scrub_with(&never_show, m);
    let mut options = PgConnectOptions::from_str(dsn)
        .map_err(|e| format!("is not usable: {}", scrub(e.to_string())))?;
    if let Some(tls) = tls {
        options = options.ssl_mode(match tls {
            Tls::Disable => PgSslMode::Disable,
            Tls::Prefer => PgSslMode::Prefer,
            Tls::Require => PgSslMode::Require,
            Tls::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if options.get_application_name().is_none() {
        options = options.application_name("lessor");
    }
    // Creation statements carry the password verifier: never log statements.
    let options = options
        .options(SESSION_OPTIONS.iter().copied())
        .log_statements(log::LevelFilter::Off)
        .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
    Ok((options, never_show))
}

fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
}

/// Scrubs the message of an error that may quote the server or a DSN.
fn scrub_error(never_show: &[SecretString], err: PluginError) -> PluginError {
    match err {
        PluginError::Retryable(m) => PluginError::Retryable(scrub_with(never_show, m)),
        PluginError::Permanent(m) => PluginError::Permanent(scrub_with(never_show, m)),
        PluginError::InvalidRequest(m) => PluginError::InvalidRequest(scrub_with(never_show, m)),
        PluginError::Misconfigured(m) => PluginError::Misconfigured(scrub_with(never_show, m)),
        other => other,
    }
}

fn scrub_with(never_show: &[SecretString], mut msg: String) -> String {
    for s in never_show {
        let s = s.expose_secret();
        if msg.contains(s) {
            msg = msg.replace(s, "***");
        }
    }
    msg
}

/// The lease id's letters and digits, lowercased, last 32 of them.
pub fn lease_hex(id: &LeaseId) -> Option<String> {
    let all: Vec<char> = id
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let tail: String = all[all.len().saturating_sub(LEASE_HEX_LEN)..].iter().collect();
    (tail.len() >= MIN_LEASE_HEX_LEN).then_some(tail)
}

fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

fn after_last_slash(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// `<prefix>_<readable>_<hex>`, at most 63 bytes, the `_<hex>` suffix always
/// whole. `<readable>` comes from the role and the workload (the part after
/// the last `/` of attribute `repository`, else of the subject).
pub fn role_name(prefix: &str, role: &str, workload: &Workload, hex: &str) -> String {
    let who = workload
        .attributes
        .get("repository")
        .map(|r| after_last_slash(r))
        .unwrap_or_else(|| after_last_slash(&workload.subject));
    let mut readable = sanitize(&format!("{role}_{who}"));
    let budget = MAX_NAME_BYTES.saturating_sub(prefix.len() + hex.len() + 2);
    readable.truncate(budget);
    let readable = readable.trim_end_matches('_');
    let readable = if readable.is_empty() { "x" } else { readable };
    format!("{prefix}_{readable}_{hex}")
}

/// The core's lease ids are `lse_` and 32 lowercase hex digits
/// (`lessor::lease::new_lease_id`), so a role name's `_<32 hex>` suffix is
/// the whole id's letters and digits ([`lease_hex`]) and maps back to it.
const CORE_LEASE_ID_PREFIX: &str = "lse_";

/// A regular expression matching exactly the names [`role_name`] makes
/// from the core's lease ids under `prefix`: `<prefix>_<readable>_<32 hex>`.
/// The admin role (`lessor_admin`) and anything else merely starting with
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

/// The lease id a listed role name derives from (see [`owned_regex`]).
fn lease_of(name: &str) -> Option<LeaseId> {
    let (_, hex) = name.rsplit_once('_')?;
    let ok = hex.len() == LEASE_HEX_LEN && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| LeaseId::new(format!("{CORE_LEASE_ID_PREFIX}{hex}")))
}

/// `LIKE` pattern matching every role name this connection could have made
/// for a lease.
fn lease_pattern(prefix: &str, hex: &str) -> String {
    format!("{}\\_%\\_{}", like_escape(prefix), like_escape(hex))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The expiry as PostgreSQL stores it: UTC, microseconds (rounded down, so
/// the password never outlives the lease).
fn pg_expiry(t: OffsetDateTime) -> (OffsetDateTime, String) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let micros = t.nanosecond() / 1000 * 1000;
    let t = t.replace_nanosecond(micros).unwrap_or(t);
    (t, rfc3339(t))
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn check_expiry(expires_at: OffsetDateTime, max_ttl: Duration) -> Result<(), PluginError> {
    let now = OffsetDateTime::now_utc();
    if expires_at <= now {
        return Err(PluginError::InvalidRequest(format!(
            "expires_at {} is not in the future",
            rfc3339(expires_at)
        )));
    }
    let ttl = Duration::try_from(expires_at - now).unwrap_or_default();
    if ttl > max_ttl + TTL_SLACK {
        return Err(PluginError::InvalidRequest(format!(
            "ttl {} exceeds role max {}",
            humanize(ttl),
            humanize(max_ttl)
        )));
    }
    Ok(())
}

fn new_password() -> Result<SecretString, PluginError> {
    let mut bytes = Zeroizing::new([0u8; PASSWORD_BYTES]);
    rand::rngs::OsRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(|e| PluginError::Retryable(format!("the OS random number generator failed: {e}")))?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

/// Characters left as they are in a DSN's user, password and database.
const DSN_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn dsn_part(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, DSN_KEEP).to_string()
}

/// `dsn` with its password replaced by `password` (in the userinfo; a
/// `password` query parameter is left out). Scheme, user, host, port,
/// database and the other parameters are kept as they were. The error
/// completes "the DSN ...".
fn dsn_with_password(dsn: &SecretString, password: &SecretString) -> Result<SecretString, String> {
    let url = url::Url::parse(dsn.expose_secret()).map_err(|e| format!("is not a URL: {e}"))?;
    let encoded = Zeroizing::new(dsn_part(password.expose_secret()));
    // Sized up front so the buffer holding the password is never reallocated
    // (and left behind unzeroized).
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
    let out = SecretString::from(out);
    let has_password_param = url.query_pairs().any(|(k, _)| k == "password");
    let query = match url.query() {
        None => return Ok(out),
        Some(q) if !has_password_param => q.to_owned(),
        Some(_) => url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(url.query_pairs().filter(|(k, _)| k != "password"))
            .finish(),
    };
    if query.is_empty() {
        return Ok(out);
    }
    let mut with_query = String::with_capacity(out.expose_secret().len() + query.len() + 1);
    with_query.push_str(out.expose_secret());
    with_query.push('?');
    with_query.push_str(&query);
    Ok(SecretString::from(with_query))
}

/// Maps an error met while checking a candidate root credential. Precise,
/// with `host:port` and the user, never the DSN.
fn candidate_error(e: sqlx::Error, target: &Target, db: &str) -> PluginError {
    let at = target.addr();
    let unreachable =
        |reason: String| PluginError::Retryable(format!("cannot reach PostgreSQL at {at}: {reason}"));
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            let msg = d.message().to_owned();
            match code.as_str() {
                "28P01" => PluginError::Permanent(format!(
                    "password rejected for user `{}` at {at}",
                    target.user
                )),
                "28000" => PluginError::Permanent(format!(
                    "user `{}` may not log in at {at}: {msg}",
                    target.user
                )),
                "3D000" => PluginError::Permanent(format!("database `{db}` does not exist at {at}")),
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                    unreachable(msg)
                }
                _ => PluginError::Permanent(format!("checking the candidate at {at}: {msg}")),
            }
        }
        sqlx::Error::Io(e) => unreachable(e.to_string()),
        sqlx::Error::Tls(e) => unreachable(format!("TLS: {e}")),
        sqlx::Error::Protocol(m) => unreachable(format!("protocol error: {m}")),
        sqlx::Error::Configuration(e) => {
            PluginError::InvalidRequest(format!("the candidate DSN is not usable: {e}"))
        }
        other => PluginError::Permanent(format!("checking the candidate at {at}: {other}")),
    }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    // One statement per template (the extended protocol refuses more), never
    // cached: each carries per-lease values.
    sqlx::query(sql).persistent(false).execute(conn).await.map(|_| ())
}

/// Who the admin session is.
struct Admin {
    name: String,
    superuser: bool,
}

async fn whoami(conn: &mut PgConnection) -> Result<Admin, sqlx::Error> {
    let row = sqlx::query(
        "SELECT current_user::text, COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)",
    )
    .fetch_one(conn)
    .await?;
    Ok(Admin {
        name: row.try_get(0)?,
        superuser: row.try_get(1)?,
    })
}

/// Roles of a lease: the handle's name (if it belongs to the lease) and any
/// name with the lease's suffix. Returns `(name, oid)`.
async fn find_roles(
    conn: &mut PgConnection,
    hint: Option<&str>,
    pattern: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT rolname::text, oid::int8 FROM pg_roles WHERE rolname = $1 OR rolname LIKE $2 ORDER BY rolname",
    )
    .bind(hint)
    .bind(pattern)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

async fn role_exists(conn: &mut PgConnection, oid: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("SELECT 1 FROM pg_roles WHERE oid::int8 = $1")
        .bind(oid)
        .fetch_optional(conn)
        .await?
        .is_some())
}

async fn terminate_sessions(conn: &mut PgConnection, oid: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int8 FROM pg_stat_activity \
         WHERE usesysid::int8 = $1 AND pid <> pg_backend_pid()",
    )
    .bind(oid)
    .fetch_one(conn)
    .await
}

/// Whether the role's `VALID UNTIL` is set and no later than `expiry`;
/// `None` if the role does not exist.
async fn valid_until_ok(
    conn: &mut PgConnection,
    name: &str,
    expiry: &str,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(rolvaliduntil <= $2::text::timestamptz, false) FROM pg_roles WHERE rolname = $1",
    )
    .bind(name)
    .bind(expiry)
    .fetch_optional(conn)
    .await
}

/// Objects a role owns: how many, and one of them described.
async fn owned_objects(conn: &mut PgConnection, oid: i64) -> Result<(i64, Option<String>), sqlx::Error> {
    let row = sqlx::query(
        "WITH o AS (SELECT classid, objid, objsubid, dbid FROM pg_shdepend \
                    WHERE refclassid = 'pg_authid'::regclass AND refobjid::int8 = $1 AND deptype = 'o'), \
              here AS (SELECT oid FROM pg_database WHERE datname = current_database()) \
         SELECT (SELECT count(*) FROM o)::int8, \
                COALESCE( \
                  (SELECT min(i.type || ' ' || i.identity) FROM o, \
                     LATERAL pg_identify_object(o.classid, o.objid, o.objsubid) i \
                   WHERE o.dbid = 0 OR o.dbid = (SELECT oid FROM here)), \
                  (SELECT min('an object in database ' || quote_ident(d.datname)) FROM o \
                   JOIN pg_database d ON d.oid = o.dbid))",
    )
    .bind(oid)
    .fetch_one(conn)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

impl PostgresPlugin {
    /// Parses the config and, when it names a DSN, creates that root's
    /// (lazy) pools. Connects to nothing. Without `dsn_file` / `dsn_env` the
    /// plugin has no root credential until the core installs one.
    pub fn new(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Self, PluginError> {
        let config = ConnectionConfig::from_json(&ctx.connection, connection)?;
        let mut parsed = BTreeMap::new();
        for spec in &roles {
            let role_config = RoleConfig::from_json(&ctx.connection, spec)?;
            if spec.max_ttl.is_zero() {
                return Err(PluginError::Misconfigured(format!(
                    "role `{}/{}`: `max_ttl` is zero",
                    ctx.connection, spec.name
                )));
            }
            parsed.insert(
                spec.name.clone(),
                Role {
                    config: role_config,
                    max_ttl: spec.max_ttl,
                },
            );
        }
        let mut plugin = PostgresPlugin {
            connection: ctx.connection,
            config,
            roles: parsed,
            roots: RwLock::new(Roots::default()),
        };
        if let Some((dsn, source)) = &plugin.config.dsn {
            let root = plugin.root(None, dsn.clone()).map_err(|m| {
                PluginError::Misconfigured(format!(
                    "connection `{}`: the DSN in {source} {m}",
                    plugin.connection
                ))
            })?;
            plugin.roots = RwLock::new(Roots {
                active: Some(Arc::new(root)),
                versions: BTreeMap::new(),
            });
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

    fn roots_read(&self) -> std::sync::RwLockReadGuard<'_, Roots> {
        // Nothing panics while holding the lock; a poisoned one is still whole.
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

    /// The root credential new issuance uses.
    fn active_root(&self) -> Result<Arc<Root>, PluginError> {
        self.roots_read().active.clone().ok_or_else(|| self.no_root())
    }

    /// The root a lease was issued under while it is installed, else the
    /// active one (any admin with CREATEROLE can renew or drop the role).
    fn root_for(&self, lease: &LeaseRef) -> Result<Arc<Root>, PluginError> {
        let roots = self.roots_read();
        lease
            .root_version
            .and_then(|v| roots.versions.get(&v))
            .or(roots.active.as_ref())
            .cloned()
            .ok_or_else(|| self.no_root())
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

    /// Why no connection could be had, found by a plain TCP connect (the
    /// pool hides "connection refused" behind its timeout).
    async fn unreachable_reason(&self, target: &Target) -> String {
        let waited = humantime::format_duration(self.config.connect_timeout);
        if target.socket {
            return format!("no connection within {waited}");
        }
        let probe = tokio::time::timeout(
            self.config.connect_timeout.min(Duration::from_secs(2)),
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await;
        match probe {
            Ok(Err(e)) => e.to_string(),
            Err(_) => "TCP connect timed out".to_owned(),
            Ok(Ok(_)) => format!(
                "no connection within {waited} (the server accepts TCP connections but did not \
                 complete a login, or all {} pooled connections are busy)",
                self.config.pool_size
            ),
        }
    }

    /// Maps a sqlx error: unreachable -> `Retryable`, the server's refusal
    /// -> `Permanent` with its message (never the statement).
    async fn fail(&self, root: &Root, e: sqlx::Error, db: &str, what: &str) -> PluginError {
        let at = root.target.at(db);
        let unreachable = |reason: String| {
            PluginError::Retryable(format!("cannot reach PostgreSQL at {at}: {reason}"))
        };
        let err = match e {
            sqlx::Error::Database(d) => {
                let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
                let mut msg = d.message().to_owned();
                if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    if let Some(detail) = pg.detail() {
                        msg = format!("{msg} ({detail})");
                    }
                }
                match code.as_str() {
                    "28P01" | "28000" => PluginError::Permanent(format!(
                        "authentication failed for user `{}` at {at}: {msg}",
                        root.target.user
                    )),
                    "3D000" => PluginError::Permanent(format!("cannot use database at {at}: {msg}")),
                    c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                        unreachable(msg)
                    }
                    // Transient or blocked by something an operator can fix.
                    // XX000 "tuple concurrently updated": a concurrent GRANT
                    // or REVOKE on the same object outside lessor's lock.
                    "40001" | "40P01" | "55P03" | "55006" | "57014" | "2BP01" | "XX000"
                        if code != "XX000" || msg.contains("concurrently") =>
                    {
                        PluginError::Retryable(format!("{what}: {msg}"))
                    }
                    _ => PluginError::Permanent(format!("{what}: {msg}")),
                }
            }
            sqlx::Error::Io(e) => unreachable(e.to_string()),
            sqlx::Error::Tls(e) => unreachable(format!("TLS: {e}")),
            sqlx::Error::Protocol(m) => unreachable(format!("protocol error: {m}")),
            sqlx::Error::PoolTimedOut => unreachable(self.unreachable_reason(&root.target).await),
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                unreachable("the connection pool is closed".into())
            }
            sqlx::Error::Configuration(e) => PluginError::Misconfigured(format!(
                "connection `{}`: {e}",
                self.connection
            )),
            other => PluginError::Permanent(format!("{what}: {other}")),
        };
        scrub_error(&root.never_show, err)
    }

    /// Every role's database gets a pool when a root is installed: this
    /// does not happen.
    fn no_pool(&self, db: &str) -> PluginError {
        PluginError::Permanent(format!("connection `{}`: no pool for database `{db}`", self.connection))
    }

    /// Fails fast when the server refuses connections. sqlx's pool retries
    /// a refused connect (with backoff) until `connect_timeout`, so with no
    /// idle connection to hand out (acquiring means connecting), the
    /// server's port is tried first: "connection refused" (or nothing
    /// answering within `connect_timeout`) is a retryable error at once.
    /// PostgreSQL does not log a connection that sends nothing.
    async fn refused(&self, root: &Root, pool: &PgPool, db: &str) -> Option<PluginError> {
        if pool.num_idle() > 0 {
            return None;
        }
        let t = &root.target;
        let limit = self.config.connect_timeout;
        let probe = async {
            if t.socket {
                #[cfg(unix)]
                {
                    let path = std::path::Path::new(&t.host).join(format!(".s.PGSQL.{}", t.port));
                    return tokio::net::UnixStream::connect(path).await.map(drop);
                }
                #[cfg(not(unix))]
                return Ok(());
            }
            tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await.map(drop)
        };
        let reason = match tokio::time::timeout(limit, probe).await {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no TCP connection within {}", humantime::format_duration(limit)),
        };
        let at = t.at(db);
        Some(scrub_error(
            &root.never_show,
            PluginError::Retryable(format!("cannot reach PostgreSQL at {at}: {reason}")),
        ))
    }

    async fn acquire(
        &self,
        root: &Root,
        db: &str,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, PluginError> {
        let Some(pool) = root.pools.get(db) else {
            return Err(self.no_pool(db));
        };
        if let Some(e) = self.refused(root, pool, db).await {
            return Err(e);
        }
        match pool.acquire().await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.fail(root, e, db, "connecting").await),
        }
    }

    /// A connection for renewing or revoking `lease`, from the root it was
    /// issued under while that one is installed. If that root no longer
    /// logs in (its password was rotated away), the active root is used.
    async fn lease_conn(
        &self,
        lease: &LeaseRef,
        role: Option<&Role>,
    ) -> Result<(Arc<Root>, sqlx::pool::PoolConnection<sqlx::Postgres>), PluginError> {
        let root = self.root_for(lease)?;
        let db = role.map(|r| r.database(&root)).unwrap_or(&root.target.database);
        let Some(pool) = root.pools.get(db) else {
            return Err(self.no_pool(db));
        };
        if let Some(e) = self.refused(&root, pool, db).await {
            return Err(e);
        }
        let e = match pool.acquire().await {
            Ok(c) => return Ok((root, c)),
            Err(e) => e,
        };
        let rejected = matches!(&e, sqlx::Error::Database(d)
            if matches!(d.code().as_deref(), Some("28P01" | "28000")));
        if rejected {
            if let Ok(active) = self.active_root() {
                if !Arc::ptr_eq(&active, &root) {
                    tracing::warn!(
                        root_version = ?root.version,
                        active_version = ?active.version,
                        "the lease's root credential no longer logs in; using the active one"
                    );
                    let db = role.map(|r| r.database(&active)).unwrap_or(&active.target.database);
                    let conn = self.acquire(&active, db).await?;
                    return Ok((active, conn));
                }
            }
        }
        Err(self.fail(&root, e, db, "connecting").await)
    }

    /// The handle's role name, if it is a name of this lease.
    fn hint<'a>(lease: &'a LeaseRef, hex: &str) -> Option<&'a str> {
        let name = lease.handle.as_ref()?.get("role")?.as_str()?;
        name.strip_suffix(hex)
            .is_some_and(|rest| rest.ends_with('_'))
            .then_some(name)
    }

    fn render_err(&self, role: &str, e: RenderError) -> PluginError {
        match e {
            RenderError::MissingClaim(c) => PluginError::InvalidRequest(format!(
                "the workload has no claim `{c}`, which role `{}/{role}` needs",
                self.connection
            )),
            RenderError::Quote(q) => PluginError::InvalidRequest(format!(
                "role `{}/{role}`: {q}",
                self.connection
            )),
            RenderError::Unavailable(p) => PluginError::Misconfigured(format!(
                "role `{}/{role}`: {p} is not available in this statement",
                self.connection
            )),
            RenderError::NotOneToken(p) => PluginError::Misconfigured(format!(
                "role `{}/{role}`: {p} did not render as one quoted token at top level; refusing to run the statement",
                self.connection
            )),
        }
    }

    /// Runs `templates` in order; errors name the statement, not its text.
    // The root joined the arguments; grouping them would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn run_templates(
        &self,
        root: &Root,
        conn: &mut PgConnection,
        role_name: &str,
        db: &str,
        label: &str,
        templates: &[Template],
        vars: &Vars<'_>,
    ) -> Result<(), PluginError> {
        for (i, t) in templates.iter().enumerate() {
            let sql = t.render(vars).map_err(|e| self.render_err(role_name, e))?;
            if let Err(e) = exec(conn, &sql).await {
                let what = format!("role `{}/{role_name}`: {label} statement {} failed", self.connection, i + 1);
                let mut err = self.fail(root, e, db, &what).await;
                if let (Some(v), PluginError::Permanent(m) | PluginError::Retryable(m)) =
                    (vars.password, &mut err)
                {
                    *m = m.replace(v, "***");
                }
                return Err(err);
            }
        }
        Ok(())
    }

    async fn issue_in_tx(&self, root: &Root, conn: &mut PgConnection, job: &Creation<'_>) -> Result<(), PluginError> {
        let Creation {
            req,
            role,
            name,
            verifier,
            expiry,
            scopes,
        } = *job;
        let db = role.database(root);
        let fail = |e| self.fail(root, e, db, "issuing");
        // Round trips are most of an issue's time: ask who the admin is only
        // when a template needs `{{admin}}`.
        let needs_admin = role.config.issue_templates(scopes).any(|t| t.source().contains("{{admin}}"));
        let admin = if needs_admin {
            match whoami(conn).await {
                Ok(a) => a.name,
                Err(e) => return Err(fail(e).await),
            }
        } else {
            String::new()
        };
        let vars = Vars {
            name,
            password: Some(verifier),
            expiry,
            database: db,
            admin: &admin,
            workload: Some(&req.workload),
        };
        // One script, one round trip: PostgreSQL runs the statements of one
        // simple-query message as a single transaction, so either the role
        // exists with all its grants or nothing does.
        let mut script = Script::default();
        for (i, t) in role.config.creation.iter().enumerate() {
            let sql = t.render(&vars).map_err(|e| self.render_err(&req.role, e))?;
            script.push(&sql, format!("creation statement {}", i + 1))?;
        }
        for scope in scopes {
            for (i, t) in role.config.grants[scope].iter().enumerate() {
                let sql = t.render(&vars).map_err(|e| self.render_err(&req.role, e))?;
                script.push(&sql, format!("grant (scope `{scope}`) statement {}", i + 1))?;
            }
        }
        // The default creation sets VALID UNTIL {{expiry}} itself; custom
        // templates are checked inside the same transaction.
        let default_creation = role.config.creation.iter().map(|t| t.source()).eq(DEFAULT_CREATION.iter().copied());
        if !default_creation {
            script.push(&valid_until_check(name, expiry)?, "the VALID UNTIL check".into())?;
        }
        // A plain `&str` with no arguments goes out as one simple query.
        match sqlx::Executor::execute(&mut *conn, script.sql.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let sqlx::Error::Database(d) = &e {
                    if let Some(problem) = d.message().strip_prefix(VALID_UNTIL_MARK) {
                        return Err(PluginError::Misconfigured(format!(
                            "role `{}/{}`: {problem} (creation statements must `CREATE ROLE {{{{name}}}} ... VALID UNTIL {{{{expiry}}}}`)",
                            self.connection, req.role
                        )));
                    }
                }
                let label = match script.label_of(&e) {
                    Some(l) => l,
                    None => script.diagnose(conn).await.unwrap_or_else(|| "creation and grants".into()),
                };
                let what = format!("role `{}/{}`: {label} failed", self.connection, req.role);
                let mut err = self.fail(root, e, db, &what).await;
                if let PluginError::Permanent(m) | PluginError::Retryable(m) = &mut err {
                    *m = m.replace(verifier, "***");
                }
                Err(err)
            }
        }
    }

    /// Drops one role of a lease whose logins are already blocked. Retried
    /// on an ACL write conflict, like issuing (see [`is_acl_conflict`]).
    async fn drop_role(
        &self,
        root: &Root,
        conn: &mut PgConnection,
        ctx: &Revocation<'_>,
        name: &str,
        oid: i64,
    ) -> Result<(), PluginError> {
        let Revocation {
            lease,
            role,
            db,
            admin,
        } = *ctx;
        let fail = |e| self.fail(root, e, db, "revoking");
        let mut tx = match conn.begin().await {
            Ok(tx) => tx,
            Err(e) => return Err(fail(e).await),
        };
        let (_, expiry) = pg_expiry(lease.expires_at);
        let vars = Vars {
            name,
            password: None,
            expiry: &expiry,
            database: db,
            admin,
            workload: None,
        };
        let role_label = role.map(|_| lease.role.as_str()).unwrap_or("?");
        let custom = role.and_then(|r| r.config.revocation.as_deref());
        let q = quote_ident(name).map_err(|e| PluginError::Permanent(e.to_string()))?;
        let qa = quote_ident(admin).map_err(|e| PluginError::Permanent(e.to_string()))?;
        let result: Result<(), PluginError> = async {
            match custom {
                Some(templates) => {
                    self.run_templates(root, &mut tx, role_label, db, "revocation", templates, &vars)
                        .await?
                }
                None => {
                    match self.config.owned_objects {
                        OwnedObjects::Fail => {
                            let (n, example) = match owned_objects(&mut tx, oid).await {
                                Ok(x) => x,
                                Err(e) => return Err(fail(e).await),
                            };
                            if n > 0 {
                                let example = example
                                    .map(|e| format!(" (e.g. {e})"))
                                    .unwrap_or_default();
                                return Err(PluginError::Retryable(format!(
                                    "role `{name}` still owns {n} object(s){example}; reassign or drop them, \
                                     or set owned_objects = \"reassign\""
                                )));
                            }
                        }
                        OwnedObjects::Reassign => {
                            if let Err(e) = exec(&mut tx, &format!("REASSIGN OWNED BY {q} TO {qa}")).await {
                                return Err(self.fail(root, e, db, &format!("reassigning what `{name}` owns")).await);
                            }
                        }
                    }
                    for (sql, what) in [
                        (format!("DROP OWNED BY {q}"), format!("dropping what `{name}` owns")),
                        (format!("DROP ROLE {q}"), format!("dropping role `{name}`")),
                    ] {
                        if let Err(e) = exec(&mut tx, &sql).await {
                            return Err(self.fail(root, e, db, &what).await);
                        }
                    }
                }
            }
            match tx.commit().await {
                Ok(()) => Ok(()),
                Err(e) => Err(fail(e).await),
            }
        }
        .await;
        if let Err(err) = result {
            // A concurrent revocation may have dropped it first: done.
            if let Ok(false) = role_exists(conn, oid).await {
                return Ok(());
            }
            return Err(err);
        }
        // A session that slipped in before NOLOGIN committed: end it too.
        let _ = terminate_sessions(conn, oid).await;
        match role_exists(conn, oid).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(PluginError::Permanent(format!(
                "role `{}/{role_label}`: the revocation statements left role `{name}` in place \
                 (it can no longer log in); end them with `DROP ROLE {{{{name}}}}`",
                self.connection
            ))),
            Err(e) => Err(self.fail(root, e, db, "checking the role is gone").await),
        }
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

    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn validate(&self) -> Result<Validation, PluginError> {
        let root = self.active_root()?;
        let db = root.target.database.as_str();
        let mut conn = self.acquire(&root, db).await?;
        let row = match sqlx::query(
            "SELECT current_user::text, current_database()::text, current_setting('server_version'), \
                    r.rolcreaterole, r.rolsuper \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&mut *conn)
        .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.fail(&root, e, db, "validating").await),
        };
        let get = |i| -> Result<String, PluginError> {
            row.try_get::<String, _>(i)
                .map_err(|e| PluginError::Permanent(format!("validating: {e}")))
        };
        let user = get(0)?;
        let database = get(1)?;
        let version = get(2)?;
        let createrole: bool = row.try_get(3).unwrap_or(false);
        let superuser: bool = row.try_get(4).unwrap_or(false);
        drop(conn);
        if !createrole && !superuser {
            return Err(PluginError::Misconfigured(format!(
                "role `{user}` lacks CREATEROLE (as a superuser: ALTER ROLE {} CREATEROLE)",
                quote_ident(&user).unwrap_or_else(|_| user.clone())
            )));
        }
        // The roles' other databases must exist and admit the admin too.
        for other in root.pools.keys().filter(|d| d.as_str() != db) {
            let mut c = self.acquire(&root, other).await?;
            if let Err(e) = sqlx::query("SELECT 1").execute(&mut *c).await {
                return Err(self.fail(&root, e, other, "validating").await);
            }
        }
        let mut details = BTreeMap::new();
        details.insert("database".to_owned(), database);
        details.insert("server_version".to_owned(), version);
        details.insert("host".to_owned(), root.target.addr());
        if root.pools.len() > 1 {
            details.insert(
                "databases".to_owned(),
                root.pools.keys().cloned().collect::<Vec<_>>().join(", "),
            );
        }
        if let Some(v) = root.version {
            details.insert("root_version".to_owned(), v.to_string());
        }
        let mut warnings = Vec::new();
        if superuser {
            warnings.push(format!(
                "connected as superuser `{user}`; a dedicated role with CREATEROLE is safer"
            ));
        }
        if self.config.tls == Some(Tls::Disable) && !root.target.socket {
            warnings.push("TLS is disabled: passwords cross the network unencrypted".to_owned());
        }
        Ok(Validation {
            identity: user,
            details,
            warnings,
        })
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %req.role, lease_id = %req.lease_id))]
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let role = self.role(&req.role)?;
        check_expiry(req.expires_at, role.max_ttl)?;
        if let Some(k) = req.params.keys().next() {
            return Err(PluginError::InvalidRequest(format!(
                "the postgres plugin takes no request parameters (got `{k}`)"
            )));
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in &req.scopes {
            if !role.config.grants.contains_key(s) {
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
                "lease id `{}` has fewer than {MIN_LEASE_HEX_LEN} letters and digits to name a role after",
                req.lease_id
            ))
        })?;
        let name = role_name(&self.config.role_prefix, &req.role, &req.workload, &hex);
        let (expires_at, expiry) = pg_expiry(req.expires_at);
        // The root this issue started with is the one it finishes with.
        let root = self.active_root()?;
        let db = role.database(&root);

        // Every claim and value is checked before touching the database.
        let dry = Vars {
            name: &name,
            password: Some(""),
            expiry: &expiry,
            database: db,
            admin: "admin",
            workload: Some(&req.workload),
        };
        for t in role.config.issue_templates(&scopes) {
            t.render(&dry).map_err(|e| self.render_err(&req.role, e))?;
        }

        let password = new_password()?;
        // PBKDF2 with 4096 rounds is ~1 ms of CPU: keep it off the async
        // workers.
        let for_hash = password.clone();
        let verifier = tokio::task::spawn_blocking(move || crate::scram::verifier(for_hash.expose_secret().as_bytes()))
            .await
            .map_err(|e| PluginError::Retryable(format!("computing the password verifier: {e}")))?
            .map_err(|e| PluginError::Retryable(format!("the OS random number generator failed: {e}")))?;

        let mut conn = self.acquire(&root, db).await?;
        let job = Creation {
            req: &req,
            role,
            name: &name,
            verifier: &verifier,
            expiry: &expiry,
            scopes: &scopes,
        };
        let mut tries = 0;
        loop {
            match self.issue_in_tx(&root, &mut conn, &job).await {
                Err(e) if again_after_conflict(&e, &mut tries).await => continue,
                r => break r?,
            }
        }
        tracing::debug!(pg_role = %name, scopes = scopes.len(), root_version = ?root.version, "role created");

        let mut public = Map::new();
        public.insert("username".into(), json!(name));
        public.insert("database".into(), json!(db));
        public.insert("host".into(), json!(root.target.host));
        public.insert("port".into(), json!(root.target.port));
        public.insert("expires_at".into(), json!(rfc3339(expires_at)));
        let host = if root.target.host.contains(':') {
            format!("[{}]", root.target.host)
        } else if root.target.socket {
            dsn_part(&root.target.host)
        } else {
            root.target.host.clone()
        };
        let dsn = format!(
            "postgres://{}:{}@{host}:{}/{}",
            dsn_part(&name),
            dsn_part(password.expose_secret()),
            root.target.port,
            dsn_part(db)
        );
        let mut secret = BTreeMap::new();
        secret.insert("password".to_owned(), password);
        secret.insert("dsn".to_owned(), SecretString::from(dsn));
        Ok(Issued {
            handle: json!({ "role": name }),
            public,
            secret,
            expires_at: req.expires_at,
            root_version: root.version,
        })
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %req.lease.role, lease_id = %req.lease.lease_id))]
    async fn renew(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        let lease = &req.lease;
        let role = self.role(&lease.role)?;
        check_expiry(req.expires_at, role.max_ttl)?;
        let (expires_at, expiry) = pg_expiry(req.expires_at);
        let missing = |hint: Option<&str>| match hint {
            Some(n) => PluginError::Permanent(format!("role `{n}` no longer exists")),
            None => PluginError::Permanent(format!(
                "no role of lease `{}` exists any more",
                lease.lease_id
            )),
        };
        let Some(hex) = lease_hex(&lease.lease_id) else {
            return Err(missing(None));
        };
        let hint = Self::hint(lease, &hex);
        let (root, mut conn) = self.lease_conn(lease, Some(role)).await?;
        let db = role.database(&root);
        let fail = |e| self.fail(&root, e, db, "renewing");
        let mut tx = match conn.begin().await {
            Ok(tx) => tx,
            Err(e) => return Err(fail(e).await),
        };
        let admin = match whoami(&mut tx).await {
            Ok(a) => a,
            Err(e) => return Err(fail(e).await),
        };
        let found = match find_roles(&mut tx, hint, &lease_pattern(&self.config.role_prefix, &hex)).await {
            Ok(f) => f,
            Err(e) => return Err(fail(e).await),
        };
        if found.is_empty() {
            return Err(missing(hint));
        }
        for (name, _) in &found {
            let vars = Vars {
                name,
                password: None,
                expiry: &expiry,
                database: db,
                admin: &admin.name,
                workload: None,
            };
            self.run_templates(&root, &mut tx, &lease.role, db, "renewal", &role.config.renewal, &vars)
                .await?;
            match valid_until_ok(&mut tx, name, &expiry).await {
                Ok(Some(true)) => {}
                Ok(Some(false)) => {
                    return Err(PluginError::Misconfigured(format!(
                        "role `{}/{}`: the renewal statements left `{name}` without `VALID UNTIL {{{{expiry}}}}`",
                        self.connection, lease.role
                    )))
                }
                Ok(None) => return Err(missing(Some(name))),
                Err(e) => return Err(fail(e).await),
            }
        }
        if let Err(e) = tx.commit().await {
            return Err(fail(e).await);
        }
        tracing::debug!(roles = found.len(), "role renewed");
        Ok(expires_at)
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %lease.role, lease_id = %lease.lease_id))]
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        // Too short an id to have named a role: nothing was ever created.
        let Some(hex) = lease_hex(&lease.lease_id) else {
            return Ok(());
        };
        let role = self.roles.get(&lease.role);
        let (root, mut conn) = self.lease_conn(lease, role).await?;
        let db = role
            .map(|r| r.database(&root))
            .unwrap_or(root.target.database.as_str());
        let hint = Self::hint(lease, &hex);
        let fail = |e| self.fail(&root, e, db, "revoking");

        // 1. Find the roles and block new logins (committed on its own, so it
        //    holds even if dropping has to wait). A non-superuser admin makes
        //    itself a member: ending sessions and REASSIGN/DROP OWNED need it.
        let mut tx = match conn.begin().await {
            Ok(tx) => tx,
            Err(e) => return Err(fail(e).await),
        };
        let admin = match whoami(&mut tx).await {
            Ok(a) => a,
            Err(e) => return Err(fail(e).await),
        };
        let found = match find_roles(&mut tx, hint, &lease_pattern(&self.config.role_prefix, &hex)).await {
            Ok(f) => f,
            Err(e) => return Err(fail(e).await),
        };
        if found.is_empty() {
            tracing::debug!("no role left for this lease");
            return Ok(());
        }
        let qa = quote_ident(&admin.name).map_err(|e| PluginError::Permanent(e.to_string()))?;
        for (name, _) in &found {
            let q = quote_ident(name).map_err(|e| PluginError::Permanent(e.to_string()))?;
            if let Err(e) = exec(&mut tx, &format!("ALTER ROLE {q} NOLOGIN")).await {
                return Err(self.fail(&root, e, db, &format!("blocking logins of `{name}`")).await);
            }
            if !admin.superuser {
                if let Err(e) = exec(&mut tx, &format!("GRANT {q} TO {qa}")).await {
                    return Err(self.fail(&root, e, db, &format!("taking membership in `{name}`")).await);
                }
            }
        }
        if let Err(e) = tx.commit().await {
            return Err(fail(e).await);
        }

        // 2. End its sessions. Between steps: past the call's deadline stop
        //    here (logins are already blocked; the retry finishes the rest).
        lessor_plugin::call::check("ending the sessions of the lease's roles")?;
        for (name, oid) in &found {
            match terminate_sessions(&mut conn, *oid).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pg_role = %name, sessions = n, "sessions terminated"),
                Err(e) => {
                    return Err(self.fail(&root, e, db, &format!("ending the sessions of `{name}`")).await)
                }
            }
        }

        // 3. Reassign or drop what it owns and drop it, in one transaction.
        let ctx = Revocation {
            lease,
            role,
            db,
            admin: &admin.name,
        };
        for (name, oid) in &found {
            lessor_plugin::call::check(&format!("dropping `{name}`"))?;
            let mut tries = 0;
            loop {
                match self.drop_role(&root, &mut conn, &ctx, name, *oid).await {
                    Err(e) if again_after_conflict(&e, &mut tries).await => continue,
                    r => break r?,
                }
            }
            tracing::debug!(pg_role = %name, "role dropped");
        }
        Ok(())
    }

    /// Roles named like this connection's leases (`<prefix>_<readable>_<32
    /// hex>`, see [`owned_regex`]), read from `pg_roles` with the active
    /// root credential. Superusers are never listed: lessor never makes
    /// one, and must not be the one to drop one.
    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn list_objects(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        let root = self.active_root()?;
        let db = root.target.database.as_str();
        let mut conn = self.acquire(&root, db).await?;
        let rows = sqlx::query(
            "SELECT rolname::text FROM pg_roles \
             WHERE rolname LIKE $1 AND rolname ~ $2 AND rolname::text COLLATE \"C\" > $3 AND NOT rolsuper AND rolname <> current_user \
             ORDER BY rolname::text COLLATE \"C\" LIMIT $4",
        )
        .bind(format!("{}\\_%", like_escape(&self.config.role_prefix)))
        .bind(owned_regex(&self.config.role_prefix))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => return Err(self.fail(&root, e, db, "listing roles").await),
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r
                .try_get(0)
                .map_err(|e| PluginError::Permanent(format!("listing roles: {e}")))?;
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
impl RootCredentials for PostgresPlugin {
    fn spec(&self) -> RootSecretSpec {
        RootSecretSpec {
            describes: "the admin DSN, postgres://user:password@host:port/database".into(),
            can_rotate: true,
        }
    }

    /// Connects with the candidate alone (its own short-lived connections,
    /// none of the installed pools), and checks what [`Plugin::validate`]
    /// checks: who it logs in as, the database, the server version,
    /// CREATEROLE, and that the roles' own databases admit it. Writes
    /// nothing.
    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn validate_root(&self, candidate: &SecretString) -> Result<Validation, PluginError> {
        let (options, never_show) = connect_options(candidate, self.config.tls)
            .map_err(|m| PluginError::InvalidRequest(format!("the candidate DSN {m}")))?;
        let target = Target::of(&options);
        let connect = |db: String| {
            let options = options.clone().database(&db);
            let target = &target;
            let never_show = &never_show;
            async move {
                match tokio::time::timeout(self.config.connect_timeout, PgConnection::connect_with(&options)).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(scrub_error(never_show, candidate_error(e, target, &db))),
                    Err(_) => Err(PluginError::Retryable(format!(
                        "cannot reach PostgreSQL at {}: no connection within {}",
                        target.addr(),
                        humantime::format_duration(self.config.connect_timeout)
                    ))),
                }
            }
        };
        let db = target.database.clone();
        let mut conn = connect(db.clone()).await?;
        let row = sqlx::query(
            "SELECT current_user::text, current_database()::text, current_setting('server_version'), \
                    r.rolcreaterole, r.rolsuper \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&mut conn)
        .await;
        let _ = conn.close().await;
        let row = row.map_err(|e| scrub_error(&never_show, candidate_error(e, &target, &db)))?;
        let get = |i| -> Result<String, PluginError> {
            row.try_get::<String, _>(i)
                .map_err(|e| PluginError::Permanent(format!("checking the candidate: {e}")))
        };
        let user = get(0)?;
        let database = get(1)?;
        let version = get(2)?;
        let createrole: bool = row.try_get(3).unwrap_or(false);
        let superuser: bool = row.try_get(4).unwrap_or(false);
        if !createrole && !superuser {
            return Err(PluginError::Permanent(format!(
                "role `{user}` lacks CREATEROLE (needed to create lease roles)"
            )));
        }
        let mut others: Vec<&str> = self
            .roles
            .values()
            .filter_map(|r| r.config.database.as_deref())
            .filter(|d| *d != database)
            .collect();
        others.sort_unstable();
        others.dedup();
        for other in &others {
            let c = connect((*other).to_owned()).await?;
            let _ = c.close().await;
        }
        let mut details = BTreeMap::new();
        details.insert("database".to_owned(), database);
        details.insert("server_version".to_owned(), version);
        details.insert(
            "createrole".to_owned(),
            if createrole { "true" } else { "through superuser" }.to_owned(),
        );
        details.insert("host".to_owned(), target.addr());
        if !others.is_empty() {
            details.insert("other_databases".to_owned(), others.join(", "));
        }
        let mut warnings = Vec::new();
        if superuser {
            warnings.push(format!(
                "connected as superuser `{user}`; a dedicated role with CREATEROLE is safer"
            ));
        }
        if self.config.tls == Some(Tls::Disable) && !target.socket {
            warnings.push("TLS is disabled: passwords cross the network unencrypted".to_owned());
        }
        Ok(Validation {
            identity: user,
            details,
            warnings,
        })
    }

    /// Builds (lazy) pools for `secret`, keyed by `version`. `active`: new
    /// issuance uses it from now on, replacing the previously active one
    /// (a `dsn_file` / `dsn_env` DSN included); the previous managed version
    /// stays installed to revoke its leases until [`RootCredentials::remove_root`].
    /// Installing the active version with `active = false` leaves no active
    /// one (issuance then fails, retryably, until one is activated).
    /// Installing an installed version with the same DSN keeps its pools.
    #[instrument(skip_all, fields(connection = %self.connection, version = version, active = active))]
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

    /// Forgets a retiring version; its pools close once the last operation
    /// using them ends. Removing one that is not installed is `Ok`; the
    /// active one is refused.
    #[instrument(skip_all, fields(connection = %self.connection, version = version))]
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

    /// With the active root credential, sets a new 256-bit random password
    /// on the role the DSN logs in as (`ALTER ROLE ... PASSWORD` with a
    /// SCRAM-SHA-256 verifier computed here, so the plaintext reaches
    /// neither the server nor its logs) and returns the DSN with it (same
    /// user, host, port, database and parameters).
    ///
    /// The old password stops working at once (for new connections; open
    /// ones stay logged in), so the core must activate the returned version
    /// straight away.
    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn rotate_root(&self) -> Result<SecretString, PluginError> {
        let root = self.active_root()?;
        let db = root.target.database.as_str();
        let password = new_password()?;
        // Built before the password changes, so a DSN we cannot rebuild never
        // leaves the role with a password nobody has.
        let dsn = dsn_with_password(&root.dsn, &password).map_err(|m| {
            PluginError::Permanent(format!("connection `{}`: the active DSN {m}", self.connection))
        })?;
        let for_hash = password.clone();
        let verifier = tokio::task::spawn_blocking(move || crate::scram::verifier(for_hash.expose_secret().as_bytes()))
            .await
            .map_err(|e| PluginError::Retryable(format!("computing the password verifier: {e}")))?
            .map_err(|e| PluginError::Retryable(format!("the OS random number generator failed: {e}")))?;
        let mut conn = self.acquire(&root, db).await?;
        let user: String = match sqlx::query_scalar("SELECT session_user::text").fetch_one(&mut *conn).await {
            Ok(u) => u,
            Err(e) => return Err(self.fail(&root, e, db, "rotating the root credential").await),
        };
        if user != root.target.user {
            return Err(PluginError::Permanent(format!(
                "the active DSN names user `{}` but logs in as `{user}`; cannot rotate its password",
                root.target.user
            )));
        }
        let q = quote_ident(&user).map_err(|e| PluginError::Permanent(e.to_string()))?;
        let v = crate::sql::quote_literal(&verifier).map_err(|e| PluginError::Permanent(e.to_string()))?;
        // Past the deadline nobody would receive the new DSN: do not change
        // the password then.
        lessor_plugin::call::check(&format!("changing the password of `{user}`"))?;
        if let Err(e) = exec(&mut conn, &format!("ALTER ROLE {q} PASSWORD {v}")).await {
            let mut err = self
                .fail(&root, e, db, &format!("changing the password of `{user}`"))
                .await;
            if let PluginError::Permanent(m) | PluginError::Retryable(m) = &mut err {
                *m = m.replace(&verifier, "***");
            }
            return Err(err);
        }
        tracing::info!(pg_role = %user, "root password rotated; the previous one no longer works");
        Ok(dsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn lease_hex_takes_the_tail() {
        let id = LeaseId::new("lse_0123456789abcdef0123456789ABCDEF");
        assert_eq!(lease_hex(&id).unwrap(), "0123456789abcdef0123456789abcdef");
        assert_eq!(lease_hex(&LeaseId::new("confa18f3")).unwrap(), "confa18f3");
        assert_eq!(lease_hex(&LeaseId::new("a-b")), None);
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

/// Whether an error is PostgreSQL's "tuple concurrently updated": two
/// transactions changed the same object's ACL (GRANT, REVOKE, DROP OWNED) at
/// once. The transaction was rolled back whole, so running it again is safe.
/// Granting group roles instead of object privileges avoids the conflict.
fn is_acl_conflict(e: &PluginError) -> bool {
    matches!(e, PluginError::Retryable(m) if m.contains("tuple concurrently updated"))
}

/// After an ACL conflict, waits a short random while and says whether to
/// run the transaction again (at most `ACL_ATTEMPTS` tries in all).
async fn again_after_conflict(e: &PluginError, tries: &mut u32) -> bool {
    const ACL_ATTEMPTS: u32 = 12;
    if !is_acl_conflict(e) || *tries + 1 >= ACL_ATTEMPTS {
        return false;
    }
    *tries += 1;
    let ms = rand::random::<u64>() % (2u64 << (*tries).min(6));
    tokio::time::sleep(std::time::Duration::from_millis(ms + 1)).await;
    true
}

/// Prefix of the error the in-transaction VALID UNTIL check raises.
const VALID_UNTIL_MARK: &str = "lessor: ";

/// A `DO` block that aborts the transaction unless role `name` exists with
/// `VALID UNTIL` no later than `expiry`.
fn valid_until_check(name: &str, expiry: &str) -> Result<String, PluginError> {
    let n = crate::sql::quote_literal(name).map_err(|e| PluginError::Permanent(e.to_string()))?;
    let x = crate::sql::quote_literal(expiry).map_err(|e| PluginError::Permanent(e.to_string()))?;
    let missing = crate::sql::quote_literal(&format!("{VALID_UNTIL_MARK}the creation statements did not create role `{name}`"))
        .map_err(|e| PluginError::Permanent(e.to_string()))?;
    let late = crate::sql::quote_literal(&format!(
        "{VALID_UNTIL_MARK}the creation statements left `{name}` without VALID UNTIL the lease expiry; its password would outlive the lease"
    ))
    .map_err(|e| PluginError::Permanent(e.to_string()))?;
    Ok(format!(
        "DO $lessor$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {n}) THEN RAISE EXCEPTION '%', {missing}; END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {n} AND rolvaliduntil <= {x}::timestamptz) \
             THEN RAISE EXCEPTION '%', {late}; END IF; \
         END $lessor$"
    ))
}

/// Statements sent as one simple-query message, with where each begins so a
/// failure can be attributed to its template.
#[derive(Default)]
struct Script {
    sql: String,
    /// (character offset where the statement starts, label)
    starts: Vec<(usize, String)>,
}

impl Script {
    /// Appends one rendered statement. A template renders exactly one
    /// statement: values are always quoted, and this check makes sure of it.
    fn push(&mut self, stmt: &str, label: String) -> Result<(), PluginError> {
        let stmt = stmt.trim().trim_end_matches(';').trim_end();
        if crate::sql::top_level_semicolons(stmt) > 0 {
            return Err(PluginError::Misconfigured(format!(
                "{label} renders to more than one SQL statement; write one statement per template"
            )));
        }
        if !self.sql.is_empty() {
            // On its own line: the previous statement may end in a `--` comment.
            self.sql.push_str("\n;\n");
        }
        self.starts.push((self.sql.chars().count(), label));
        self.sql.push_str(stmt);
        Ok(())
    }

    /// The label of the statement an error points into, when PostgreSQL
    /// gives a (1-based character) position.
    fn label_of(&self, e: &sqlx::Error) -> Option<String> {
        let pos = match e {
            sqlx::Error::Database(d) => d
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| match pg.position() {
                    Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
                    _ => None,
                }),
            _ => None,
        };
        match pos {
            Some(p) => self.starts.iter().rev().find(|(start, _)| *start < p).map(|(_, l)| l.clone()),
            None if self.starts.len() == 1 => Some(self.starts[0].1.clone()),
            None => None,
        }
    }

    /// After the script failed without saying where: runs its statements one
    /// by one in a transaction that is always rolled back, and names the
    /// first that fails. Only on the error path; nothing is left behind.
    async fn diagnose(&self, conn: &mut PgConnection) -> Option<String> {
        let mut tx = conn.begin().await.ok()?;
        let mut bounds: Vec<usize> = self.starts.iter().map(|(s, _)| *s).collect();
        bounds.push(self.sql.chars().count() + 3);
        let chars: Vec<char> = self.sql.chars().collect();
        let mut found = None;
        for (i, (start, label)) in self.starts.iter().enumerate() {
            let end = (bounds[i + 1].saturating_sub(3)).min(chars.len());
            let stmt: String = chars[*start..end].iter().collect();
            if sqlx::Executor::execute(&mut *tx, stmt.as_str()).await.is_err() {
                found = Some(label.clone());
                break;
            }
        }
        let _ = tx.rollback().await;
        found
    }
}
