-- Events written with their change (the outbox behind GET /v1/events and webhooks), webhook endpoints,
-- their pending deliveries and the log of delivery attempts; and which pools are below their headroom alert.
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    type        text NOT NULL,
    created_at  timestamptz NOT NULL,
    data        jsonb NOT NULL,
    -- the writing transaction: the feed pages by (txid, id) and shows only transactions older than every
    -- one still running, so an event committed late never lands behind a cursor already handed out
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX events_feed ON events (tenant_id, txid, id);

CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    url              text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events           text[] NOT NULL CHECK (cardinality(events) > 0),
    description      text CHECK (length(description) <= 256),
    status           text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled', 'disabled_failing')),
    -- the signing secret must be kept as is (an HMAC key cannot be checked against a hash of itself)
    secret           text NOT NULL,
    previous_secret  text,
    previous_until   timestamptz,
    -- the first failed attempt since the last delivered one (null while the endpoint succeeds)
    failing_since    timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at);

-- One row per event and endpoint that wants it: pending until delivered or out of retries.
CREATE TABLE webhook_deliveries (
    event_id         bigint NOT NULL REFERENCES events ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    event_id         bigint NOT NULL,
    attempt          integer NOT NULL,
    status           text NOT NULL CHECK (status IN ('delivered', 'retrying', 'failed')),
    status_code      integer,
    error            text,
    duration_ms      integer NOT NULL,
    at               timestamptz NOT NULL,
    next_attempt_at  timestamptz
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);

-- Pools whose headroom is at or below their alert level: one pool.low_headroom event per fall.
CREATE TABLE pool_alerts (
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    pool        text NOT NULL,
    alerted_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, pool)
);
