-- Live-lease counts, kept by triggers in the same transaction as every change
-- to a lease row, so /metrics and the quotas read O(roles x states) rows,
-- never the leases themselves, and every replica reads the same numbers.
-- `shard` spreads PostgreSQL's hot rows (always 0 on SQLite, one writer).
-- lease_counts: live leases by role, plugin and state.
-- lease_expiry_counts: active leases by role, plugin and expiry minute
--   (unix ms / 60000); rows that reach 0 are deleted.
-- owner_counts: live leases per workload (issuer, subject); rows that reach 0
--   are deleted.
CREATE TABLE lease_counts (
    role   TEXT NOT NULL,
    plugin TEXT NOT NULL,
    state  TEXT NOT NULL,
    shard  INTEGER NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (role, plugin, state, shard)
);
CREATE TABLE lease_expiry_counts (
    minute BIGINT NOT NULL,
    role   TEXT NOT NULL,
    plugin TEXT NOT NULL,
    shard  INTEGER NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (minute, role, plugin, shard)
);
CREATE TABLE owner_counts (
    issuer  TEXT NOT NULL,
    subject TEXT NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX owner_counts_n ON owner_counts (n);

INSERT INTO lease_counts (role, plugin, state, shard, n)
    SELECT role, plugin, state, 0, COUNT(*) FROM leases
    WHERE state IN ('pending', 'active', 'revoke_failed') GROUP BY role, plugin, state;
INSERT INTO lease_expiry_counts (minute, role, plugin, shard, n)
    SELECT expires_at / 60000, role, plugin, 0, COUNT(*) FROM leases
    WHERE state = 'active' GROUP BY expires_at / 60000, role, plugin;
INSERT INTO owner_counts (issuer, subject, n)
    SELECT issuer, subject, COUNT(*) FROM leases
    WHERE state IN ('pending', 'active', 'revoke_failed') GROUP BY issuer, subject;

-- By state.
CREATE TRIGGER leases_counts_ins AFTER INSERT ON leases
WHEN NEW.state IN ('pending', 'active', 'revoke_failed')
BEGIN
    INSERT INTO lease_counts (role, plugin, state, shard, n) VALUES (NEW.role, NEW.plugin, NEW.state, 0, 1)
        ON CONFLICT (role, plugin, state, shard) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER leases_counts_del AFTER DELETE ON leases
WHEN OLD.state IN ('pending', 'active', 'revoke_failed')
BEGIN
    UPDATE lease_counts SET n = n - 1 WHERE role = OLD.role AND plugin = OLD.plugin AND state = OLD.state AND shard = 0;
    DELETE FROM lease_counts WHERE role = OLD.role AND plugin = OLD.plugin AND state = OLD.state AND shard = 0 AND n <= 0;
END;
CREATE TRIGGER leases_counts_upd_old AFTER UPDATE ON leases
WHEN OLD.state IN ('pending', 'active', 'revoke_failed')
 AND (OLD.state IS NOT NEW.state OR OLD.role IS NOT NEW.role OR OLD.plugin IS NOT NEW.plugin)
BEGIN
    UPDATE lease_counts SET n = n - 1 WHERE role = OLD.role AND plugin = OLD.plugin AND state = OLD.state AND shard = 0;
    DELETE FROM lease_counts WHERE role = OLD.role AND plugin = OLD.plugin AND state = OLD.state AND shard = 0 AND n <= 0;
END;
CREATE TRIGGER leases_counts_upd_new AFTER UPDATE ON leases
WHEN NEW.state IN ('pending', 'active', 'revoke_failed')
 AND (OLD.state IS NOT NEW.state OR OLD.role IS NOT NEW.role OR OLD.plugin IS NOT NEW.plugin)
BEGIN
    INSERT INTO lease_counts (role, plugin, state, shard, n) VALUES (NEW.role, NEW.plugin, NEW.state, 0, 1)
        ON CONFLICT (role, plugin, state, shard) DO UPDATE SET n = n + 1;
END;

-- Active leases by expiry minute.
CREATE TRIGGER leases_expiry_ins AFTER INSERT ON leases
WHEN NEW.state = 'active'
BEGIN
    INSERT INTO lease_expiry_counts (minute, role, plugin, shard, n) VALUES (NEW.expires_at / 60000, NEW.role, NEW.plugin, 0, 1)
        ON CONFLICT (minute, role, plugin, shard) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER leases_expiry_del AFTER DELETE ON leases
WHEN OLD.state = 'active'
BEGIN
    UPDATE lease_expiry_counts SET n = n - 1
        WHERE minute = OLD.expires_at / 60000 AND role = OLD.role AND plugin = OLD.plugin AND shard = 0;
    DELETE FROM lease_expiry_counts
        WHERE minute = OLD.expires_at / 60000 AND role = OLD.role AND plugin = OLD.plugin AND shard = 0 AND n <= 0;
END;
CREATE TRIGGER leases_expiry_upd_old AFTER UPDATE ON leases
WHEN OLD.state = 'active'
 AND (NEW.state IS NOT 'active' OR OLD.expires_at / 60000 IS NOT NEW.expires_at / 60000
      OR OLD.role IS NOT NEW.role OR OLD.plugin IS NOT NEW.plugin)
BEGIN
    UPDATE lease_expiry_counts SET n = n - 1
        WHERE minute = OLD.expires_at / 60000 AND role = OLD.role AND plugin = OLD.plugin AND shard = 0;
    DELETE FROM lease_expiry_counts
        WHERE minute = OLD.expires_at / 60000 AND role = OLD.role AND plugin = OLD.plugin AND shard = 0 AND n <= 0;
END;
CREATE TRIGGER leases_expiry_upd_new AFTER UPDATE ON leases
WHEN NEW.state = 'active'
 AND (OLD.state IS NOT 'active' OR OLD.expires_at / 60000 IS NOT NEW.expires_at / 60000
      OR OLD.role IS NOT NEW.role OR OLD.plugin IS NOT NEW.plugin)
BEGIN
    INSERT INTO lease_expiry_counts (minute, role, plugin, shard, n) VALUES (NEW.expires_at / 60000, NEW.role, NEW.plugin, 0, 1)
        ON CONFLICT (minute, role, plugin, shard) DO UPDATE SET n = n + 1;
END;

-- Live leases per workload.
CREATE TRIGGER leases_owner_ins AFTER INSERT ON leases
WHEN NEW.state IN ('pending', 'active', 'revoke_failed')
BEGIN
    INSERT INTO owner_counts (issuer, subject, n) VALUES (NEW.issuer, NEW.subject, 1)
        ON CONFLICT (issuer, subject) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER leases_owner_del AFTER DELETE ON leases
WHEN OLD.state IN ('pending', 'active', 'revoke_failed')
BEGIN
    UPDATE owner_counts SET n = n - 1 WHERE issuer = OLD.issuer AND subject = OLD.subject;
    DELETE FROM owner_counts WHERE issuer = OLD.issuer AND subject = OLD.subject AND n <= 0;
END;
CREATE TRIGGER leases_owner_upd_old AFTER UPDATE ON leases
WHEN OLD.state IN ('pending', 'active', 'revoke_failed')
 AND (NEW.state NOT IN ('pending', 'active', 'revoke_failed') OR OLD.issuer IS NOT NEW.issuer OR OLD.subject IS NOT NEW.subject)
BEGIN
    UPDATE owner_counts SET n = n - 1 WHERE issuer = OLD.issuer AND subject = OLD.subject;
    DELETE FROM owner_counts WHERE issuer = OLD.issuer AND subject = OLD.subject AND n <= 0;
END;
CREATE TRIGGER leases_owner_upd_new AFTER UPDATE ON leases
WHEN NEW.state IN ('pending', 'active', 'revoke_failed')
 AND (OLD.state NOT IN ('pending', 'active', 'revoke_failed') OR OLD.issuer IS NOT NEW.issuer OR OLD.subject IS NOT NEW.subject)
BEGIN
    INSERT INTO owner_counts (issuer, subject, n) VALUES (NEW.issuer, NEW.subject, 1)
        ON CONFLICT (issuer, subject) DO UPDATE SET n = n + 1;
END;
