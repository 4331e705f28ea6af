//! [`PluginStateStore`] on SQLite.

use super::*;

#[async_trait]
impl PluginStateStore for SqliteStore {
    async fn state_get(&self, conn: &str, key: &str) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        let row = sqlx::query("SELECT value, sealed FROM plugin_state WHERE connection = ? AND key = ?")
            .bind(conn)
            .bind(key)
            .fetch_optional(&self.read)
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
        self.writer
            .exec(
                "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (connection, key) DO UPDATE SET value = excluded.value, sealed = excluded.sealed, \
                 updated_at = excluded.updated_at",
                vec![
                    Bind::Text(conn.into()),
                    Bind::Text(key.into()),
                    Bind::Blob(value.to_vec()),
                    Bind::Bool(sealed),
                    Bind::Int(to_ms(at)),
                ],
            )
            .await?;
        Ok(())
    }

    async fn state_put_if_absent(&self, conn: &str, key: &str, value: &[u8], sealed: bool, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "INSERT INTO plugin_state (connection, key, value, sealed, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (connection, key) DO NOTHING",
                vec![
                    Bind::Text(conn.into()),
                    Bind::Text(key.into()),
                    Bind::Blob(value.to_vec()),
                    Bind::Bool(sealed),
                    Bind::Int(to_ms(at)),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn state_list(&self, conn: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Range scan on the primary key: prefix <= key < prefix + U+FFFF.
        let upper = format!("{prefix}\u{ffff}");
        let rows = sqlx::query(
            "SELECT key, value FROM plugin_state WHERE connection = ? AND key >= ? AND key < ? \
             AND sealed = 0 ORDER BY key",
        )
        .bind(conn)
        .bind(prefix)
        .bind(upper)
        .fetch_all(&self.read)
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
        self.writer
            .exec(
                "DELETE FROM plugin_state WHERE connection = ? AND key = ?",
                vec![Bind::Text(conn.into()), Bind::Text(key.into())],
            )
            .await?;
        Ok(())
    }
}
