//! Issuing and renewing: the creation transaction (templates rendered
//! with every value quoted, run as one script, `VALID UNTIL` checked), grant
//! conflicts retried, renewal of a lease's roles. Must not import: the core
//! (`lessor`).

use super::*;
use lessor_plugin::expiry::check_expiry;
use lessor_plugin_sql::issue::{check_issue, Checked};

/// Whether an error is PostgreSQL's "tuple concurrently updated": two
/// transactions changed the same object's ACL (GRANT, REVOKE, DROP OWNED) at
/// once. The transaction was rolled back whole, so running it again is safe.
/// Granting group roles instead of object privileges avoids the conflict.
pub(super) fn is_acl_conflict(e: &PluginError) -> bool {
    matches!(e, PluginError::Retryable(m) if m.contains("tuple concurrently updated"))
}

/// After an ACL conflict, waits a short random while and says whether to
/// run the transaction again (at most `ACL_ATTEMPTS` tries in all).
pub(super) async fn again_after_conflict(e: &PluginError, tries: &mut u32) -> bool {
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
pub(super) const VALID_UNTIL_MARK: &str = "lessor: ";

/// A `DO` block that aborts the transaction unless role `name` exists with
/// `VALID UNTIL` no later than `expiry`.
pub(super) fn valid_until_check(name: &str, expiry: &str) -> Result<String, PluginError> {
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

impl PostgresPlugin {
    /// The handle's role name, if it is a name of this lease.
    pub(super) fn hint<'a>(lease: &'a LeaseRef, hex: &str) -> Option<&'a str> {
        let name = lease.handle.as_ref()?.get("role")?.as_str()?;
        name.strip_suffix(hex)
            .is_some_and(|rest| rest.ends_with('_'))
            .then_some(name)
    }

    pub(super) fn render_err(&self, role: &str, e: RenderError) -> PluginError {
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
            // The PostgreSQL dialect does not count statements at render
            // time (a script of statements is checked as it is built).
            RenderError::NotOneStatement => PluginError::Misconfigured(format!(
                "role `{}/{role}`: the statement renders to more than one SQL statement; refusing to run it",
                self.connection
            )),
        }
    }

    /// Runs `templates` in order; errors name the statement, not its text.
    // The root joined the arguments; grouping them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_templates(
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

    pub(super) async fn issue_in_tx(&self, root: &Root, conn: &mut PgConnection, job: &Creation<'_>) -> Result<(), PluginError> {
        let Creation {
            req,
            role,
            name,
            verifier,
            expiry,
            scopes,
        } = *job;
        let db = role_database(role, root);
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

    #[instrument(skip_all, fields(connection = %self.connection, role = %req.role, lease_id = %req.lease_id))]
    pub(super) async fn issue_role(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let role = self.role(&req.role)?;
        let Checked { scopes, hex } =
            check_issue(KIND, &self.connection, &req, role, |s| role.config.grants.contains_key(s), "a role", (self.clock)())?;
        let name = role_name(&self.config.role_prefix, &req.role, &req.workload, &hex);
        let (expires_at, expiry) = pg_expiry(req.expires_at);
        // The root this issue started with is the one it finishes with.
        let root = self.active_root()?;
        let db = role_database(role, &root);

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
    pub(super) async fn renew_role(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        let lease = &req.lease;
        let role = self.role(&lease.role)?;
        check_expiry((self.clock)(), req.expires_at, role.max_ttl)?;
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
        let db = role_database(role, &root);
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
}
