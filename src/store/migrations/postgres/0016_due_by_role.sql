-- SQLite's 0016 re-indexes the leases by role so its expiry worker reads due
-- work role by role. PostgreSQL's due query (one statement that also locks
-- and claims rows for replicas) is unchanged for now. Nothing to change.
SELECT 1;
