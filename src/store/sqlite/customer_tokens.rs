//! [`CustomerTokenStore`] on SQLite: reads on the reader pool, writes
//! through the one writer (a rotation and a batch of uses are each one
//! all-or-nothing write).

use std::collections::BTreeMap;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{interpret_error, to_ms, Bind, SqliteStore, Stmt, StoreError};
use crate::store::customer_tokens::{
    counts_from_row, ct_needing_warning_sql, customer_token_from_row, day_of, AccountTokenCounts, CustomerToken,
    CustomerTokenStore, DayCount, TokenUse, TokenWarning, CT_COLUMNS, CT_COUNTS, CT_DAY_UPSERT, CT_ENDED_IDS, CT_INSERT,
    CT_REVOKE, CT_ROTATE_OLD, CT_USED, CT_USES_PRUNE, CT_USE_INSERT,
};

fn insert_stmt(t: &CustomerToken) -> Result<Stmt, StoreError> {
    let scopes = serde_json::to_string(&t.scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Stmt {
        sql: CT_INSERT.into(),
        binds: vec![
            Bind::Text(t.id.clone()),
            Bind::Text(t.token_hash.clone()),
            Bind::Text(t.last4.clone()),
            Bind::Text(t.account.clone()),
            Bind::Text(t.environment.clone()),
            Bind::Text(t.name.clone()),
            Bind::Text(t.owner.clone()),
            Bind::Text(t.owner_email.clone()),
            Bind::Text(scopes),
            Bind::Int(to_ms(t.created_at)),
            Bind::Text(t.created_by.clone()),
            Bind::Int(to_ms(t.expires_at)),
            Bind::OptText(t.replaces.clone()),
        ],
        must_affect: true,
    })
}

#[async_trait]
impl CustomerTokenStore for SqliteStore {
    async fn ct_insert(&self, t: &CustomerToken) -> Result<(), StoreError> {
        self.writer.exec_all(vec![insert_stmt(t)?]).await?;
        Ok(())
    }

    async fn ct_rotate(&self, old_id: &str, new: &CustomerToken, retiring_until: OffsetDateTime) -> Result<bool, StoreError> {
        let old = Stmt {
            sql: CT_ROTATE_OLD.into(),
            binds: vec![
                Bind::Int(to_ms(retiring_until)),
                Bind::Int(to_ms(new.created_at)),
                Bind::Text(new.created_by.clone()),
                Bind::Text(new.id.clone()),
                Bind::Text(old_id.to_owned()),
            ],
            must_affect: true,
        };
        Ok(self.writer.exec_all(vec![old, insert_stmt(new)?]).await? == 1)
    }

    async fn ct_revoke(&self, id: &str, at: OffsetDateTime, by: &str) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(CT_REVOKE, vec![Bind::Int(to_ms(at)), Bind::Text(by.to_owned()), Bind::Text(id.to_owned())])
            .await?;
        Ok(n == 1)
    }

    async fn ct_by_hash(&self, hash: &str) -> Result<Option<CustomerToken>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CT_COLUMNS} FROM customer_tokens WHERE token_hash = ?1"))
            .bind(hash)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(customer_token_from_row).transpose()
    }

    async fn ct_get(&self, id: &str) -> Result<Option<CustomerToken>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CT_COLUMNS} FROM customer_tokens WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(interpret_error)?;
        row.as_ref().map(customer_token_from_row).transpose()
    }

    async fn ct_list(&self, account: &str, limit: u32) -> Result<Vec<CustomerToken>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CT_COLUMNS} FROM customer_tokens WHERE account = ?1 ORDER BY created_at DESC, id LIMIT ?2"
        ))
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(customer_token_from_row).collect()
    }

    async fn ct_mark_warned(&self, id: &str, kind: TokenWarning, at: OffsetDateTime) -> Result<bool, StoreError> {
        let col = match kind {
            TokenWarning::Expiry => "expiry_warned_at",
            TokenWarning::Rotation => "rotation_warned_at",
        };
        let n = self
            .writer
            .exec(
                format!("UPDATE customer_tokens SET {col} = ?1 WHERE id = ?2 AND {col} IS NULL"),
                vec![Bind::Int(to_ms(at)), Bind::Text(id.to_owned())],
            )
            .await?;
        Ok(n == 1)
    }

    async fn ct_needing_warning(
        &self,
        now: OffsetDateTime,
        expiring_before: OffsetDateTime,
        created_before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<CustomerToken>, StoreError> {
        let rows = sqlx::query(&ct_needing_warning_sql())
            .bind(to_ms(now))
            .bind(to_ms(expiring_before))
            .bind(to_ms(created_before))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
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
        let rows = sqlx::query(CT_COUNTS)
            .bind(to_ms(now))
            .bind(to_ms(expiring_before))
            .bind(to_ms(created_before))
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(counts_from_row).collect()
    }

    async fn ct_record_uses(&self, uses: &[TokenUse], keep: u32) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut stmts = Vec::with_capacity(uses.len() * 2 + 8);
        let mut last: BTreeMap<&str, i64> = BTreeMap::new();
        let mut days: BTreeMap<(&str, String), (i64, i64)> = BTreeMap::new();
        for u in uses {
            stmts.push(Stmt {
                sql: CT_USE_INSERT.into(),
                binds: vec![
                    Bind::Text(u.token_id.clone()),
                    Bind::Int(to_ms(u.at)),
                    Bind::Text(u.source.clone()),
                    Bind::Text(u.user_agent.clone()),
                    Bind::Bool(u.ok),
                ],
                must_affect: false,
            });
            let e = last.entry(u.token_id.as_str()).or_insert(i64::MIN);
            *e = (*e).max(to_ms(u.at));
            let d = days.entry((u.token_id.as_str(), day_of(u.at))).or_insert((0, 0));
            if u.ok {
                d.0 = d.0.saturating_add(1);
            } else {
                d.1 = d.1.saturating_add(1);
            }
        }
        for ((id, day), (ok, failed)) in days {
            stmts.push(Stmt {
                sql: CT_DAY_UPSERT.into(),
                binds: vec![Bind::Text(id.to_owned()), Bind::Text(day), Bind::Int(ok), Bind::Int(failed)],
                must_affect: false,
            });
        }
        for (id, at) in last {
            stmts.push(Stmt { sql: CT_USED.into(), binds: vec![Bind::Int(at), Bind::Text(id.to_owned())], must_affect: false });
            stmts.push(Stmt {
                sql: CT_USES_PRUNE.into(),
                binds: vec![Bind::Text(id.to_owned()), Bind::Text(id.to_owned()), Bind::Int(i64::from(keep))],
                must_affect: false,
            });
        }
        self.writer.exec_all(stmts).await?;
        Ok(())
    }

    async fn ct_uses(&self, id: &str, limit: u32) -> Result<Vec<TokenUse>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_id, at, source, user_agent, ok FROM customer_token_uses WHERE token_id = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(interpret_error)?;
        rows.iter().map(crate::store::customer_tokens::use_from_row).collect()
    }

    async fn ct_days(&self, id: &str) -> Result<Vec<DayCount>, StoreError> {
        let rows = sqlx::query("SELECT day, ok, failed FROM customer_token_days WHERE token_id = ?1 ORDER BY day DESC")
            .bind(id)
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        rows.iter().map(crate::store::customer_tokens::day_from_row).collect()
    }

    async fn ct_prune(&self, ended_before: OffsetDateTime, days_before: &str, limit: u32) -> Result<u64, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(CT_ENDED_IDS)
            .bind(to_ms(ended_before))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await
            .map_err(interpret_error)?;
        let mut stmts = vec![Stmt {
            sql: "DELETE FROM customer_token_days WHERE day < ?1".into(),
            binds: vec![Bind::Text(days_before.to_owned())],
            must_affect: false,
        }];
        for id in &ids {
            for table in ["customer_token_uses", "customer_token_days"] {
                stmts.push(Stmt {
                    sql: format!("DELETE FROM {table} WHERE token_id = ?1"),
                    binds: vec![Bind::Text(id.clone())],
                    must_affect: false,
                });
            }
            stmts.push(Stmt {
                sql: "DELETE FROM customer_tokens WHERE id = ?1".into(),
                binds: vec![Bind::Text(id.clone())],
                must_affect: false,
            });
        }
        self.writer.exec_all(stmts).await?;
        Ok(ids.len() as u64)
    }
}
