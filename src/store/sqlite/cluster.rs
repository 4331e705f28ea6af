//! [`ClusterStore`] on SQLite: one process per database, so one replica row.

use super::*;

#[async_trait]
impl ClusterStore for SqliteStore {
    async fn try_lock(&self, _name: &str) -> Result<Option<crate::store::StoreLock>, StoreError> {
        // The lock file makes this process the store's only user.
        Ok(Some(crate::store::StoreLock::local()))
    }

    async fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.map(|r| r.try_get::<String, _>("value").map_err(interpret_error)).transpose()
    }

    async fn meta_put_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                vec![Bind::Text(key.into()), Bind::Text(value.into())],
            )
            .await?;
        Ok(n == 1)
    }

    fn replica_id(&self) -> &str {
        &self.id
    }

    async fn heartbeat(&self, r: &crate::store::Replica) -> Result<(), StoreError> {
        self.writer
            .exec(
                // seen_at: the database's clock, as on PostgreSQL.
                format!(
                    "INSERT INTO replicas (id, host, pid, version, policy_version, started_at, seen_at) \
                     VALUES (?, ?, ?, ?, ?, ?, {DB_NOW_MS}) ON CONFLICT (id) DO UPDATE SET \
                     policy_version = excluded.policy_version, seen_at = excluded.seen_at"
                ),
                vec![
                    Bind::Text(self.id.clone()),
                    Bind::Text(r.host.clone()),
                    Bind::Int(r.pid),
                    Bind::Text(r.version.clone()),
                    Bind::Text(r.policy_version.clone()),
                    Bind::Int(r.started_at_ms),
                ],
            )
            .await?;
        Ok(())
    }

    async fn replicas(&self, within: Duration) -> Result<Vec<crate::store::Replica>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id, host, pid, version, policy_version, started_at, seen_at FROM replicas \
             WHERE seen_at >= {DB_NOW_MS} - ? ORDER BY id"
        ))
        .bind(i64::try_from(within.as_millis()).unwrap_or(i64::MAX / 2))
        .fetch_all(&self.read)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(crate::store::rows::replica_from_row).collect()
    }

    async fn remove_replica(&self) -> Result<(), StoreError> {
        self.writer.exec("DELETE FROM replicas WHERE id = ?", vec![Bind::Text(self.id.clone())]).await?;
        Ok(())
    }

    async fn stray_first_seen(&self, connection: &str, object: &str, now_ms: i64) -> Result<i64, StoreError> {
        self.writer
            .exec(
                "INSERT INTO reconcile_strays (connection, object, first_seen_at) VALUES (?, ?, ?) \
                 ON CONFLICT (connection, object) DO NOTHING",
                vec![Bind::Text(connection.into()), Bind::Text(object.into()), Bind::Int(now_ms)],
            )
            .await?;
        sqlx::query_scalar("SELECT first_seen_at FROM reconcile_strays WHERE connection = ? AND object = ?")
            .bind(connection)
            .bind(object)
            .fetch_one(&self.read)
            .await
            .map_err(interpret_error)
    }

    async fn stray_objects(&self, connection: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT object FROM reconcile_strays WHERE connection = ? ORDER BY object LIMIT ?")
            .bind(connection)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)
    }

    async fn stray_forget(&self, connection: &str, objects: &[String]) -> Result<(), StoreError> {
        for o in objects {
            self.writer
                .exec(
                    "DELETE FROM reconcile_strays WHERE connection = ? AND object = ?",
                    vec![Bind::Text(connection.into()), Bind::Text(o.clone())],
                )
                .await?;
        }
        Ok(())
    }
}
