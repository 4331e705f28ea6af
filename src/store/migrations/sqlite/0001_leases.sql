-- Leases: one row per credential ever issued. Times are unix milliseconds.
CREATE TABLE leases (
    id              TEXT PRIMARY KEY NOT NULL,
    role            TEXT NOT NULL,
    plugin          TEXT NOT NULL,
    issuer          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    claims          TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    policies        TEXT NOT NULL,
    state           TEXT NOT NULL,
    issued_at       INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    max_expires_at  INTEGER NOT NULL,
    handle          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER,
    end_reason      TEXT,
    ended_at        INTEGER
);
-- The expiry worker's query: live leases by state, due first.
CREATE INDEX leases_due ON leases (state, expires_at);
CREATE INDEX leases_retry ON leases (state, next_attempt_at);
CREATE INDEX leases_owner ON leases (issuer, subject, state);
CREATE INDEX leases_role ON leases (role, state);

-- Plugin state, per connection. Sealed values are AES-256-GCM ciphertexts.
CREATE TABLE plugin_state (
    connection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    sealed     INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (connection, key)
);

-- Small shared metadata: admin token hashes, the seal key check.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
