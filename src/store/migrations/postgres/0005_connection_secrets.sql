-- Managed root credentials: versions of each connection's root secret,
-- envelope-encrypted (AES-256-GCM under a random per-version data key; the
-- data key wrapped by the key-encryption key named by kek_id). Only the
-- last 4 characters of a secret (fingerprint) are kept in clear.
-- state: candidate | active | retiring | retired; at most one active per
-- connection (the partial unique index). Times in unix ms.
CREATE TABLE connection_secrets (
    connection     TEXT NOT NULL,
    version        BIGINT NOT NULL,
    state          TEXT NOT NULL,
    ciphertext     BYTEA NOT NULL,
    wrapped_dek    BYTEA NOT NULL,
    kek_id         TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    set_by         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    set_at         BIGINT NOT NULL,
    verified_ok    BOOLEAN,
    verification   TEXT,
    verified_at    BIGINT,
    approved_by    TEXT,
    approved_at    BIGINT,
    activated_by   TEXT,
    activated_at   BIGINT,
    retiring_until BIGINT,
    PRIMARY KEY (connection, version)
);
CREATE UNIQUE INDEX connection_secrets_one_active ON connection_secrets (connection) WHERE state = 'active';
-- The root credential version a lease was issued under (managed connections).
ALTER TABLE leases ADD COLUMN root_version BIGINT;
