//! Reaching the server with a root credential: parsing an admin DSN
//! without echoing it, the target for messages, pools and connections
//! ("connection refused" fails at once), what the
//! session talks to (flavour, backslash mode), and the mapping of sqlx
//! errors to [`PluginError`] (scrubbed of the DSN's password). Must not
//! import: the core (`lessor`).

use super::*;
use lessor_plugin_sql::root::percent_decode;

/// DSN query parameters sqlx understands; anything else is refused.
pub(super) const DSN_PARAMS: &[&str] = &[
    "ssl-mode", "sslmode", "ssl-ca", "sslca", "charset", "collation", "statement-cache-capacity", "socket",
    "timezone", "time-zone",
];

/// MySQL error numbers the plugin acts on.
pub(super) mod er {
    /// Access denied for user (wrong password).
    pub const ACCESS_DENIED: u16 = 1045;
    /// Unknown database.
    pub const BAD_DB: u16 = 1049;
    /// Access denied to a database (MariaDB's `SET DEFAULT ROLE ... FOR`
    /// without UPDATE on `mysql`).
    pub const DBACCESS_DENIED: u16 = 1044;
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

impl Target {
    pub(super) fn of(o: &MySqlConnectOptions) -> Target {
        Target {
            host: o.get_socket().map(|p| p.display().to_string()).unwrap_or_else(|| o.get_host().to_owned()),
            port: o.get_port(),
            user: o.get_username().to_owned(),
        }
    }

    pub(super) fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses an admin DSN without echoing it. The error completes "the DSN ...".
pub(super) fn connect_options(dsn: &SecretString) -> Result<(MySqlConnectOptions, Vec<SecretString>), String> {
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

/// `dsn` with its password replaced (everything else kept). The error
/// completes "the DSN ...".
pub(super) fn dsn_with_password(dsn: &SecretString, password: &SecretString) -> Result<SecretString, String> {
    lessor_plugin_sql::root::dsn_with_password(dsn, password, &[])
}

pub(super) fn db_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(d) => d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()),
        _ => None,
    }
}

pub(super) async fn exec(conn: &mut MySqlConnection, sql: &str) -> Result<(), sqlx::Error> {
    // A bare string: the text protocol, never prepared or cached (each
    // statement carries per-lease values).
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

/// Runs `stmts` in one round trip (a multi-statement text query; the
/// server runs them in order and stops at the first error): the rows each
/// affected, or the index of the statement that failed; those before it
/// took effect, none after it ran.
pub(super) async fn exec_batch(conn: &mut MySqlConnection, stmts: &[&str]) -> Result<Vec<u64>, (usize, sqlx::Error)> {
    use futures_util::StreamExt;
    let sql = Zeroizing::new(stmts.join(";\n"));
    let mut results = sqlx::raw_sql(&sql).execute_many(conn);
    let mut rows = Vec::with_capacity(stmts.len());
    while let Some(r) = results.next().await {
        match r {
            Ok(done) => rows.push(done.rows_affected()),
            Err(e) => return Err((rows.len(), e)),
        }
    }
    if rows.len() == stmts.len() {
        Ok(rows)
    } else {
        Err((rows.len(), sqlx::Error::Protocol(format!("{} statements sent, {} answered", stmts.len(), rows.len()))))
    }
}

/// What `conn` talks to and its `sql_mode`, read from the server (one
/// round trip).
async fn read_session(conn: &mut MySqlConnection) -> Result<(Session, String), sqlx::Error> {
    let row = sqlx::query("SELECT CAST(@@version AS CHAR), CAST(@@SESSION.sql_mode AS CHAR)").fetch_one(conn).await?;
    let version: String = row.try_get(0)?;
    let mode: String = row.try_get(1)?;
    let no_escapes = mode.split(',').any(|m| m.trim().eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"));
    let session = Session { flavor: Flavor::of_version(&version), backslash: if no_escapes { Backslash::Literal } else { Backslash::Escapes } };
    Ok((session, mode))
}

/// `mode` with `NO_BACKSLASH_ESCAPES` on or off as `want` says, every other
/// mode kept; `None` when `mode` holds anything but mode names (letters,
/// digits, `_` and commas), which is then not sent back to the server.
pub(super) fn mode_with(mode: &str, want: Backslash) -> Option<String> {
    if !mode.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b',' || b == b' ') {
        return None;
    }
    let mut parts: Vec<&str> = mode
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty() && !m.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"))
        .collect();
    if want == Backslash::Literal {
        parts.push("NO_BACKSLASH_ESCAPES");
    }
    Some(parts.join(","))
}

/// Run once on each new pooled connection (`after_connect`): the first
/// connection of a pool records what the server is and how its session
/// reads backslashes; every later connection is set to that same backslash
/// mode (`SET SESSION sql_mode`) when the server's default changed since.
/// So one pool has one mode, known without asking per operation: values
/// are quoted for it, and nothing lessor sends changes `sql_mode` (templates
/// that would are refused at load).
pub(super) async fn pin_session(conn: &mut MySqlConnection, pinned: &OnceLock<Session>) -> Result<(), sqlx::Error> {
    let (found, mode) = read_session(conn).await?;
    let want = *pinned.get_or_init(|| found);
    if want.backslash != found.backslash {
        let Some(set) = mode_with(&mode, want.backslash) else {
            return Err(sqlx::Error::Protocol(format!("the server's sql_mode `{mode}` is not a list of mode names")));
        };
        // Only names and commas: no quoting question in either mode.
        exec(conn, &format!("SET SESSION sql_mode = '{set}'")).await?;
        tracing::info!(
            backslash_escapes = want.backslash == Backslash::Escapes,
            "the server's default sql_mode changed; this connection keeps its pool's NO_BACKSLASH_ESCAPES setting"
        );
    }
    Ok(())
}

/// The session of a connection of `root`'s pool: pinned at connect (see
/// [`pin_session`]), or read when the pool has none (a probe).
pub(super) async fn session(root: &Root, conn: &mut MySqlConnection) -> Result<Session, sqlx::Error> {
    match root.session.get() {
        Some(s) => Ok(*s),
        None => Ok(read_session(conn).await?.0),
    }
}

impl MysqlPlugin {
    /// A connection for renewing or revoking `lease`: from the root it was
    /// issued under while that one is installed; from the active root when
    /// that one no longer logs in (its password was rotated away).
    pub(super) async fn lease_conn(&self, lease: &LeaseRef) -> Result<(Arc<Root>, Pooled), PluginError> {
        let root = self.root_for(lease)?;
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

    /// Maps a sqlx error: unreachable -> `Retryable`; the server's refusal
    /// -> `Permanent` with its message (never the statement); scrubbed.
    pub(super) fn fail(&self, root: &Root, e: sqlx::Error, what: &str) -> PluginError {
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

    /// A pooled admin connection. A dead server is a retryable error at
    /// once: the pool makes one connection attempt, it does not retry until
    /// `connect_timeout` as sqlx's did.
    pub(super) async fn acquire(&self, root: &Root) -> Result<Pooled, PluginError> {
        root.pool.acquire().await.map_err(|e| self.fail(root, e, "connecting"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_with_sets_only_the_backslash_flag_and_refuses_anything_but_names() {
        let on = "STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES,PIPES_AS_CONCAT";
        assert_eq!(mode_with(on, Backslash::Escapes).as_deref(), Some("STRICT_TRANS_TABLES,PIPES_AS_CONCAT"));
        assert_eq!(mode_with("STRICT_TRANS_TABLES", Backslash::Literal).as_deref(), Some("STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES"));
        assert_eq!(mode_with("", Backslash::Literal).as_deref(), Some("NO_BACKSLASH_ESCAPES"));
        assert_eq!(mode_with("no_backslash_escapes", Backslash::Escapes).as_deref(), Some(""));
        assert_eq!(mode_with("A'; DROP USER x; --", Backslash::Escapes), None);
    }
}
