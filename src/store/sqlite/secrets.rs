//! [`SecretStore`] on SQLite: a switch or rewrap is one all-or-nothing write.

use super::*;

#[async_trait]
impl SecretStore for SqliteStore {
    async fn secret_insert(&self, v: &SecretVersion) -> Result<(), StoreError> {
        self.writer
            .exec(
                "INSERT INTO connection_secrets (connection, version, state, ciphertext, wrapped_dek, kek_id, \
                 fingerprint, set_by, reason, set_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    Bind::Text(v.connection.clone()),
                    Bind::Int(v.version),
                    Bind::Text(v.state.as_str().into()),
                    Bind::Blob(v.ciphertext.clone()),
                    Bind::Blob(v.wrapped_dek.clone()),
                    Bind::Text(v.kek_id.clone()),
                    Bind::Text(v.fingerprint.clone()),
                    Bind::Text(v.set_by.clone()),
                    Bind::Text(v.reason.clone()),
                    Bind::Int(to_ms(v.set_at)),
                ],
            )
            .await?;
        Ok(())
    }

    async fn secret_versions(&self, connection: Option<&str>) -> Result<Vec<SecretVersion>, StoreError> {
        let rows = match connection {
            Some(c) => sqlx::query(&format!(
                "SELECT {SECRET_COLUMNS} FROM connection_secrets WHERE connection = ? ORDER BY connection, version"
            ))
            .bind(c)
            .fetch_all(&self.read)
            .await,
            None => sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM connection_secrets ORDER BY connection, version"))
                .fetch_all(&self.read)
                .await,
        }
        .map_err(interpret_error)?;
        rows.iter().map(secret_from_row).collect()
    }

    async fn secret_active_version(&self, connection: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT version FROM connection_secrets WHERE connection = ? AND state = 'active'")
            .bind(connection)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.map(|r| r.try_get::<i64, _>("version").map_err(interpret_error)).transpose()
    }

    async fn secret_verified(
        &self,
        connection: &str,
        version: i64,
        ok: bool,
        result: &serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE connection_secrets SET verified_ok = ?, verification = ?, verified_at = ? \
                 WHERE connection = ? AND version = ? AND state <> 'retired'",
                vec![
                    Bind::Bool(ok),
                    Bind::Text(to_json(result)?),
                    Bind::Int(to_ms(at)),
                    Bind::Text(connection.into()),
                    Bind::Int(version),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn secret_approve(&self, connection: &str, version: i64, by: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE connection_secrets SET approved_by = ?, approved_at = ? \
                 WHERE connection = ? AND version = ? AND state = 'candidate' AND set_by <> ?",
                vec![
                    Bind::Text(by.into()),
                    Bind::Int(to_ms(at)),
                    Bind::Text(connection.into()),
                    Bind::Int(version),
                    Bind::Text(by.into()),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn secret_switch(&self, s: &SecretSwitch) -> Result<bool, StoreError> {
        let (cond, extra) = switch_condition(s);
        let mut binds = vec![
            Bind::Text(s.by.clone()),
            Bind::Int(to_ms(s.at)),
            Bind::Text(s.connection.clone()),
            Bind::Int(s.version),
            Bind::Text(s.from.as_str().into()),
        ];
        binds.extend(extra.into_iter().map(Bind::Int));
        let n = self
            .writer
            .exec_all(vec![
                Stmt {
                    sql: "UPDATE connection_secrets SET state = 'retiring', retiring_until = ? \
                          WHERE connection = ? AND state = 'active'"
                        .into(),
                    binds: vec![Bind::Int(to_ms(s.retiring_until)), Bind::Text(s.connection.clone())],
                    must_affect: false,
                },
                Stmt {
                    sql: format!(
                        "UPDATE connection_secrets SET state = 'active', activated_by = ?, activated_at = ?, \
                         retiring_until = NULL WHERE connection = ? AND version = ? AND state = ? {cond}"
                    ),
                    binds,
                    must_affect: true,
                },
            ])
            .await?;
        Ok(n == 1)
    }

    async fn secret_retire_due(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.writer
            .exec(
                "UPDATE connection_secrets SET state = 'retired' WHERE state = 'retiring' AND retiring_until <= ?",
                vec![Bind::Int(to_ms(now))],
            )
            .await
    }

    async fn secret_rewrap(&self, rows: &[Rewrap]) -> Result<bool, StoreError> {
        if rows.is_empty() {
            return Ok(true);
        }
        let mut stmts: Vec<Stmt> = rows
            .iter()
            .map(|r| Stmt {
                sql: "UPDATE connection_secrets SET wrapped_dek = ?, kek_id = ? \
                      WHERE connection = ? AND version = ? AND kek_id = ?"
                    .into(),
                binds: vec![
                    Bind::Blob(r.wrapped_dek.clone()),
                    Bind::Text(r.kek_id.clone()),
                    Bind::Text(r.connection.clone()),
                    Bind::Int(r.version),
                    Bind::Text(r.old_kek_id.clone()),
                ],
                must_affect: true,
            })
            .collect();
        if stmts.len() == 1 {
            // exec_all needs two statements to use a savepoint; one is atomic.
            let st = stmts.remove(0);
            return Ok(self.writer.exec(st.sql, st.binds).await? == 1);
        }
        Ok(self.writer.exec_all(stmts).await? == 1)
    }
}
