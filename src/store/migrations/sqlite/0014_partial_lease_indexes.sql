-- Write cost (issue 12): most leases never have a retry time or a bulk job,
-- yet every insert and every state change of a lease updated an entry in
-- both indexes. Now they hold only the rows their queries look for:
-- `next_attempt_at` is set when a revocation is scheduled or failed, and
-- `job_id` by a bulk revocation. (Queries on `next_attempt_at <= ?` or
-- `job_id = ?` imply the conditions; `MIN(next_attempt_at)` states it.)
DROP INDEX leases_retry;
CREATE INDEX leases_retry ON leases (state, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
DROP INDEX leases_job;
CREATE INDEX leases_job ON leases (job_id, state) WHERE job_id IS NOT NULL;
