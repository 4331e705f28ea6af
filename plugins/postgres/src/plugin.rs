//! The `Plugin` implementation: issue, renew, revoke and validate
//! just-in-time PostgreSQL roles.
//!
//! Owns the admin connection pools (one per database, connecting lazily),
//! role naming, the issue/renew/revoke transactions and the mapping of sqlx
//! errors to [`PluginError`]. Never logs or returns the admin DSN's password,
//! a generated password or a statement's text.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginContext, PluginError,
    RenewRequest, RoleSpec, Validation, Workload,
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
    database: String,
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
    target: Target,
    config: ConnectionConfig,
    /// One lazily connecting pool per database the roles use.
    pools: BTreeMap<String, PgPool>,
    roles: BTreeMap<String, Role>,
    /// Values that must never appear in a message (the DSN's password, raw
    /// and percent-encoded); scrubbed from every error as a last line.
    never_show: Vec<SecretString>,
}

impl fmt::Debug for PostgresPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresPlugin")
            .field("connection", &self.connection)
            .field("server", &self.target.addr())
            .field("user", &self.target.user)
            .field("database", &self.target.database)
            .field("dsn", &self.config.dsn_source)
            .field("pool_size", &self.config.pool_size)
            .field("tls", &self.config.tls)
            .field("role_prefix", &self.config.role_prefix)
            .field("owned_objects", &self.config.owned_objects)
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Parses the DSN without echoing it, returning the connect options and the
/// strings that must be scrubbed from messages.
fn connect_options(
    connection: &str,
    config: &ConnectionConfig,
) -> Result<(PgConnectOptions, Vec<SecretString>), PluginError> {
    let source = &config.dsn_source;
    let bad = |msg: String| {
        PluginError::Misconfigured(format!("connection `{connection}`: the DSN in {source} {msg}"))
    };
    let dsn = config.dsn.expose_secret();
    let url = url::Url::parse(dsn).map_err(|e| bad(format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(bad(format!(
            "has scheme `{}`; expected `postgres://` or `postgresql://`",
            url.scheme()
        )));
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
            return Err(bad(format!("has an unknown parameter `{key}`")));
        }
        if key == "password" {
            never_show.push(SecretString::from(value.into_owned()));
        }
    }
    never_show.retain(|s| !s.expose_secret().is_empty());
    let scrub = |m: String| scrub_with(&never_show, m);
    let mut options = PgConnectOptions::from_str(dsn)
        .map_err(|e| bad(format!("is not usable: {}", scrub(e.to_string()))))?;
    if let Some(tls) = config.tls {
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
    /// Parses the config and creates (lazy) pools. Connects to nothing.
    pub fn new(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Self, PluginError> {
        let config = ConnectionConfig::from_json(&ctx.connection, connection)?;
        let (options, never_show) = connect_options(&ctx.connection, &config)?;
        let target = Target {
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
        };
        let mut parsed = BTreeMap::new();
        for spec in &roles {
            let role_config = RoleConfig::from_json(&ctx.connection, spec)?;
            if spec.max_ttl.is_zero() {
                return Err(PluginError::Misconfigured(format!(
                    "role `{}/{}`: `max_ttl` is zero",
                    ctx.connection, spec.name
                )));
            }
            let database = role_config
                .database
                .clone()
                .unwrap_or_else(|| target.database.clone());
            parsed.insert(
                spec.name.clone(),
                Role {
                    config: role_config,
                    max_ttl: spec.max_ttl,
                    database,
                },
            );
        }
        let mut pools = BTreeMap::new();
        let databases = std::iter::once(target.database.clone())
            .chain(parsed.values().map(|r| r.database.clone()));
        for db in databases {
            if pools.contains_key(&db) {
                continue;
            }
            let pool = PgPoolOptions::new()
                .max_connections(config.pool_size)
                .min_connections(0)
                .acquire_timeout(config.connect_timeout)
                .idle_timeout(Some(Duration::from_secs(300)))
                .test_before_acquire(false)
                .connect_lazy_with(options.clone().database(&db));
            pools.insert(db, pool);
        }
        Ok(PostgresPlugin {
            connection: ctx.connection,
            target,
            config,
            pools,
            roles: parsed,
            never_show,
        })
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

    fn pool(&self, db: &str) -> &PgPool {
        // Every role's database got a pool in `new`.
        &self.pools[db]
    }

    fn scrub(&self, msg: String) -> String {
        scrub_with(&self.never_show, msg)
    }

    /// Why no connection could be had, found by a plain TCP connect (the
    /// pool hides "connection refused" behind its timeout).
    async fn unreachable_reason(&self) -> String {
        let waited = humantime::format_duration(self.config.connect_timeout);
        if self.target.socket {
            return format!("no connection within {waited}");
        }
        let probe = tokio::time::timeout(
            self.config.connect_timeout.min(Duration::from_secs(2)),
            tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port)),
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
    async fn fail(&self, e: sqlx::Error, db: &str, what: &str) -> PluginError {
        let at = self.target.at(db);
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
                        self.target.user
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
            sqlx::Error::PoolTimedOut => unreachable(self.unreachable_reason().await),
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                unreachable("the connection pool is closed".into())
            }
            sqlx::Error::Configuration(e) => PluginError::Misconfigured(format!(
                "connection `{}`: {e}",
                self.connection
            )),
            other => PluginError::Permanent(format!("{what}: {other}")),
        };
        match err {
            PluginError::Retryable(m) => PluginError::Retryable(self.scrub(m)),
            PluginError::Permanent(m) => PluginError::Permanent(self.scrub(m)),
            PluginError::Misconfigured(m) => PluginError::Misconfigured(self.scrub(m)),
            other => other,
        }
    }

    async fn acquire(&self, db: &str) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, PluginError> {
        match self.pool(db).acquire().await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.fail(e, db, "connecting").await),
        }
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
        }
    }

    /// Runs `templates` in order; errors name the statement, not its text.
    async fn run_templates(
        &self,
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
                let mut err = self.fail(e, db, &what).await;
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

    async fn issue_in_tx(&self, conn: &mut PgConnection, job: &Creation<'_>) -> Result<(), PluginError> {
        let Creation {
            req,
            role,
            name,
            verifier,
            expiry,
            scopes,
        } = *job;
        let db = role.database.as_str();
        let fail = |e| self.fail(e, db, "issuing");
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
                let mut err = self.fail(e, db, &what).await;
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
        let fail = |e| self.fail(e, db, "revoking");
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
                    self.run_templates(&mut tx, role_label, db, "revocation", templates, &vars)
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
                                return Err(self.fail(e, db, &format!("reassigning what `{name}` owns")).await);
                            }
                        }
                    }
                    for (sql, what) in [
                        (format!("DROP OWNED BY {q}"), format!("dropping what `{name}` owns")),
                        (format!("DROP ROLE {q}"), format!("dropping role `{name}`")),
                    ] {
                        if let Err(e) = exec(&mut tx, &sql).await {
                            return Err(self.fail(e, db, &what).await);
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
            Err(e) => Err(self.fail(e, db, "checking the role is gone").await),
        }
    }
}

#[async_trait]
impl Plugin for PostgresPlugin {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_renew: true,
            can_revoke: true,
        }
    }

    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn validate(&self) -> Result<Validation, PluginError> {
        let db = self.target.database.as_str();
        let mut conn = self.acquire(db).await?;
        let row = match sqlx::query(
            "SELECT current_user::text, current_database()::text, current_setting('server_version'), \
                    r.rolcreaterole, r.rolsuper \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&mut *conn)
        .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e, db, "validating").await),
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
        for other in self.pools.keys().filter(|d| d.as_str() != db) {
            let mut c = self.acquire(other).await?;
            if let Err(e) = sqlx::query("SELECT 1").execute(&mut *c).await {
                return Err(self.fail(e, other, "validating").await);
            }
        }
        let mut details = BTreeMap::new();
        details.insert("database".to_owned(), database);
        details.insert("server_version".to_owned(), version);
        details.insert("host".to_owned(), self.target.addr());
        if self.pools.len() > 1 {
            details.insert(
                "databases".to_owned(),
                self.pools.keys().cloned().collect::<Vec<_>>().join(", "),
            );
        }
        let mut warnings = Vec::new();
        if superuser {
            warnings.push(format!(
                "connected as superuser `{user}`; a dedicated role with CREATEROLE is safer"
            ));
        }
        if self.config.tls == Some(Tls::Disable) && !self.target.socket {
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
        let db = role.database.as_str();

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

        let mut conn = self.acquire(db).await?;
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
            match self.issue_in_tx(&mut conn, &job).await {
                Err(e) if again_after_conflict(&e, &mut tries).await => continue,
                r => break r?,
            }
        }
        tracing::info!(pg_role = %name, scopes = scopes.len(), "role created");

        let mut public = Map::new();
        public.insert("username".into(), json!(name));
        public.insert("database".into(), json!(db));
        public.insert("host".into(), json!(self.target.host));
        public.insert("port".into(), json!(self.target.port));
        public.insert("expires_at".into(), json!(rfc3339(expires_at)));
        let host = if self.target.host.contains(':') {
            format!("[{}]", self.target.host)
        } else if self.target.socket {
            dsn_part(&self.target.host)
        } else {
            self.target.host.clone()
        };
        let dsn = format!(
            "postgres://{}:{}@{host}:{}/{}",
            dsn_part(&name),
            dsn_part(password.expose_secret()),
            self.target.port,
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
            root_version: None,
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
        let db = role.database.as_str();
        let fail = |e| self.fail(e, db, "renewing");
        let mut conn = self.acquire(db).await?;
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
            self.run_templates(&mut tx, &lease.role, db, "renewal", &role.config.renewal, &vars)
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
        tracing::info!(roles = found.len(), "role renewed");
        Ok(expires_at)
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %lease.role, lease_id = %lease.lease_id))]
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        // Too short an id to have named a role: nothing was ever created.
        let Some(hex) = lease_hex(&lease.lease_id) else {
            return Ok(());
        };
        let role = self.roles.get(&lease.role);
        let db = role
            .map(|r| r.database.as_str())
            .unwrap_or(self.target.database.as_str());
        let hint = Self::hint(lease, &hex);
        let fail = |e| self.fail(e, db, "revoking");
        let mut conn = self.acquire(db).await?;

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
                return Err(self.fail(e, db, &format!("blocking logins of `{name}`")).await);
            }
            if !admin.superuser {
                if let Err(e) = exec(&mut tx, &format!("GRANT {q} TO {qa}")).await {
                    return Err(self.fail(e, db, &format!("taking membership in `{name}`")).await);
                }
            }
        }
        if let Err(e) = tx.commit().await {
            return Err(fail(e).await);
        }

        // 2. End its sessions.
        for (name, oid) in &found {
            match terminate_sessions(&mut conn, *oid).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pg_role = %name, sessions = n, "sessions terminated"),
                Err(e) => {
                    return Err(self.fail(e, db, &format!("ending the sessions of `{name}`")).await)
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
            let mut tries = 0;
            loop {
                match self.drop_role(&mut conn, &ctx, name, *oid).await {
                    Err(e) if again_after_conflict(&e, &mut tries).await => continue,
                    r => break r?,
                }
            }
            tracing::info!(pg_role = %name, "role dropped");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
