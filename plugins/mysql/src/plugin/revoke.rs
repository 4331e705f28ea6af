//! Revoking and listing: a lease's accounts found by name, each locked,
//! its sessions killed and dropped; lessor's accounts listed for the
//! reconciler (MariaDB). Must not import: the core (`lessor`).

use super::*;
use lessor_plugin_sql::naming::{lease_of, owned_regex};

/// The accounts of a lease: the handle's account when the handle belongs
/// to the lease and the account exists (a lookup by key: on MariaDB
/// `mysql.user` is a view that decodes every row it reads, so a pattern
/// costs the server a pass over all its accounts); otherwise every user with
/// the connection's prefix and the lease's suffix (a lease left pending has
/// no handle, and a revocation retried after the drop finds nothing by it).
pub(super) async fn find_accounts(
    conn: &mut MySqlConnection,
    hint: Option<(&str, &str)>,
    pattern: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    if let Some((user, host)) = hint {
        let rows = sqlx::query("SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user WHERE User = ? AND Host = ?")
            .bind(user)
            .bind(host)
            .fetch_all(&mut *conn)
            .await?;
        if !rows.is_empty() {
            return rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect();
        }
    }
    let rows = sqlx::query(
        "SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user WHERE User LIKE ? ESCAPE '!' ORDER BY User, Host",
    )
    .bind(pattern)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Ends every session of `user` but this one. A session that ended by
/// itself meanwhile is fine.
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
    pub(super) async fn drop_accounts(&self, root: &Root, conn: &mut MySqlConnection, lease: &LeaseRef) -> Result<(usize, usize), PluginError> {
        let Some(hex) = lease_hex(&lease.lease_id) else {
            // Such an id never named an account.
            return Ok((0, 0));
        };
        let prefix = &self.config.user_prefix;
        let suffix = lease_suffix(prefix, &hex);
        let pattern = format!("{}!_%{}", like_escape(prefix), like_escape(&suffix));
        let hint = lease.handle.as_ref().and_then(|h| Some((h.get("user")?.as_str()?, h.get("host")?.as_str()?)));
        let hint = hint.filter(|(u, _)| u.starts_with(&format!("{prefix}_")) && u.ends_with(&suffix));
        let sess = session(root, conn).await.map_err(|e| self.fail(root, e, "reading the session's sql_mode"))?;
        let accounts = find_accounts(conn, hint, &pattern).await.map_err(|e| self.fail(root, e, "finding the lease's accounts"))?;
        let mut killed = 0;
        for (user, host) in &accounts {
            let acct = account(user, host, sess.backslash).map_err(|e| PluginError::Permanent(e.to_string()))?;
            // Locked first: no new session can start while the others end.
            match exec(conn, &format!("ALTER USER {acct} ACCOUNT LOCK")).await {
                Ok(()) => {}
                Err(e) if db_number(&e) == Some(er::CANNOT_USER) => continue,
                Err(e) => return Err(self.fail(root, e, &format!("locking account {acct}"))),
            }
            killed += kill_sessions(conn, user).await.map_err(|e| self.fail(root, e, &format!("ending the sessions of {acct}")))?;
            exec(conn, &format!("DROP USER IF EXISTS {acct}"))
                .await
                .map_err(|e| self.fail(root, e, &format!("dropping account {acct}")))?;
            // A session that logged in just before the lock.
            killed += kill_sessions(conn, user).await.map_err(|e| self.fail(root, e, &format!("ending the sessions of {acct}")))?;
        }
        Ok((accounts.len(), killed))
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %lease.role, lease_id = %lease.lease_id))]
    pub(super) async fn revoke_accounts(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let (root, mut conn) = self.lease_conn(lease).await?;
        let (dropped, killed) = self.drop_accounts(&root, &mut conn, lease).await?;
        if dropped > 0 {
            tracing::debug!(accounts = dropped, sessions_ended = killed, "lease accounts dropped");
        }
        Ok(())
    }

    /// MariaDB users named like this connection's leases
    /// (`<prefix>_<readable>_<32 hex>`, see [`owned_regex`]), read from
    /// `mysql.user` with the active root credential, one name per user
    /// (whatever its hosts), in byte order. Never the admin's own user, never
    /// a server role. MySQL 8's 32-character names hold only part of the
    /// lease id, so there the listing is `Unsupported`.
    #[instrument(skip_all, fields(connection = %self.connection))]
    pub(super) async fn list_accounts(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        let root = self.active_root()?;
        let mut conn = self.acquire(&root).await?;
        let sess = session(&root, &mut conn).await.map_err(|e| self.fail(&root, e, "reading the session's sql_mode"))?;
        if sess.flavor == Flavor::MySql {
            return Err(PluginError::Unsupported(
                "listing accounts on MySQL 8: its user names (at most 32 characters) hold only part of the lease id".into(),
            ));
        }
        let prefix = &self.config.user_prefix;
        let rows = sqlx::query(
            "SELECT CAST(User AS BINARY) AS u FROM mysql.user \
             WHERE User LIKE ? ESCAPE '!' AND CAST(User AS BINARY) REGEXP ? AND CAST(User AS BINARY) > CAST(? AS BINARY) \
             AND is_role <> 'Y' AND User <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
             GROUP BY u ORDER BY u LIMIT ?",
        )
        .bind(format!("{}!_%", like_escape(prefix)))
        .bind(owned_regex(prefix))
        .bind(after.unwrap_or(""))
        .bind(u64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail(&root, e, "listing users"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let raw: Vec<u8> = r.try_get(0).map_err(|e| PluginError::Permanent(format!("listing users: {e}")))?;
            let name = String::from_utf8(raw).map_err(|_| PluginError::Permanent("listing users: a user name is not UTF-8".into()))?;
            out.push(VendorObject { lease_id: lease_of(&name), name });
        }
        Ok(out)
    }
}
