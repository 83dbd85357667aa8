-- Pools as first-class settings (fallback for callers without a session, cool-off, defaults, alert level),
-- and the history of a session's party changes (reassignment).
CREATE TABLE pool_settings (
    tenant_id            bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    pool                 text NOT NULL CHECK (length(pool) BETWEEN 1 AND 64),
    fallback_connect_to  text CHECK (fallback_connect_to ~ '^\+[1-9][0-9]{5,14}$'),
    fallback_flow        text CHECK (length(fallback_flow) BETWEEN 1 AND 128),
    cooloff_seconds      integer CHECK (cooloff_seconds BETWEEN 0 AND 2592000),
    default_ttl_seconds  integer CHECK (default_ttl_seconds BETWEEN 60 AND 2592000),
    default_max_calls    integer CHECK (default_max_calls >= 1),
    headroom_alert       integer NOT NULL DEFAULT 2 CHECK (headroom_alert >= 0),
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, pool),
    CHECK (fallback_connect_to IS NULL OR fallback_flow IS NULL)
);

-- A session's party changes, oldest first. Numbers are kept masked (+91******3210): the history outlives
-- the session's own retention window without holding real numbers.
CREATE TABLE session_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id  uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    at          timestamptz NOT NULL,
    party       text NOT NULL CHECK (party IN ('agent', 'customer')),
    old_number  text NOT NULL,
    new_number  text NOT NULL,
    old_did     text NOT NULL,
    new_did     text NOT NULL
);
CREATE INDEX session_changes_by_session ON session_changes (session_id, id);
