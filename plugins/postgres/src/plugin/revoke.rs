//! Revoking: a lease's roles found by name, `NOLOGIN`, sessions
//! terminated, owned objects reassigned and dropped (or refused), the role
//! dropped and checked gone. Must not import: the core (`lessor`).

use super::*;



impl PostgresPlugin {
    /// Drops one role of a lease whose logins are already blocked. Retried
    /// on an ACL write conflict, like issuing (see [`is_acl_conflict`]).
    pub(super) async fn drop_role(
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

    #[instrument(skip_all, fields(connection = %self.connection, role = %lease.role, lease_id = %lease.lease_id))]
    pub(super) async fn revoke_role(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        // Too short an id to have named a role: nothing was ever created.
        let Some(hex) = lease_hex(&lease.lease_id) else {
            return Ok(());
        };
        let role = self.roles.get(&lease.role);
        let (root, mut conn) = self.lease_conn(lease, role).await?;
        let db = role
            .map(|r| role_database(r, &root))
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
}
