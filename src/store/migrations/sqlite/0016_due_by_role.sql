-- The expiry worker reads due work role by role, each read an ordered index
-- search that stops at its batch (store/sqlite/leases.rs, `due_role_sql`):
-- before, every round read, grouped and ranked every due lease to hand out
-- 256 of them (0.3 s a round with 100,000 due; hours to drain a million).
-- `leases_role` gains `expires_at` (queries on `(role, state)` still use it;
-- a lease's entry changed with its state already, now also with its expiry),
-- and scheduled or failed revocations get a role-led partial index like
-- `leases_retry` (0014): only rows with a retry time are in it.
DROP INDEX leases_role;
CREATE INDEX leases_role ON leases (role, state, expires_at);
CREATE INDEX leases_role_retry ON leases (role, state, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
