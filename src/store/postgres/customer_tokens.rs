//! [`CustomerTokenStore`] on PostgreSQL: the shared SQL with `$N`
//! placeholders; a rotation and a batch of uses are each one transaction.
//! Every replica reads the same rows, so a revocation is seen by the next
//! store read of any replica (introspection caches bound the rest, see
//! `customer_tokens`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{interpret_error, to_ms, PgStore, StoreError};
use crate::store::customer_tokens::{
    counts_from_row, ct_needing_warning_sql, customer_token_from_row, day_from_row, day_of, use_from_row,
    AccountTokenCounts, CustomerToken, CustomerTokenStore, DayCount, TokenUse, TokenWarning, CT_COLUMNS, CT_COUNTS,
    CT_DAY_UPSERT, CT_ENDED_IDS, CT_INSERT, CT_REVOKE, CT_ROTATE_OLD, CT_USED, CT_USES_PRUNE, CT_USE_INSERT,
};

/// `?N` -> `$N` (the shared SQL uses numbered SQLite placeholders).
fn pg(sql: &str) -> String {
    sql.replace('?', "$")
}

async fn insert(tx: &mut sqlx::PgConnection, t: &CustomerToken) -> Result<(), StoreError> {
    let scopes = serde_json::to_string(&t.scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(&pg(CT_INSERT))
        .bind(&t.id)
        .bind(&t.token_hash)
        .bind(&t.last4)
        .bind(&t.account)
        .bind(&t.environment)
        .bind(&t.name)
        .bind(&t.owner)
        .bind(&t.owner_email)
        .bind(scopes)
        .bind(to_ms(t.created_at))
        .bind(&t.created_by)
        .bind(to_ms(t.expires_at))
        .bind(&t.replaces)
        .execute(tx)
        .await
        .map_err(interpret_error)?;
    Ok(())
}

#[async_trait]
impl CustomerTokenStore for PgStore {
    async fn ct_insert(&self, t: &CustomerToken) -> Result<(), StoreError> {
        let mut c = self.pool.acquire().await.map_err(interpret_error)?;
        insert(&mut c, t).await
    }

    async fn ct_rotate(&self, old_id: &str, new: &CustomerToken, retiring_until: OffsetDateTime) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        let n = sqlx::query(&pg(CT_ROTATE_OLD))
            .bind(to_ms(retiring_until))
            .bind(to_ms(new.created_at))
            .bind(&new.created_by)
            .bind(&new.id)
            .bind(old_id)
            .execute(&mut *tx)
            .await
            .map_err(interpret_error)?
            .rows_affected();
        if n != 1 {
            tx.rollback().await.map_err(interpret_error)?;
            return Ok(false);
        }
        insert(&mut tx, new).await?;
        tx.commit().await.map_err(interpret_error)?;
        Ok(true)
    }

    async fn ct_revoke(&self, id: &str, at: OffsetDateTime, by: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(&pg(CT_REVOKE))
            .bind(to_ms(at))
            .bind(by)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn ct_by_hash(&self, hash: &str) -> Result<Option<CustomerToken>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CT_COLUMNS} FROM customer_tokens WHERE token_hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(customer_token_from_row).transpose()
    }

    async fn ct_get(&self, id: &str) -> Result<Option<CustomerToken>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CT_COLUMNS} FROM customer_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(customer_token_from_row).transpose()
    }

    async fn ct_list(&self, account: &str, limit: u32) -> Result<Vec<CustomerToken>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CT_COLUMNS} FROM customer_tokens WHERE account = $1 ORDER BY created_at DESC, id LIMIT $2"
        ))
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(customer_token_from_row).collect()
    }

    async fn ct_mark_warned(&self, id: &str, kind: TokenWarning, at: OffsetDateTime) -> Result<bool, StoreError> {
        let col = match kind {
            TokenWarning::Expiry => "expiry_warned_at",
            TokenWarning::Rotation => "rotation_warned_at",
        };
        let n = sqlx::query(&format!("UPDATE customer_tokens SET {col} = $1 WHERE id = $2 AND {col} IS NULL"))
            .bind(to_ms(at))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(interpret_error)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn ct_needing_warning(
        &self,
        now: OffsetDateTime,
        expiring_before: OffsetDateTime,
        created_before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<CustomerToken>, StoreError> {
        let rows = sqlx::query(&pg(&ct_needing_warning_sql()))
            .bind(to_ms(now))
            .bind(to_ms(expiring_before))
            .bind(to_ms(created_before))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(customer_token_from_row).collect()
    }

    async fn ct_counts(
        &self,
        now: OffsetDateTime,
        expiring_before: OffsetDateTime,
        created_before: OffsetDateTime,
    ) -> Result<Vec<AccountTokenCounts>, StoreError> {
        let rows = sqlx::query(&pg(CT_COUNTS))
            .bind(to_ms(now))
            .bind(to_ms(expiring_before))
            .bind(to_ms(created_before))
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(counts_from_row).collect()
    }

    async fn ct_record_uses(&self, uses: &[TokenUse], keep: u32) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        let mut last: BTreeMap<&str, i64> = BTreeMap::new();
        let mut days: BTreeMap<(&str, String), (i64, i64)> = BTreeMap::new();
        let insert_sql = pg(CT_USE_INSERT);
        for u in uses {
            sqlx::query(&insert_sql)
                .bind(&u.token_id)
                .bind(to_ms(u.at))
                .bind(&u.source)
                .bind(&u.user_agent)
                .bind(u.ok)
                .execute(&mut *tx)
                .await
                .map_err(interpret_error)?;
            let e = last.entry(u.token_id.as_str()).or_insert(i64::MIN);
            *e = (*e).max(to_ms(u.at));
            let d = days.entry((u.token_id.as_str(), day_of(u.at))).or_insert((0, 0));
            if u.ok {
                d.0 = d.0.saturating_add(1);
            } else {
                d.1 = d.1.saturating_add(1);
            }
        }
        let day_sql = pg(CT_DAY_UPSERT);
        for ((id, day), (ok, failed)) in days {
            sqlx::query(&day_sql)
                .bind(id)
                .bind(day)
                .bind(ok)
                .bind(failed)
                .execute(&mut *tx)
                .await
                .map_err(interpret_error)?;
        }
        let (used_sql, prune_sql) = (pg(CT_USED), pg(CT_USES_PRUNE));
        for (id, at) in last {
            sqlx::query(&used_sql).bind(at).bind(id).execute(&mut *tx).await.map_err(interpret_error)?;
            sqlx::query(&prune_sql)
                .bind(id)
                .bind(id)
                .bind(i64::from(keep))
                .execute(&mut *tx)
                .await
                .map_err(interpret_error)?;
        }
        tx.commit().await.map_err(interpret_error)
    }

    async fn ct_uses(&self, id: &str, limit: u32) -> Result<Vec<TokenUse>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_id, at, source, user_agent, ok FROM customer_token_uses WHERE token_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(use_from_row).collect()
    }

    async fn ct_days(&self, id: &str) -> Result<Vec<DayCount>, StoreError> {
        let rows = sqlx::query("SELECT day, ok, failed FROM customer_token_days WHERE token_id = $1 ORDER BY day DESC")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(day_from_row).collect()
    }

    async fn ct_prune(&self, ended_before: OffsetDateTime, days_before: &str, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(interpret_error)?;
        let ids: Vec<String> = sqlx::query_scalar(&pg(CT_ENDED_IDS))
            .bind(to_ms(ended_before))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(interpret_error)?;
        sqlx::query("DELETE FROM customer_token_days WHERE day < $1")
            .bind(days_before)
            .execute(&mut *tx)
            .await
            .map_err(interpret_error)?;
        for table in ["customer_token_uses", "customer_token_days"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE token_id = ANY($1)"))
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(interpret_error)?;
        }
        sqlx::query("DELETE FROM customer_tokens WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(interpret_error)?;
        tx.commit().await.map_err(interpret_error)?;
        Ok(ids.len() as u64)
    }
}
