//! Issuing and renewing: the account created (the password sent as its
//! hash on MariaDB), its server roles granted and made default, grant
//! templates rendered and run, a failure part way undone; renewal checks
//! the lease's accounts still exist. Must not import: the core (`lessor`).

use super::*;
use lessor_plugin::expiry::check_expiry;
use lessor_plugin_sql::issue::{check_issue, Checked};

/// Why creating an account failed, and whether it exists by then.
enum Failed {
    NothingMade(PluginError),
    AccountMade(PluginError),
}

/// What the server receives instead of `password`: MariaDB's
/// `mysql_native_password` hash, or MySQL 8's `caching_sha2_password` string
/// (5,000 rounds of SHA-256: off the async workers).
pub(super) async fn auth_string(flavor: Flavor, password: &SecretString) -> Result<SecretString, PluginError> {
    match flavor {
        Flavor::MariaDb => Ok(native_hash(password)),
        Flavor::MySql => {
            let pw = password.clone();
            tokio::task::spawn_blocking(move || crate::sha2_auth::auth_string(&pw))
                .await
                .map_err(|e| PluginError::Retryable(format!("computing the authentication string: {e}")))?
        }
    }
}

impl MysqlPlugin {
    pub(super) fn render_err(&self, role: &str, e: crate::sql::RenderError) -> PluginError {
        PluginError::InvalidRequest(format!("role `{}/{role}`: {e}", self.connection))
    }

    /// Creates the account, grants its server roles and makes them its
    /// default (one round trip), then runs the grant templates. MySQL and
    /// MariaDB commit every account statement at once (no transactional
    /// DDL), so a failure part way drops the account again.
    pub(super) async fn create(&self, root: &Root, conn: &mut MySqlConnection, sess: Session, job: &Creation<'_>) -> Result<(), PluginError> {
        let Creation { acct, user, password, hash, server_roles, grants } = *job;
        let literal = Zeroizing::new(quote_literal(hash.expose_secret(), sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?);
        let create = Zeroizing::new(match sess.flavor {
            Flavor::MariaDb => format!("CREATE USER {acct} IDENTIFIED BY PASSWORD {}", literal.as_str()),
            Flavor::MySql => format!("CREATE USER {acct} IDENTIFIED WITH caching_sha2_password AS {}", literal.as_str()),
        });
        let never_show = [password.clone(), hash.clone()];
        let scrub = |e: PluginError| scrub_error(&never_show, e);
        let result = match self.create_account(root, conn, sess, (acct, user, password), &create, server_roles).await {
            Ok(()) => self.run_grants(root, conn, grants).await,
            Err(Failed::NothingMade(e)) => return Err(scrub(e)),
            Err(Failed::AccountMade(e)) => Err(e),
        };
        if let Err(e) = result {
            if let Err(d) = exec(conn, &format!("DROP USER IF EXISTS {acct}")).await {
                tracing::warn!(error = %self.fail(root, d, "dropping"), "a half-created account was not dropped; revocation of the pending lease will");
            }
            return Err(scrub(e));
        }
        Ok(())
    }

    /// `CREATE USER` (the statement `create`), a `GRANT` per server role and
    /// `SET DEFAULT ROLE`, sent together: one round trip per issue instead
    /// of one per statement. The server stops at the first failing
    /// statement, whose position says what failed and whether the account
    /// exists. `login`: the account (quoted), its user name and password.
    async fn create_account(
        &self,
        root: &Root,
        conn: &mut MySqlConnection,
        sess: Session,
        login: (&str, &str, &SecretString),
        create: &str,
        server_roles: &[String],
    ) -> Result<(), Failed> {
        let (acct, user, password) = login;
        let quoted = server_roles
            .iter()
            .map(|r| quote_ident(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failed::NothingMade(PluginError::Misconfigured(e.to_string())))?;
        // One role per GRANT: MariaDB's syntax takes one.
        let grant_roles: Vec<String> = quoted.iter().map(|q| format!("GRANT {q} TO {acct}")).collect();
        let list = quoted.join(", ");
        let default = (!quoted.is_empty()).then(|| match sess.flavor {
            Flavor::MySql => format!("SET DEFAULT ROLE ALL TO {acct}"),
            Flavor::MariaDb => format!("SET DEFAULT ROLE {list} FOR {acct}"),
        });
        let mut stmts = vec![create];
        stmts.extend(grant_roles.iter().map(String::as_str));
        stmts.extend(default.as_deref());
        let (at, e) = match exec_batch(conn, &stmts).await {
            Ok(_) => return Ok(()),
            Err(failed) => failed,
        };
        if at == 0 {
            let exists = db_number(&e) == Some(er::CANNOT_USER);
            let err = self.fail(root, e, "creating the account");
            return Err(Failed::NothingMade(if exists {
                PluginError::Permanent(format!("account {acct} exists already (a lease id is never reused); revoke the lease to drop it"))
            } else {
                err
            }));
        }
        if let Some(r) = server_roles.get(at - 1).filter(|_| at <= grant_roles.len()) {
            return Err(Failed::AccountMade(match self.fail(root, e, &format!("granting role {r}")) {
                PluginError::Permanent(m) => PluginError::Permanent(format!(
                    "{m} (the admin account needs each role WITH ADMIN OPTION, or ROLE_ADMIN on MySQL)"
                )),
                other => other,
            }));
        }
        // MariaDB lets an admin set another account's default role only
        // with UPDATE on the `mysql` database (which would let it rewrite
        // any account's privileges). Without it, the new account sets its
        // own, which needs no privilege.
        if sess.flavor == Flavor::MariaDb && db_number(&e) == Some(er::DBACCESS_DENIED) {
            return self.own_default_role(root, user, password, &list).await.map_err(Failed::AccountMade);
        }
        Err(Failed::AccountMade(self.fail(root, e, "setting the default role")))
    }

    /// Runs the rendered grant templates, one statement at a time (each
    /// error names its scope and statement).
    async fn run_grants(&self, root: &Root, conn: &mut MySqlConnection, grants: &[(String, String)]) -> Result<(), PluginError> {
        for (label, sql) in grants {
            if let Err(e) = exec(conn, sql).await {
                return Err(self.fail(root, e, &format!("{label} failed")));
            }
        }
        Ok(())
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %req.role, lease_id = %req.lease_id))]
    pub(super) async fn issue_account(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let role = self.role(&req.role)?;
        let Checked { scopes, hex } =
            check_issue(KIND, &self.connection, &req, role, |s| role.config.roles.contains_key(s) || role.config.grants.contains_key(s), "a user", (self.clock)())?;
        let root = self.active_root()?;
        let password = new_password()?;
        // MySQL 8's string is about 0.65 ms of CPU: made before a pooled
        // connection is held whenever the server's flavour is known (every
        // issue after the root's first connection).
        let early = match root.session.get() {
            Some(s) => Some(auth_string(s.flavor, &password).await?),
            None => None,
        };
        let mut conn = self.acquire(&root).await?;
        let sess = session(&root, &mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
        let hash = match early {
            Some(h) => h,
            None => auth_string(sess.flavor, &password).await?,
        };
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
        let job = Creation { acct: &acct, user: &user, password: &password, hash: &hash, server_roles: &server_roles, grants: &grants };
        self.create(&root, &mut conn, sess, &job).await?;
        conn.release();
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

    /// Logs in as the new MariaDB account (the admin's server, port and TLS
    /// settings) and sets its own default role. The account's host pattern
    /// must admit lessor's address.
    async fn own_default_role(&self, root: &Root, user: &str, password: &SecretString, roles: &str) -> Result<(), PluginError> {
        let options = root.options.clone().username(user).password(password.expose_secret()).database("");
        let connect = tokio::time::timeout(self.config.connect_timeout, MySqlConnection::connect_with(&options)).await;
        let mut conn = match connect {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if db_number(&e) == Some(er::ACCESS_DENIED) => {
                return Err(PluginError::Permanent(format!(
                    "setting the default role: the admin lacks UPDATE on the `mysql` database, and the new account \
                     cannot log in from lessor's address to set its own (its host pattern must admit lessor, or grant \
                     the admin UPDATE ON mysql.*): {}",
                    self.fail(root, e, "logging in as the new account")
                )))
            }
            Ok(Err(e)) => return Err(self.fail(root, e, "logging in as the new account to set its default role")),
            Err(_) => {
                return Err(PluginError::Retryable(format!(
                    "logging in as the new account to set its default role: no connection to {} within {}",
                    root.target.addr(),
                    humantime::format_duration(self.config.connect_timeout)
                )))
            }
        };
        let set = exec(&mut conn, &format!("SET DEFAULT ROLE {roles}")).await;
        let _ = sqlx::Connection::close(conn).await;
        set.map_err(|e| self.fail(root, e, "setting the account's own default role"))
    }

    /// The account needs no change (its end is lessor's revocation); renew
    /// checks that it still exists.
    #[instrument(skip_all, fields(connection = %self.connection, role = %req.lease.role, lease_id = %req.lease.lease_id))]
    pub(super) async fn renew_accounts(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        let role = self.role(&req.lease.role)?;
        check_expiry((self.clock)(), req.expires_at, role.max_ttl)?;
        let (root, mut conn) = self.lease_conn(&req.lease).await?;
        let hex = lease_hex(&req.lease.lease_id).unwrap_or_default();
        let prefix = &self.config.user_prefix;
        let sess = session(&root, &mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
        let names = Names::of(sess.flavor, prefix, &hex);
        let found = find_accounts(&mut conn, &names).await.map_err(|e| self.fail(&root, e, "finding the lease's account"))?;
        conn.release();
        if found.is_empty() || hex.is_empty() {
            return Err(PluginError::Permanent(format!(
                "the account of lease `{}` no longer exists at {}; it was revoked",
                req.lease.lease_id,
                root.target.addr()
            )));
        }
        Ok(req.expires_at)
    }
}
