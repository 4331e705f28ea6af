-- The expiry worker's due query reads due work role by role, each kind of due
-- lease an ordered index search that stops at its batch (store/postgres.rs,
-- `due_sql`): before, every round read and grouped every due lease to hand
-- out a batch of them. As SQLite's 0016: `leases_role` gains `expires_at`
-- (queries on `(role, state)` still use it), and scheduled or failed
-- revocations get a role-led partial index like `leases_retry` (0014).
DROP INDEX leases_role;
CREATE INDEX leases_role ON leases (role, state, expires_at);
CREATE INDEX leases_role_retry ON leases (role, state, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
