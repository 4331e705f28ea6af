//! [`AdminTokenStore`] on PostgreSQL: every replica reads the same rows, so
//! a revoked token is refused by all of them from the next request on.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{interpret_error, to_ms, PgStore, StoreError};
use crate::store::admin_tokens::{admin_token_from_row, AdminToken, AdminTokenStore, ADMIN_TOKEN_COLUMNS};

const INSERT: &str =
    "INSERT INTO admin_tokens (name, token_hash, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";

fn insert<'q>(sql: &'q str, t: &AdminToken) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(t.name.clone())
        .bind(t.token_hash.clone())
        .bind(t.created_by.clone())
        .bind(to_ms(t.created_at))
        .bind(to_ms(t.expires_at))
}

#[async_trait]
impl AdminTokenStore for PgStore {
    async fn admin_token_create(&self, t: &AdminToken, now: OffsetDateTime) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        sqlx::query("DELETE FROM admin_tokens WHERE name = $1 AND (revoked_at IS NOT NULL OR expires_at <= $2)")
            .bind(&t.name)
            .bind(to_ms(now))
            .execute(&mut *tx)
            .await
            .map_err(interpret_error)?;
        insert(INSERT, t).execute(&mut *tx).await.map_err(interpret_error)?;
        tx.commit().await.map_err(interpret_error)
    }

    async fn admin_token_put_file(&self, t: &AdminToken) -> Result<(), StoreError> {
        let sql = format!(
            "{INSERT} ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, created_by = excluded.created_by, \
             created_at = excluded.created_at, expires_at = excluded.expires_at, last_used_at = NULL, revoked_at = NULL \
             WHERE admin_tokens.token_hash <> excluded.token_hash"
        );
        insert(&sql, t).execute(&self.pool).await.map_err(interpret_error)?;
        Ok(())
    }

    async fn admin_token_by_hash(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens WHERE token_hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(admin_token_from_row).transpose()
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(admin_token_from_row).collect()
    }

    async fn admin_token_revoke(&self, name: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE admin_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(to_ms(at))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn admin_token_used(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE admin_tokens SET last_used_at = $1 WHERE name = $2")
            .bind(to_ms(at))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?;
        Ok(())
    }
}
