-- Live lessor processes on this store and what they run: each writes its
-- row on a heartbeat and deletes it on shutdown. Several share a PostgreSQL store.
-- `policy_version` lets operators (and a metric) see that every replica
-- decides with the same policy set. Times in unix ms.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    version TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
