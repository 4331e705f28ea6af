//! [`LeaseStore`] on SQLite: a lease by id and the quota counts on the
//! point readers, other reads on the reader pool, writes through the one
//! writer (each write one statement, or all-or-nothing).

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use super::*;

/// Every role with a lease row, in order: a skip scan of `leases_role`
/// (one index probe per role, however many leases each has).
const ROLES_SQL: &str = "WITH RECURSIVE r(role) AS (
    SELECT MIN(role) FROM leases
    UNION ALL
    SELECT (SELECT MIN(role) FROM leases WHERE role > r.role) FROM r WHERE r.role IS NOT NULL
  ) SELECT role FROM r WHERE role IS NOT NULL";

/// One role's due leases, at most `?3` of each kind, each row with the time
/// it fell due (`?1` now, `?2` the pending cutoff, `?3` the limit per
/// connection, `?4` the ids set aside, `?5` the role). Four branches, each
/// an ordered search of a role-led index that stops at its limit:
/// expired and scheduled (`leases_role`, `leases_role_retry`), orphaned
/// pending, failed and due for a retry. Reading a role's first `limit`
/// costs the same with ten due leases or a million (migration 0016).
///
/// A pending lease is orphaned when issued before `pending_cutoff` (`?2`,
/// an instant on the caller's clock: also the process start) and older
/// than `now - pending_cutoff` by the database's clock, as on PostgreSQL:
/// whichever clock is behind decides.
fn due_role_sql() -> &'static str {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
        "SELECT * FROM (SELECT {LEASE_COLUMNS}, expires_at AS due_at FROM leases
           WHERE role = ?5 AND state = 'active' AND expires_at <= ?1 AND {NOT_SET_ASIDE} ORDER BY expires_at LIMIT ?3)
         UNION ALL
         SELECT * FROM (SELECT {LEASE_COLUMNS}, next_attempt_at AS due_at FROM leases
           WHERE role = ?5 AND state = 'active' AND next_attempt_at <= ?1 AND {NOT_SET_ASIDE} ORDER BY next_attempt_at LIMIT ?3)
         UNION ALL
         SELECT * FROM (SELECT {LEASE_COLUMNS}, issued_at AS due_at FROM leases
           WHERE role = ?5 AND state = 'pending' AND issued_at < MIN(?2, {DB_NOW_MS} - (?1 - ?2)) AND {NOT_SET_ASIDE}
           ORDER BY issued_at LIMIT ?3)
         UNION ALL
         SELECT * FROM (SELECT {LEASE_COLUMNS}, next_attempt_at AS due_at FROM leases
           WHERE role = ?5 AND state = 'revoke_failed' AND next_attempt_at <= ?1 AND {NOT_SET_ASIDE}
           ORDER BY next_attempt_at LIMIT ?3)"
        )
    });
    &SQL
}

/// Due work handed out fairly: each connection's `limit` earliest (a lease
/// in two branches counts from the earlier), then round-robin across
/// connections, by (turn, due time, id).
fn round_robin(found: Vec<(i64, DueLease)>, limit: u32) -> Vec<DueLease> {
    let mut by_conn: BTreeMap<String, Vec<(i64, DueLease)>> = BTreeMap::new();
    for (due_at, d) in found {
        by_conn.entry(crate::store::connection_of(&d.lease.role).to_owned()).or_default().push((due_at, d));
    }
    let mut picked: Vec<(usize, i64, DueLease)> = Vec::new();
    for (_, mut work) in by_conn {
        work.sort_by(|a, b| (a.0, a.1.lease.id.as_str()).cmp(&(b.0, b.1.lease.id.as_str())));
        // Sorted by due time: the first of a duplicated id is the earlier.
        let mut seen = HashSet::new();
        work.retain(|(_, d)| seen.insert(d.lease.id.to_string()));
        for (turn, (due_at, d)) in work.into_iter().take(limit as usize).enumerate() {
            picked.push((turn, due_at, d));
        }
    }
    picked.sort_by(|a, b| (a.0, a.1, a.2.lease.id.as_str()).cmp(&(b.0, b.1, b.2.lease.id.as_str())));
    picked.into_iter().map(|(_, _, d)| d).collect()
}

/// The earliest time anything falls due (`?1`: the ids set aside). Each
/// branch reads one index: `leases_due`, and `leases_retry`, which holds
/// only rows with a `next_attempt_at` (hence the `IS NOT NULL`).
fn next_due_sql() -> String {
    format!(
        "SELECT MIN(t) AS t FROM (
           SELECT MIN(expires_at) AS t FROM leases WHERE state = 'active' AND {NOT_SET_ASIDE}
           UNION ALL SELECT MIN(next_attempt_at) FROM leases
             WHERE state IN ('active', 'revoke_failed') AND next_attempt_at IS NOT NULL AND {NOT_SET_ASIDE})",
        NOT_SET_ASIDE = NOT_SET_ASIDE.replace("?4", "?1")
    )
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn insert_pending(&self, l: &Lease) -> Result<crate::store::OnDisk, StoreError> {
        self.insert_pending_within(l, Duration::ZERO).await
    }

    async fn insert_pending_within(&self, l: &Lease, within: Duration) -> Result<crate::store::OnDisk, StoreError> {
        self.writer
            .exec_pending(
                "INSERT INTO leases (id, role, plugin, issuer, subject, claims, scopes, policies, state, \
                 issued_at, expires_at, max_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                vec![
                    Bind::Text(l.id.to_string()),
                    Bind::Text(l.role.clone()),
                    Bind::Text(l.plugin.clone()),
                    Bind::Text(l.issuer.clone()),
                    Bind::Text(l.subject.clone()),
                    Bind::Text(to_json(&l.claims)?),
                    Bind::Text(to_json(&l.scopes)?),
                    Bind::Text(to_json(&l.policies)?),
                    Bind::Int(to_ms(l.issued_at)),
                    Bind::Int(to_ms(l.expires_at)),
                    Bind::Int(to_ms(l.max_expires_at)),
                ],
                within,
            )
            .await
    }

    async fn activate_at_version(
        &self,
        id: &LeaseId,
        handle: &Handle,
        expires_at: OffsetDateTime,
        root_version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec_committed(
                "UPDATE leases SET state = 'active', handle = ?, expires_at = ?, root_version = ? \
                 WHERE id = ? AND state = 'pending' AND end_reason IS NOT 'orphaned'",
                vec![
                    Bind::Text(to_json(handle)?),
                    Bind::Int(to_ms(expires_at)),
                    Bind::OptInt(root_version),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<Lease>, StoreError> {
        static BY_ID: LazyLock<String> = LazyLock::new(|| format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?"));
        self.fast.read(|c| {
            let mut st = c.prepare_cached(&BY_ID).map_err(fast::read_error)?;
            let mut rows = st.query([id.as_str()]).map_err(fast::read_error)?;
            rows.next().map_err(fast::read_error)?.map(crate::store::rows::lease_from).transpose()
        })
    }

    async fn list(&self, f: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {LEASE_COLUMNS} FROM leases WHERE 1 = 1"));
        push_filter(&mut qb, f);
        qb.push(" ORDER BY issued_at DESC LIMIT ").push_bind(f.limit.max(1) as i64);
        let rows = qb.build().fetch_all(&self.read).await.map_err(interpret_error)?;
        rows.iter().map(lease_from_row).collect()
    }

    async fn renew(&self, id: &LeaseId, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE leases SET expires_at = ? WHERE id = ? AND state = 'active' AND end_reason IS NULL AND expires_at > ?",
                vec![Bind::Int(to_ms(expires_at)), Bind::Text(id.to_string()), Bind::Int(to_ms(now))],
            )
            .await?;
        Ok(n == 1)
    }

    async fn finish(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                format!(
                    "UPDATE leases SET state = ?, end_reason = ?, ended_at = ?, next_attempt_at = NULL \
                     WHERE id = ? AND state IN {LIVE}"
                ),
                vec![
                    Bind::Text(reason.final_state().as_str().into()),
                    Bind::Text(reason.as_str().into()),
                    Bind::Int(to_ms(at)),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn record_failure(
        &self,
        id: &LeaseId,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.writer
            .exec(
                format!(
                    "UPDATE leases SET state = 'revoke_failed', end_reason = ?, attempts = attempts + 1, \
                     last_error = ?, next_attempt_at = ? WHERE id = ? AND state IN {LIVE}"
                ),
                vec![
                    Bind::Text(reason.as_str().into()),
                    Bind::Text(error.to_owned()),
                    Bind::Int(to_ms(retry_at)),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn mark_orphaned(&self, id: &LeaseId) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                "UPDATE leases SET end_reason = 'orphaned' WHERE id = ? AND state = 'pending'",
                vec![Bind::Text(id.to_string())],
            )
            .await?;
        Ok(n == 1)
    }

    async fn finish_unrevocable(&self, id: &LeaseId, reason: EndReason, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self
            .writer
            .exec(
                format!(
                    "UPDATE leases SET state = 'expired', end_reason = ?, ended_at = ?, next_attempt_at = NULL \
                     WHERE id = ? AND state IN {LIVE}"
                ),
                vec![Bind::Text(reason.as_str().into()), Bind::Int(to_ms(at)), Bind::Text(id.to_string())],
            )
            .await?;
        Ok(n == 1)
    }

    async fn record_late_failure(
        &self,
        id: &LeaseId,
        handle: &Handle,
        reason: EndReason,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.writer
            .exec(
                "UPDATE leases SET state = 'revoke_failed', handle = ?, end_reason = ?, ended_at = NULL, \
                 attempts = attempts + 1, last_error = ?, next_attempt_at = ? \
                 WHERE id = ? AND state IN ('revoked', 'expired', 'revoke_failed')",
                vec![
                    Bind::Text(to_json(handle)?),
                    Bind::Text(reason.as_str().into()),
                    Bind::Text(error.to_owned()),
                    Bind::Int(to_ms(retry_at)),
                    Bind::Text(id.to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn prune_ended(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        // One bounded statement per call through the writer (no long hold of
        // the one write connection); the `leases_ended` index finds the rows.
        let n = self
            .writer
            .exec(
                "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE ended_at < ? \
                 AND state IN ('revoked', 'expired') LIMIT ?)",
                vec![Bind::Int(to_ms(before)), Bind::Int(i64::from(limit))],
            )
            .await?;
        if n < u64::from(limit) {
            self.writer
                .exec(
                    "DELETE FROM jobs WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM leases WHERE job_id = jobs.id)",
                    vec![Bind::Int(to_ms(before))],
                )
                .await?;
        }
        Ok(n)
    }

    async fn schedule_revocation(&self, f: &LeaseFilter, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut sql = String::from("UPDATE leases SET end_reason = 'revoked', next_attempt_at = ? WHERE state = 'active'");
        let mut binds = vec![Bind::Int(to_ms(now))];
        for (col, v) in [("role", &f.role), ("issuer", &f.issuer), ("subject", &f.subject)] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                binds.push(Bind::Text(v.clone()));
            }
        }
        self.writer.exec(sql, binds).await
    }

    async fn due_except(
        &self,
        now: OffsetDateTime,
        pending_cutoff: OffsetDateTime,
        limit: u32,
        skip: &[String],
    ) -> Result<Vec<DueLease>, StoreError> {
        // Role by role (a handful), each read bounded by `limit`: the cost
        // of a round does not grow with the backlog. Roles of the connections
        // to leave out are not read at all.
        let roles: Vec<String> = sqlx::query_scalar(ROLES_SQL).fetch_all(&self.read).await.map_err(interpret_error)?;
        let set_aside = to_json(&self.quarantine.ids())?;
        let mut found = Vec::new();
        for role in roles {
            if skip.iter().any(|c| c == crate::store::connection_of(&role)) {
                continue;
            }
            let rows = sqlx::query(due_role_sql())
                .bind(to_ms(now))
                .bind(to_ms(pending_cutoff))
                .bind(limit as i64)
                .bind(&set_aside)
                .bind(&role)
                .fetch_all(&self.read)
                .await
                .map_err(interpret_error)?;
            for row in &rows {
                let due_at: i64 = row.try_get("due_at").map_err(interpret_error)?;
                // One row at a time, so each decoded lease keeps its due time;
                // a row that cannot be decoded is set aside.
                found.extend(self.quarantine.decode_due(std::slice::from_ref(row), "sqlite").0.into_iter().map(|d| (due_at, d)));
            }
        }
        Ok(round_robin(found, limit))
    }

    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        // Rows set aside are no work: counting them would wake the worker
        // in a loop for a lease it never gets.
        let row = sqlx::query(&next_due_sql())
        .bind(to_json(&self.quarantine.ids())?)
        .fetch_one(&self.read)
        .await
        .map_err(interpret_error)?;
        let t: Option<i64> = row.try_get("t").map_err(interpret_error)?;
        t.map(from_ms).transpose()
    }

    async fn counts(&self) -> Result<LeaseCounts, StoreError> {
        // The writer's counts (`counts.rs`), not the leases.
        self.live_counts()?.by_state()
    }

    async fn expiring(&self, before: OffsetDateTime) -> Result<RoleCounts, StoreError> {
        Ok(self.live_counts()?.expiring(crate::store::expiry_minute(before)))
    }

    async fn max_live_per_owner(&self) -> Result<i64, StoreError> {
        Ok(self.live_counts()?.max_per_owner())
    }

    async fn count_live(&self, f: &LeaseFilter) -> Result<i64, StoreError> {
        // Role-only, owner-only and unfiltered counts come from the writer's
        // counts (what the quotas ask on every issue); anything else counts rows.
        match (&f.role, &f.issuer, &f.subject) {
            (None, None, None) => return Ok(self.live_counts()?.total()),
            (Some(role), None, None) => return Ok(self.live_counts()?.role(role)),
            (None, Some(issuer), Some(subject)) => return Ok(self.live_counts()?.owner(issuer, subject)),
            _ => {}
        }
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT COUNT(*) FROM leases WHERE state IN {LIVE}"));
        push_filter(&mut qb, &LeaseFilter { state: None, ..f.clone() });
        let row = qb.build().fetch_one(&self.read).await.map_err(interpret_error)?;
        row.try_get::<i64, _>(0).map_err(interpret_error)
    }

    async fn quota_counts(&self, issuer: &str, subject: &str, role: &str) -> Result<super::super::QuotaCounts, StoreError> {
        Ok(self.live_counts()?.quota(issuer, subject, role))
    }

    async fn oldest_overdue(&self, now: OffsetDateTime) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE (state = 'active' AND (expires_at <= ? OR end_reason IS NOT NULL)) OR state = 'revoke_failed' ORDER BY expires_at LIMIT 1"
        ))
        .bind(to_ms(now))
        .fetch_optional(&self.read)
        .await
        .map_err(interpret_error)?;
        row.as_ref().map(lease_from_row).transpose()
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    /// The expiry worker's reads stay index searches with the partial
    /// indexes of migration 0014 (a query that no longer implies an index's
    /// condition silently becomes a scan of every lease).
    #[tokio::test]
    async fn due_and_job_reads_search_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let s = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let plan = |sql: String, binds: usize| {
            let read = s.read.clone();
            async move {
                let sql = format!("EXPLAIN QUERY PLAN {sql}");
                let mut q = sqlx::query(&sql);
                for _ in 0..binds {
                    q = q.bind("[]");
                }
                let rows = q.fetch_all(&read).await.unwrap();
                rows.iter().map(|r| r.get::<String, _>("detail")).collect::<Vec<_>>().join("; ")
            }
        };
        let p = plan(next_due_sql(), 1).await;
        assert!(p.contains("USING INDEX leases_due (state=?)") && p.contains("USING INDEX leases_retry (state=? AND next_attempt_at>?)"), "{p}");
        // The roles: one probe of `leases_role` per role.
        let p = plan(ROLES_SQL.to_owned(), 0).await;
        assert!(p.contains("SEARCH leases USING COVERING INDEX leases_role (role>?)") && !p.contains("SCAN leases"), "{p}");
        // A role's four branches (expired, scheduled, orphaned pending,
        // failed): ordered searches of role-led indexes that stop at the
        // limit; only the pending rows (few) are sorted.
        let p = plan(due_role_sql().to_owned(), 5).await;
        assert_eq!(p.matches("USING INDEX leases_role (role=? AND state=? AND expires_at<?)").count(), 1, "{p}");
        assert_eq!(p.matches("USING INDEX leases_role_retry (role=? AND state=? AND next_attempt_at<?)").count(), 2, "{p}");
        assert_eq!(p.matches("USING INDEX leases_role (role=? AND state=?)").count(), 1, "{p}");
        assert_eq!(p.matches("USE TEMP B-TREE FOR ORDER BY").count(), 1, "{p}");
        assert!(!p.contains("SCAN leases"), "{p}");
        // An owner's leases (lists, bulk revocations): `leases_owner` has
        // no state since migration 0017; the state is read from the rows.
        let p = plan("SELECT id FROM leases WHERE issuer = ? AND subject = ? AND state = ?".to_owned(), 3).await;
        assert!(p.contains("USING INDEX leases_owner (issuer=? AND subject=?)"), "{p}");
        let p = plan(crate::store::rows::JOB_PROGRESS_SQL.to_owned(), 1).await;
        assert!(p.contains("INDEX leases_job (job_id=?)"), "{p}");
        let partial: Vec<(String, String)> =
            sqlx::query_as("SELECT name, sql FROM sqlite_master WHERE name IN ('leases_retry', 'leases_job', 'leases_role_retry') ORDER BY name")
                .fetch_all(&s.read)
                .await
                .unwrap();
        assert_eq!(partial.len(), 3);
        assert!(partial[0].1.ends_with("WHERE job_id IS NOT NULL"), "{partial:?}");
        assert!(partial[1..].iter().all(|p| p.1.ends_with("WHERE next_attempt_at IS NOT NULL")), "{partial:?}");
        s.close().await;
    }
}

#[cfg(test)]
mod write_cost_tests {
    use super::*;
    use crate::store::LeaseState;

    /// The claims a GitHub Actions token carries, by name.
    const CLAIMS: [&str; 18] = [
        "repository", "ref", "sha", "workflow", "job_workflow_ref", "actor", "run_id", "environment", "event_name",
        "repository_owner", "runner_environment", "sub", "aud", "iss", "jti", "iat", "exp", "nbf",
    ];

    /// A workload's lease as the issue path writes it: random id, an owner
    /// of its own, GitHub-sized claims.
    fn lease(i: usize) -> Lease {
        let now = OffsetDateTime::now_utc();
        let claims: serde_json::Map<String, serde_json::Value> =
            CLAIMS.iter().map(|k| ((*k).to_owned(), serde_json::json!(format!("{k}-{i}-{}", "x".repeat(24))))).collect();
        Lease {
            id: LeaseId::new(format!("lse_{:032x}", rand::random::<u128>())),
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: format!("repo:acme/svc{i}:ref:refs/heads/main"),
            claims: serde_json::Value::Object(claims),
            scopes: vec!["orders.read".into()],
            policies: vec!["bench".into()],
            expires_at: now + time::Duration::hours(1),
            max_expires_at: now + time::Duration::hours(1),
            ..crate::store::sqlite::tests::lease(0)
        }
    }

    /// Issues `leases` one after the other (pending row, then activation).
    async fn issue(s: &SqliteStore, leases: impl Iterator<Item = Lease>) {
        for l in leases {
            s.insert_pending(&l).await.unwrap();
            assert!(s.activate(&l.id, &serde_json::json!({"user": l.id.to_string()}), l.expires_at).await.unwrap());
        }
    }

    /// What one issued credential costs the disk: its pending row and its
    /// activation, each committed alone (no batch to share pages with),
    /// put about 16 KiB in the WAL (2 KiB pages, `leases_owner` without
    /// the state); 4 KiB pages put 38 KiB (measured on this schema). Each
    /// of those bytes is written again at the checkpoint and competes with
    /// whatever else syncs on the disk. A reader holds a snapshot so that
    /// the WAL only grows while measured.
    #[tokio::test]
    async fn an_issued_lease_puts_few_pages_in_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let s = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        // Leases enough for every index to have many leaves.
        issue(&s, (0..1500).map(lease)).await;
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT COUNT(*) FROM leases", [], |r| r.get(0)).unwrap();
        let wal = dir.path().join("w.db-wal");
        let before = std::fs::metadata(&wal).unwrap().len();
        let n: u64 = 200;
        issue(&s, (0..n).map(|i| lease(10_000 + usize::try_from(i).unwrap()))).await;
        let per_lease = (std::fs::metadata(&wal).unwrap().len() - before) / n;
        assert!(per_lease < 24 * 1024, "{per_lease} bytes of WAL per issued lease");
        let page: i64 = reader.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, 2048);
        reader.execute_batch("COMMIT").unwrap();
        s.close().await;
    }

    /// The WAL is checkpointed once it holds [`CHECKPOINT_PAGES`] pages, not
    /// at SQLite's default of 1,000: the pages leases change again and
    /// again reach the database file once per checkpoint, far fewer writes
    /// per lease. And it is checkpointed then: the WAL does not grow past
    /// that (plus the batch that crossed it) while leases are issued.
    /// SQLite counts its restarts after a checkpoint in the WAL header
    /// (bytes 12..16).
    #[tokio::test]
    async fn the_wal_is_checkpointed_once_it_holds_checkpoint_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let s = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let wal = dir.path().join("c.db-wal");
        // The header alone: the WAL grows to 16 MiB while this runs.
        let restarts = || {
            let mut head = [0u8; 16];
            std::io::Read::read_exact(&mut std::fs::File::open(&wal).unwrap(), &mut head).unwrap();
            u32::from_be_bytes([head[12], head[13], head[14], head[15]])
        };
        issue(&s, std::iter::once(lease(0))).await;
        let first = restarts();
        let frame = 24 + 2048;
        let mut longest = 0;
        let mut restarted = false;
        for i in 1..4000 {
            issue(&s, std::iter::once(lease(i))).await;
            if restarts() != first {
                restarted = true;
                break;
            }
            longest = longest.max(std::fs::metadata(&wal).unwrap().len());
        }
        let pages = longest.saturating_sub(32) / frame;
        assert!(restarted, "no checkpoint within 4,000 leases ({pages} pages in the WAL)");
        assert!(pages >= u64::from(CHECKPOINT_PAGES) - 16, "checkpointed at {pages} pages, before {CHECKPOINT_PAGES}");
        assert!(pages < u64::from(CHECKPOINT_PAGES) + 64, "the WAL grew to {pages} pages before its checkpoint");
        s.close().await;
    }

    /// A database created with 4 KiB pages (every store made before
    /// migration 0017) opens, migrates and keeps its pages.
    #[tokio::test]
    async fn a_store_made_with_4_kib_pages_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE before_lessor (x INTEGER)").unwrap();
        }
        let s = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let l = lease(1);
        issue(&s, std::iter::once(l.clone())).await;
        assert_eq!(s.get(&l.id).await.unwrap().unwrap().state, LeaseState::Active);
        s.close().await;
        let c = rusqlite::Connection::open(&path).unwrap();
        let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, 4096);
    }
}
