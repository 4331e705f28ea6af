-- The reconciler's memory of strays that have no lease row: when a vendor
-- object of a connection was first seen as one (unix ms, the reconciler's
-- clock), so its grace period survives restarts and moves with the pass
-- between replicas. Rows go when the object is revoked or disappears.
CREATE TABLE reconcile_strays (
    connection    TEXT NOT NULL,
    object        TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL,
    PRIMARY KEY (connection, object)
);
