//! Root credentials: validating the active one and a candidate (who it
//! logs in as, what it may do, in every database the roles use), installing
//! and removing versions, rotating the password. Must not import: the core
//! (`lessor`).

use super::*;



impl PostgresPlugin {
    #[instrument(skip_all, fields(connection = %self.connection))]
    pub(super) async fn validate_active(&self) -> Result<Validation, PluginError> {
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
        self.roots.install(version, secret, active, |dsn| self.root(Some(version), dsn))
    }

    /// Forgets a retiring version; its pools close once the last operation
    /// using them ends. Removing one that is not installed is `Ok`; the
    /// active one is refused.
    #[instrument(skip_all, fields(connection = %self.connection, version = version))]
    async fn remove_root(&self, version: i64) -> Result<(), PluginError> {
        self.roots.remove(version)
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
