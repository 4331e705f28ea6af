-- The live-lease counts move into the writer's memory (store/sqlite/counts.rs):
-- one process owns a SQLite store and every write goes through its one writer,
-- so the counts need no table; kept in tables by these triggers, they were most
-- of the pages each lease write put in the WAL. TEMP triggers on the writer's
-- connection count the same changes; the counts are read from the leases at
-- each start.
DROP TRIGGER leases_counts_ins;
DROP TRIGGER leases_counts_del;
DROP TRIGGER leases_counts_upd_old;
DROP TRIGGER leases_counts_upd_new;
DROP TRIGGER leases_expiry_ins;
DROP TRIGGER leases_expiry_del;
DROP TRIGGER leases_expiry_upd_old;
DROP TRIGGER leases_expiry_upd_new;
DROP TRIGGER leases_owner_ins;
DROP TRIGGER leases_owner_del;
DROP TRIGGER leases_owner_upd_old;
DROP TRIGGER leases_owner_upd_new;
DROP TABLE lease_counts;
DROP TABLE lease_expiry_counts;
DROP TABLE owner_counts;
