-- Named, expiring admin tokens. Only each token's SHA-256 is kept. A
-- revoked token keeps its row (revoked_at set) so that restarting with the
-- same token file cannot bring it back; creating a token with that name
-- replaces the row.
CREATE TABLE admin_tokens (
    name         TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

-- The unnamed, never-expiring token hashes of earlier versions stop
-- working: the token file's token comes back as `bootstrap` at start.
DELETE FROM meta WHERE key LIKE 'admin_token:%';
