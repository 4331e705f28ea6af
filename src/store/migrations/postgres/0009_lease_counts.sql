-- Live-lease counts, kept by a trigger in the same transaction as every
-- change to a lease row, so /metrics and the quotas read O(roles x states)
-- rows, never the leases themselves, and every replica reads the same numbers.
-- Hot rows: a lease's counter row is one of 16 shards chosen from its id
-- (the same shard on increment and decrement, so each shard row is an exact
-- count); readers sum the shards. Expiry-minute and owner rows are deleted
-- when they reach 0 (their keys never end); state rows stay (bounded).
-- lease_counts: live leases by role, plugin and state.
-- lease_expiry_counts: active leases by role, plugin and expiry minute
--   (unix ms / 60000).
-- owner_counts: live leases per workload (issuer, subject); one row per
--   workload (contention only among one workload's own requests).
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
    SELECT role, plugin, state, hashtext(id) & 15, COUNT(*) FROM leases
    WHERE state IN ('pending', 'active', 'revoke_failed') GROUP BY role, plugin, state, hashtext(id) & 15;
INSERT INTO lease_expiry_counts (minute, role, plugin, shard, n)
    SELECT expires_at / 60000, role, plugin, hashtext(id) & 15, COUNT(*) FROM leases
    WHERE state = 'active' GROUP BY expires_at / 60000, role, plugin, hashtext(id) & 15;
INSERT INTO owner_counts (issuer, subject, n)
    SELECT issuer, subject, COUNT(*) FROM leases
    WHERE state IN ('pending', 'active', 'revoke_failed') GROUP BY issuer, subject;

CREATE FUNCTION lessor_lease_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_live   BOOLEAN := TG_OP <> 'INSERT' AND OLD.state IN ('pending', 'active', 'revoke_failed');
    new_live   BOOLEAN := TG_OP <> 'DELETE' AND NEW.state IN ('pending', 'active', 'revoke_failed');
    old_active BOOLEAN := TG_OP <> 'INSERT' AND OLD.state = 'active';
    new_active BOOLEAN := TG_OP <> 'DELETE' AND NEW.state = 'active';
    same_state BOOLEAN := TG_OP = 'UPDATE' AND OLD.state = NEW.state AND OLD.role = NEW.role AND OLD.plugin = NEW.plugin;
    same_owner BOOLEAN := TG_OP = 'UPDATE' AND OLD.issuer = NEW.issuer AND OLD.subject = NEW.subject;
    same_minute BOOLEAN := TG_OP = 'UPDATE' AND OLD.expires_at / 60000 = NEW.expires_at / 60000
                           AND OLD.role = NEW.role AND OLD.plugin = NEW.plugin;
    left_n BIGINT;
BEGIN
    -- By state.
    IF old_live AND NOT (new_live AND same_state) THEN
        -- Bounded keys (roles x states x shards): rows at 0 stay.
        UPDATE lease_counts SET n = n - 1
            WHERE role = OLD.role AND plugin = OLD.plugin AND state = OLD.state AND shard = hashtext(OLD.id) & 15;
    END IF;
    IF new_live AND NOT (old_live AND same_state) THEN
        INSERT INTO lease_counts (role, plugin, state, shard, n)
            VALUES (NEW.role, NEW.plugin, NEW.state, hashtext(NEW.id) & 15, 1)
            ON CONFLICT (role, plugin, state, shard) DO UPDATE SET n = lease_counts.n + 1;
    END IF;
    -- Active leases by expiry minute.
    IF old_active AND NOT (new_active AND same_minute) THEN
        UPDATE lease_expiry_counts SET n = n - 1
            WHERE minute = OLD.expires_at / 60000 AND role = OLD.role AND plugin = OLD.plugin AND shard = hashtext(OLD.id) & 15
            RETURNING n INTO left_n;
        IF left_n <= 0 THEN
            DELETE FROM lease_expiry_counts
                WHERE minute = OLD.expires_at / 60000 AND role = OLD.role AND plugin = OLD.plugin
                  AND shard = hashtext(OLD.id) & 15 AND n <= 0;
        END IF;
    END IF;
    IF new_active AND NOT (old_active AND same_minute) THEN
        INSERT INTO lease_expiry_counts (minute, role, plugin, shard, n)
            VALUES (NEW.expires_at / 60000, NEW.role, NEW.plugin, hashtext(NEW.id) & 15, 1)
            ON CONFLICT (minute, role, plugin, shard) DO UPDATE SET n = lease_expiry_counts.n + 1;
    END IF;
    -- Live leases per workload.
    IF old_live AND NOT (new_live AND same_owner) THEN
        UPDATE owner_counts SET n = n - 1 WHERE issuer = OLD.issuer AND subject = OLD.subject
            RETURNING n INTO left_n;
        IF left_n <= 0 THEN
            DELETE FROM owner_counts WHERE issuer = OLD.issuer AND subject = OLD.subject AND n <= 0;
        END IF;
    END IF;
    IF new_live AND NOT (old_live AND same_owner) THEN
        INSERT INTO owner_counts (issuer, subject, n) VALUES (NEW.issuer, NEW.subject, 1)
            ON CONFLICT (issuer, subject) DO UPDATE SET n = owner_counts.n + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER leases_counts AFTER INSERT OR UPDATE OR DELETE ON leases
    FOR EACH ROW EXECUTE FUNCTION lessor_lease_counts();
