//! Revoking and listing: a lease's accounts found by name, each locked,
//! its sessions killed and dropped; lessor's accounts listed for the
//! reconciler. Must not import: the core (`lessor`).

use super::*;
use lessor_plugin_sql::naming::{lease_of, owned_regex};

/// How a lease's accounts are named on the connection's server.
pub(super) enum Names {
    /// MariaDB: every user with the prefix and the lease's hex suffix (its
    /// readable middle may differ between roles and workloads).
    Like(String),
    /// MySQL: the one user name the lease id gives.
    Exactly(String),
}

impl Names {
    pub(super) fn of(flavor: Flavor, prefix: &str, hex: &str) -> Names {
        match flavor {
            Flavor::MariaDb => Names::Like(format!("{}!_%{}", like_escape(prefix), like_escape(&lease_suffix(prefix, hex)))),
            Flavor::MySql => Names::Exactly(mysql_user(prefix, hex)),
        }
    }

    /// Whether `user` is one of these names (a handle is trusted only then).
    fn covers(&self, prefix: &str, hex: &str, user: &str) -> bool {
        match self {
            Names::Like(_) => user.starts_with(&format!("{prefix}_")) && user.ends_with(&format!("_{}", lease_suffix(prefix, hex))),
            Names::Exactly(name) => user == name,
        }
    }
}

/// Every account with the lease's names (a lease left pending has no
/// handle; a handle's account may have been moved or dropped). On MariaDB
/// `mysql.user` is a view that decodes every row it reads: a pattern costs
/// the server a pass over all its accounts, so revocation tries the
/// handle's account first ([`MysqlPlugin::drop_accounts`]).
pub(super) async fn find_accounts(conn: &mut MySqlConnection, names: &Names) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = match names {
        Names::Like(pattern) => {
            sqlx::query(
                "SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user WHERE User LIKE ? ESCAPE '!' ORDER BY User, Host",
            )
            .bind(pattern)
            .fetch_all(conn)
            .await?
        }
        Names::Exactly(user) => {
            sqlx::query("SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user WHERE User = ? ORDER BY Host")
                .bind(user)
                .fetch_all(conn)
                .await?
        }
    };
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Ends every session of `user` but this one, on MySQL, which has no
/// statement for that (MariaDB's `KILL CONNECTION USER` goes in
/// [`MysqlPlugin::drop_account`]'s round trip): its sessions are listed
/// from `information_schema.PROCESSLIST` and killed one by one. A session
/// that ended by itself meanwhile is fine.
pub(super) async fn kill_sessions(conn: &mut MySqlConnection, user: &str) -> Result<usize, sqlx::Error> {
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

impl MysqlPlugin {
    /// Locks, disconnects and drops every account of a lease; returns how
    /// many were dropped and sessions ended. Gone accounts count as done.
    /// The handle's account (when the handle names one of the lease's) is
    /// locked straight away: the lock says whether it exists, so a
    /// revocation costs no lookup; only when it is gone are the lease's
    /// accounts looked up by name.
    pub(super) async fn drop_accounts(&self, root: &Root, conn: &mut MySqlConnection, lease: &LeaseRef) -> Result<(usize, usize), PluginError> {
        let Some(hex) = lease_hex(&lease.lease_id) else {
            // Such an id never named an account.
            return Ok((0, 0));
        };
        let prefix = &self.config.user_prefix;
        let sess = session(root, conn).await.map_err(|e| self.fail(root, e, "reading the session's sql_mode"))?;
        let names = Names::of(sess.flavor, prefix, &hex);
        let hint = lease.handle.as_ref().and_then(|h| Some((h.get("user")?.as_str()?, h.get("host")?.as_str()?)));
        if let Some((user, host)) = hint.filter(|(u, _)| names.covers(prefix, &hex, u)) {
            if let Some(killed) = self.drop_account(root, conn, sess, user, host).await? {
                return Ok((1, killed));
            }
        }
        let accounts = find_accounts(conn, &names).await.map_err(|e| self.fail(root, e, "finding the lease's accounts"))?;
        let (mut dropped, mut killed) = (0, 0);
        for (user, host) in &accounts {
            if let Some(k) = self.drop_account(root, conn, sess, user, host).await? {
                dropped += 1;
                killed += k;
            }
        }
        Ok((dropped, killed))
    }

    /// Locks `user@host`, ends its sessions, drops it and ends any session
    /// that started meanwhile; the sessions ended, or `None` when there is
    /// no such account. On MariaDB the four statements go in one round trip
    /// (the lock failing stops the rest); MySQL lists the sessions it ends.
    async fn drop_account(&self, root: &Root, conn: &mut MySqlConnection, sess: Session, user: &str, host: &str) -> Result<Option<usize>, PluginError> {
        let acct = account(user, host, sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?;
        if sess.flavor == Flavor::MariaDb {
            let name = quote_literal(user, sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?;
            let (lock, kill, drop) =
                (format!("ALTER USER {acct} ACCOUNT LOCK"), format!("KILL CONNECTION USER {name}"), format!("DROP USER IF EXISTS {acct}"));
            return match exec_batch(conn, &[&lock, &kill, &drop, &kill]).await {
                Ok(rows) => Ok(Some(rows.iter().skip(1).step_by(2).map(|&n| usize::try_from(n).unwrap_or(usize::MAX)).fold(0, usize::saturating_add))),
                Err((0, e)) if db_number(&e) == Some(er::CANNOT_USER) => Ok(None),
                Err((0, e)) => Err(self.fail(root, e, &format!("locking account {acct}"))),
                Err((2, e)) => Err(self.fail(root, e, &format!("dropping account {acct}"))),
                Err((_, e)) => Err(self.fail(root, e, &format!("ending the sessions of {acct}"))),
            };
        }
        // Locked first: no new session can start while the others end.
        match exec(conn, &format!("ALTER USER {acct} ACCOUNT LOCK")).await {
            Ok(()) => {}
            Err(e) if db_number(&e) == Some(er::CANNOT_USER) => return Ok(None),
            Err(e) => return Err(self.fail(root, e, &format!("locking account {acct}"))),
        }
        let mut killed = kill_sessions(conn, user).await.map_err(|e| self.fail(root, e, &format!("ending the sessions of {acct}")))?;
        exec(conn, &format!("DROP USER IF EXISTS {acct}"))
            .await
            .map_err(|e| self.fail(root, e, &format!("dropping account {acct}")))?;
        // A session that logged in just before the lock.
        killed += kill_sessions(conn, user).await.map_err(|e| self.fail(root, e, &format!("ending the sessions of {acct}")))?;
        Ok(Some(killed))
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %lease.role, lease_id = %lease.lease_id))]
    pub(super) async fn revoke_accounts(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let (root, mut conn) = self.lease_conn(lease).await?;
        let (dropped, killed) = self.drop_accounts(&root, &mut conn, lease).await?;
        conn.release();
        if dropped > 0 {
            tracing::debug!(accounts = dropped, sessions_ended = killed, "lease accounts dropped");
        }
        Ok(())
    }

    /// The users named like this connection's leases, read from
    /// `mysql.user` with the active root credential, one name per user
    /// (whatever its hosts), in byte order, each mapped back to its lease
    /// id. MariaDB: `<prefix>_<readable>_<32 hex>` ([`owned_regex`]), never a
    /// server role. MySQL: `<prefix>_<22 base-62 digits>`
    /// ([`mysql_lease_of`]; MySQL keeps no mark of a role, so a role in that
    /// shape is listed too). Never the admin's own user.
    #[instrument(skip_all, fields(connection = %self.connection))]
    pub(super) async fn list_accounts(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        let root = self.active_root()?;
        let mut conn = self.acquire(&root).await?;
        let sess = session(&root, &mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
        let prefix = &self.config.user_prefix;
        let sql = match sess.flavor {
            Flavor::MariaDb => {
                "SELECT CAST(User AS BINARY) AS u FROM mysql.user \
                 WHERE User LIKE ? ESCAPE '!' AND CAST(User AS BINARY) REGEXP ? AND CAST(User AS BINARY) > CAST(? AS BINARY) \
                 AND is_role <> 'Y' AND User <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
                 GROUP BY u ORDER BY u LIMIT ?"
            }
            // ICU regular expressions take no binary strings; `c`: case
            // sensitive (the digits are).
            Flavor::MySql => {
                "SELECT CAST(User AS BINARY) AS u FROM mysql.user \
                 WHERE User LIKE ? ESCAPE '!' AND REGEXP_LIKE(User, ?, 'c') AND CAST(User AS BINARY) > CAST(? AS BINARY) \
                 AND User <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
                 GROUP BY u ORDER BY u LIMIT ?"
            }
        };
        let regex = match sess.flavor {
            Flavor::MariaDb => owned_regex(prefix),
            Flavor::MySql => mysql_owned_regex(prefix),
        };
        let rows = sqlx::query(sql)
            .bind(format!("{}!_%", like_escape(prefix)))
            .bind(regex)
            .bind(after.unwrap_or(""))
            .bind(u64::from(limit))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.fail(&root, e, "listing users"))?;
        conn.release();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let raw: Vec<u8> = r.try_get(0).map_err(|e| PluginError::Permanent(format!("listing users: {e}")))?;
            let name = String::from_utf8(raw).map_err(|_| PluginError::Permanent("listing users: a user name is not UTF-8".into()))?;
            let lease_id = match sess.flavor {
                Flavor::MariaDb => lease_of(&name),
                Flavor::MySql => mysql_lease_of(prefix, &name),
            };
            out.push(VendorObject { lease_id, name });
        }
        Ok(out)
    }
}
