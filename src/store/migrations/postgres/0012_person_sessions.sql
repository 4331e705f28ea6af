-- Sessions of people signed in through [people] (browser cookie or
-- `lessor login`). Only each session token's SHA-256 is kept; `id` is a
-- public handle for the audit log. A session ends at `expires_at`
-- (absolute timeout), at `idle_expires_at` (moved forward while it is
-- used, never past `expires_at`), or when signed out (`ended_at`).
-- Ended sessions are deleted a day after they end.
CREATE TABLE person_sessions (
    token_hash      TEXT PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    provider        TEXT NOT NULL,
    issuer          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    email           TEXT NOT NULL,
    name            TEXT NOT NULL,
    groups_json     TEXT NOT NULL,
    via             TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    end_reason      TEXT
);

CREATE INDEX person_sessions_person ON person_sessions (provider, subject);
CREATE INDEX person_sessions_idle ON person_sessions (idle_expires_at);
