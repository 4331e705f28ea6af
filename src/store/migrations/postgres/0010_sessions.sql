-- Client tokens of the Vault-compatible API (auth/<mount>/login). Only
-- each token's SHA-256 is kept. A session is bound to the workload that
-- logged in (issuer, subject and its mapped claims, as JSON) and to the
-- Vault role it named. Ended sessions are deleted a day after they end.
CREATE TABLE sessions (
    token_hash     TEXT PRIMARY KEY,
    accessor       TEXT NOT NULL UNIQUE,
    mount          TEXT NOT NULL,
    vault_role     TEXT NOT NULL,
    issuer_name    TEXT NOT NULL,
    issuer         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    attributes     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    revoked_at     BIGINT
);

CREATE INDEX sessions_expires ON sessions (expires_at);
