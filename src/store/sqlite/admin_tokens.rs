//! [`AdminTokenStore`] on SQLite: the lookup by hash on the point readers,
//! other reads on the reader pool, writes through the one writer (a create
//! is one all-or-nothing write).

use std::sync::LazyLock;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{fast, interpret_error, to_ms, Bind, SqliteStore, Stmt, StoreError};
use crate::store::admin_tokens::{admin_token_from_row, AdminToken, AdminTokenStore, ADMIN_TOKEN_COLUMNS};

const INSERT: &str =
    "INSERT INTO admin_tokens (name, token_hash, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?)";

fn insert_binds(t: &AdminToken) -> Vec<Bind> {
    vec![
        Bind::Text(t.name.clone()),
        Bind::Text(t.token_hash.clone()),
        Bind::Text(t.created_by.clone()),
        Bind::Int(to_ms(t.created_at)),
        Bind::Int(to_ms(t.expires_at)),
    ]
}

#[async_trait]
impl AdminTokenStore for SqliteStore {
    async fn admin_token_create(&self, t: &AdminToken, now: OffsetDateTime) -> Result<(), StoreError> {
        let clear = Stmt {
            sql: "DELETE FROM admin_tokens WHERE name = ? AND (revoked_at IS NOT NULL OR expires_at <= ?)".into(),
            binds: vec![Bind::Text(t.name.clone()), Bind::Int(to_ms(now))],
            must_affect: false,
        };
        let insert = Stmt { sql: INSERT.into(), binds: insert_binds(t), must_affect: true };
        self.writer.exec_all(vec![clear, insert]).await?;
        Ok(())
    }

    async fn admin_token_put_file(&self, t: &AdminToken) -> Result<(), StoreError> {
        let sql = format!(
            "{INSERT} ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, created_by = excluded.created_by, \
             created_at = excluded.created_at, expires_at = excluded.expires_at, last_used_at = NULL, revoked_at = NULL \
             WHERE admin_tokens.token_hash <> excluded.token_hash"
        );
        self.writer.exec(sql, insert_binds(t)).await?;
        Ok(())
    }

    async fn admin_token_by_hash(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        static BY_HASH: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens WHERE token_hash = ?"));
        self.fast.read(|c| {
            let mut st = c.prepare_cached(&BY_HASH).map_err(fast::read_error)?;
            let mut rows = st.query([hash]).map_err(fast::read_error)?;
            rows.next().map_err(fast::read_error)?.map(crate::store::admin_tokens::admin_token_from).transpose()
        })
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens ORDER BY name"))
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(admin_token_from_row).collect()
    }

    async fn admin_token_revoke(&self, name: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE admin_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                vec![Bind::Int(to_ms(at)), Bind::Text(name.into())],
            )
            .await?;
        Ok(n == 1)
    }

    async fn admin_token_used(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        self.writer
            .exec("UPDATE admin_tokens SET last_used_at = ? WHERE name = ?", vec![Bind::Int(to_ms(at)), Bind::Text(name.into())])
            .await?;
        Ok(())
    }
}
