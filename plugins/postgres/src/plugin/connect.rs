//! Reaching the server with a root credential: parsing an admin DSN
//! without echoing it, the session options, the target for messages, pools
//! and connections (with a TCP probe so "connection refused" fails at
//! once), and the mapping of sqlx errors to [`PluginError`] (scrubbed of
//! the DSN's password). Must not import: the core (`lessor`).

use super::*;
use lessor_plugin_sql::root::percent_decode;

/// Server-side limits on the admin sessions, so a stuck lock cannot hang a
/// revocation forever (the core retries a timed-out one).
pub(super) const SESSION_OPTIONS: &[(&str, &str)] = &[("lock_timeout", "15s"), ("statement_timeout", "60s")];

/// Query parameters sqlx understands in a DSN; anything else is refused
/// (sqlx would log an unknown one with its value).
pub(super) const DSN_PARAMS: &[&str] = &[
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

impl Target {
    pub(super) fn of(options: &PgConnectOptions) -> Target {
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
    pub(super) fn addr(&self) -> String {
        if self.socket {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(super) fn at(&self, db: &str) -> String {
        format!("{}/{db}", self.addr())
    }
}

/// Parses an admin DSN without echoing it, returning the connect options
/// and the strings that must be scrubbed from messages. The error completes
/// "the DSN ..." and holds no part of the DSN but its scheme or a parameter
/// name.
pub(super) fn connect_options(
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
        if let Some(decoded) = percent_decode(pw) {
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

/// `dsn` with its password replaced by `password` (in the userinfo; a
/// `password` query parameter is left out). Scheme, user, host, port,
/// database and the other parameters are kept as they were. The error
/// completes "the DSN ...".
pub(super) fn dsn_with_password(dsn: &SecretString, password: &SecretString) -> Result<SecretString, String> {
    lessor_plugin_sql::root::dsn_with_password(dsn, password, &["password"])
}

/// Maps an error met while checking a candidate root credential. Precise,
/// with `host:port` and the user, never the DSN.
pub(super) fn candidate_error(e: sqlx::Error, target: &Target, db: &str) -> PluginError {
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

pub(super) async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    // One statement per template (the extended protocol refuses more), never
    // cached: each carries per-lease values.
    sqlx::query(sql).persistent(false).execute(conn).await.map(|_| ())
}

impl PostgresPlugin {
    /// Why no connection could be had, found by a plain TCP connect (the
    /// pool hides "connection refused" behind its timeout).
    pub(super) async fn unreachable_reason(&self, target: &Target) -> String {
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
    pub(super) async fn fail(&self, root: &Root, e: sqlx::Error, db: &str, what: &str) -> PluginError {
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
    pub(super) fn no_pool(&self, db: &str) -> PluginError {
        PluginError::Permanent(format!("connection `{}`: no pool for database `{db}`", self.connection))
    }

    /// Fails fast when the server refuses connections. sqlx's pool retries
    /// a refused connect (with backoff) until `connect_timeout`, so with no
    /// connection open (acquiring means connecting), the
    /// server's port is tried first: "connection refused" (or nothing
    /// answering within `connect_timeout`) is a retryable error at once.
    /// PostgreSQL does not log a connection that sends nothing. Only with
    /// no connection open: busy connections mean load, not a dead server,
    /// and a probe per request would cost a TCP handshake each time.
    pub(super) async fn refused(&self, root: &Root, pool: &PgPool, db: &str) -> Option<PluginError> {
        if pool.size() > 0 {
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

    pub(super) async fn acquire(
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
    pub(super) async fn lease_conn(
        &self,
        lease: &LeaseRef,
        role: Option<&Role>,
    ) -> Result<(Arc<Root>, sqlx::pool::PoolConnection<sqlx::Postgres>), PluginError> {
        let root = self.root_for(lease)?;
        let db = role.map(|r| role_database(r, &root)).unwrap_or(&root.target.database);
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
                    let db = role.map(|r| role_database(r, &active)).unwrap_or(&active.target.database);
                    let conn = self.acquire(&active, db).await?;
                    return Ok((active, conn));
                }
            }
        }
        Err(self.fail(&root, e, db, "connecting").await)
    }
}
