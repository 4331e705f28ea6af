-- As SQLite's 0014: `leases_retry` and `leases_job` hold only the rows their
-- queries look for (a retry time; a bulk job), so issuing and activating a
-- lease no longer updates either. The queries' `next_attempt_at <= $1`,
-- `next_attempt_at IS NOT NULL` and `job_id = $1` imply the conditions.
-- (Rebuilding them blocks writes to `leases` for as long as that takes.)
DROP INDEX leases_retry;
CREATE INDEX leases_retry ON leases (state, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
DROP INDEX leases_job;
CREATE INDEX leases_job ON leases (job_id, state) WHERE job_id IS NOT NULL;
