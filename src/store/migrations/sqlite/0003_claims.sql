-- Expiry-worker claims, used by the PostgreSQL backend, where several
-- lessor replicas share one store. SQLite serves one process: it never sets
-- or reads these columns (they stay NULL); they exist so both backends have
-- the same migrations.
ALTER TABLE leases ADD COLUMN claimed_by TEXT;
ALTER TABLE leases ADD COLUMN claimed_until INTEGER;
