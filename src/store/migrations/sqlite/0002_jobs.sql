-- Admin jobs (bulk revocation). A job's leases carry its id; its progress is
-- counted from their states, so any replica can answer for it.
CREATE TABLE jobs (
    id         TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL,
    filter     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    total      INTEGER NOT NULL
);
ALTER TABLE leases ADD COLUMN job_id TEXT;
CREATE INDEX leases_job ON leases (job_id, state);
