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
    issued_at       BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    max_expires_at  BIGINT NOT NULL,
    handle          TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at BIGINT,
    end_reason      TEXT,
    ended_at        BIGINT
);
CREATE INDEX leases_due ON leases (state, expires_at);
CREATE INDEX leases_retry ON leases (state, next_attempt_at);
CREATE INDEX leases_owner ON leases (issuer, subject, state);
CREATE INDEX leases_role ON leases (role, state);

CREATE TABLE plugin_state (
    connection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BYTEA NOT NULL,
    sealed     BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (connection, key)
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
