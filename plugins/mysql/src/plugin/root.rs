//! Root credentials: who the admin is and what it may do, validating the
//! active one and a candidate, installing and removing versions, rotating
//! the password. Must not import: the core (`lessor`).

use super::*;

pub(super) async fn whoami(conn: &mut MySqlConnection) -> Result<Admin, sqlx::Error> {
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
    pub(super) async fn admin_validation(&self, conn: &mut MySqlConnection, root: &Root) -> Result<(Admin, Validation), PluginError> {
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

    #[instrument(skip_all, fields(connection = %self.connection))]
    pub(super) async fn validate_active(&self) -> Result<Validation, PluginError> {
        let root = self.active_root()?;
        let mut conn = self.acquire(&root).await?;
        let (_, v) = self.admin_validation(&mut conn, &root).await?;
        conn.release();
        Ok(v)
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
            pool: ConnPool::new(options.clone(), Arc::new(OnceLock::new()), 1, self.config.connect_timeout, IDLE_TIMEOUT),
            session: Arc::new(OnceLock::new()),
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
        self.roots.install(version, secret, active, |dsn| self.root(Some(version), dsn))
    }

    async fn remove_root(&self, version: i64) -> Result<(), PluginError> {
        self.roots.remove(version)
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
        let sess = session(&root, &mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
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
        conn.release();
        // The pooled connections stay logged in; new ones need the new DSN.
        tracing::info!(mysql_user = %admin.current, "root password rotated; the previous one no longer works");
        Ok(dsn)
    }
}
