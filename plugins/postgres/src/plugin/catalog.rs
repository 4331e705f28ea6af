//! Role names and PostgreSQL's catalogs: names made from lease ids (and
//! the `LIKE` patterns and expiry format that go with them), who the admin
//! is, finding a lease's roles, their sessions, owned objects and
//! `VALID UNTIL`, and listing lessor's roles for the reconciler. Must not
//! import: the core (`lessor`).

use super::*;
pub(super) use lessor_plugin_sql::naming::{lease_of, owned_regex};

/// `<prefix>_<readable>_<hex>`, at most 63 bytes, the `_<hex>` suffix always
/// whole. `<readable>` comes from the role and the workload (the part after
/// the last `/` of attribute `repository`, else of the subject).
pub fn role_name(prefix: &str, role: &str, workload: &Workload, hex: &str) -> String {
    lessor_plugin_sql::naming::readable_name(MAX_NAME_BYTES, prefix, role, workload, hex)
}

/// `LIKE` pattern matching every role name this connection could have made
/// for a lease.
pub(super) fn lease_pattern(prefix: &str, hex: &str) -> String {
    format!("{}\\_%\\_{}", like_escape(prefix), like_escape(hex))
}

/// The expiry as PostgreSQL stores it: UTC, microseconds (rounded down, so
/// the password never outlives the lease).
pub(super) fn pg_expiry(t: OffsetDateTime) -> (OffsetDateTime, String) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let micros = t.nanosecond() / 1000 * 1000;
    let t = t.replace_nanosecond(micros).unwrap_or(t);
    (t, rfc3339(t))
}

pub(super) async fn whoami(conn: &mut PgConnection) -> Result<Admin, sqlx::Error> {
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
pub(super) async fn find_roles(
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

pub(super) async fn role_exists(conn: &mut PgConnection, oid: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("SELECT 1 FROM pg_roles WHERE oid::int8 = $1")
        .bind(oid)
        .fetch_optional(conn)
        .await?
        .is_some())
}

pub(super) async fn terminate_sessions(conn: &mut PgConnection, oid: i64) -> Result<i64, sqlx::Error> {
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
pub(super) async fn valid_until_ok(
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
pub(super) async fn owned_objects(conn: &mut PgConnection, oid: i64) -> Result<(i64, Option<String>), sqlx::Error> {
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
    /// Roles named like this connection's leases (`<prefix>_<readable>_<32
    /// hex>`, see [`owned_regex`]), read from `pg_roles` with the active
    /// root credential. Superusers are never listed: lessor never makes
    /// one, and must not be the one to drop one.
    #[instrument(skip_all, fields(connection = %self.connection))]
    pub(super) async fn list_roles(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        let root = self.active_root()?;
        let db = root.target.database.as_str();
        let mut conn = self.acquire(&root, db).await?;
        let rows = sqlx::query(
            "SELECT rolname::text FROM pg_roles \
             WHERE rolname LIKE $1 AND rolname ~ $2 AND rolname::text COLLATE \"C\" > $3 AND NOT rolsuper AND rolname <> current_user \
             ORDER BY rolname::text COLLATE \"C\" LIMIT $4",
        )
        .bind(format!("{}\\_%", like_escape(&self.config.role_prefix)))
        .bind(owned_regex(&self.config.role_prefix))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => return Err(self.fail(&root, e, db, "listing roles").await),
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r
                .try_get(0)
                .map_err(|e| PluginError::Permanent(format!("listing roles: {e}")))?;
            out.push(VendorObject { lease_id: lease_of(&name), name });
        }
        Ok(out)
    }
}
