-- Call links (an agent's "Call customer" page) and the ops console's server-side sessions.

CREATE TABLE call_links (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    session_id  uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    party       text NOT NULL CHECK (party IN ('agent', 'customer')),
    max_uses    integer NOT NULL CHECK (max_uses >= 1),
    uses        integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX call_links_by_session ON call_links (session_id);

CREATE TABLE console_sessions (
    id_hash     bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    data        bytea NOT NULL,
    expires_at  timestamptz
);
CREATE INDEX console_sessions_due ON console_sessions (expires_at);
