-- Customer API tokens (issue 13): tokens a SaaS's customers create for its
-- API. Only each token's SHA-256 is kept (`token_hash`), with its last 4
-- characters for display. Rows stay after a token ends (history), until
-- `customer_tokens.history_retention` after their end.
CREATE TABLE customer_tokens (
    id                 TEXT PRIMARY KEY,
    token_hash         TEXT NOT NULL UNIQUE,
    last4              TEXT NOT NULL,
    account            TEXT NOT NULL,
    environment        TEXT NOT NULL,
    name               TEXT NOT NULL,
    owner              TEXT NOT NULL,
    owner_email        TEXT NOT NULL,
    scopes             TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    created_by         TEXT NOT NULL,
    expires_at         INTEGER NOT NULL,
    replaces           TEXT,
    replaced_by        TEXT,
    rotated_at         INTEGER,
    rotated_by         TEXT,
    retiring_until     INTEGER,
    revoked_at         INTEGER,
    revoked_by         TEXT,
    last_used_at       INTEGER,
    expiry_warned_at   INTEGER,
    rotation_warned_at INTEGER
);

CREATE INDEX customer_tokens_account ON customer_tokens (account, created_at);
CREATE INDEX customer_tokens_expires ON customer_tokens (expires_at);

-- The last uses of each token (at most `usage_keep` rows per token).
CREATE TABLE customer_token_uses (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id   TEXT NOT NULL,
    at         INTEGER NOT NULL,
    source     TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    ok         INTEGER NOT NULL
);

CREATE INDEX customer_token_uses_token ON customer_token_uses (token_id, id);

-- Uses per token and UTC day (kept `usage_days`).
CREATE TABLE customer_token_days (
    token_id TEXT NOT NULL,
    day      TEXT NOT NULL,
    ok       INTEGER NOT NULL,
    failed   INTEGER NOT NULL,
    PRIMARY KEY (token_id, day)
);
