//! [`PluginStateStore`] on PostgreSQL.

use super::*;

#[async_trait]
impl PluginStateStore for PgStore {
    async fn state_get(&self, conn: &str, key: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        let row = sqlx::query("SELECT value, sealed FROM plugin_state WHERE connection = $1 AND key = $2")
            .bind(conn)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.map(|r| {
            Ok((
                r.try_get::<Vec<u8>, _>("value").map_err(interpret_error)?,
                r.try_get::<bool, _>("sealed").map_err(interpret_error)?,
            ))
        })
        .transpose()
    }

    async fn state_put(&self, conn: &str, key: &str, value: &[u8], sealed: bool, at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (connection, key) DO UPDATE SET value = excluded.value, sealed = excluded.sealed, \
             updated_at = excluded.updated_at",
        )
        .bind(conn)
        .bind(key)
        .bind(value)
        .bind(sealed)
        .bind(to_ms(at))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?;
        Ok(())
    }

    async fn state_put_if_absent(&self, conn: &str, key: &str, value: &[u8], sealed: bool, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (connection, key) DO NOTHING",
        )
        .bind(conn)
        .bind(key)
        .bind(value)
        .bind(sealed)
        .bind(to_ms(at))
        .execute(&self.pool)
        .await
        .map_err(interpret_error)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn state_list(&self, conn: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Range scan: prefix <= key < prefix + U+FFFF, compared byte-wise
        // (COLLATE "C") like SQLite's BINARY collation, whatever the
        // database's default collation orders by.
        let upper = format!("{prefix}\u{ffff}");
        let rows = sqlx::query(
            "SELECT key, value FROM plugin_state WHERE connection = $1 \
             AND key COLLATE \"C\" >= $2 AND key COLLATE \"C\" < $3 \
             AND sealed = FALSE ORDER BY key COLLATE \"C\"",
        )
        .bind(conn)
        .bind(prefix)
        .bind(upper)
        .fetch_all(&self.pool)
        .await
        .map_err(interpret_error)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("key").map_err(interpret_error)?,
                    r.try_get::<Vec<u8>, _>("value").map_err(interpret_error)?,
                ))
            })
            .collect()
    }

    async fn state_delete(&self, conn: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM plugin_state WHERE connection = $1 AND key = $2")
            .bind(conn)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?;
        Ok(())
    }
}
