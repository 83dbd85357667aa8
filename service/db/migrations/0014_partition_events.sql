-- Events, webhook deliveries and webhook attempts become tables partitioned by day (service/db/partitions.py),
-- so that retention drops a day's partition instead of deleting its rows one by one.
--
-- Each table is rebuilt: a partitioned table is made beside it with only its default partition, every row is
-- copied into it, the old table is dropped and the new one takes its name. Cost: one full rewrite of the three
-- tables inside this migration's transaction, holding them locked meanwhile (fine for the embedded default,
-- seconds per million rows). A big deployment should instead create the partitioned tables empty under new
-- names and the day partitions it will need, copy rows in batches from the old tables while the service runs
-- (or only the days still inside the retention), and swap names in a short transaction, as this migration
-- does at once. Rows copied here land in the default partition; the sweeper moves the current days' rows
-- into their own partitions as it creates them and purges the older ones by DELETE as they age out.

CREATE TABLE events_new (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    tenant_id   bigint NOT NULL,
    type        text NOT NULL,
    created_at  timestamptz NOT NULL,
    data        jsonb NOT NULL,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT events_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants ON DELETE CASCADE,
    CONSTRAINT events_new_pkey PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE events_default PARTITION OF events_new DEFAULT;
INSERT INTO events_new (id, tenant_id, type, created_at, data, txid) OVERRIDING SYSTEM VALUE
    SELECT id, tenant_id, type, created_at, data, txid FROM events;

CREATE TABLE webhook_deliveries_new (
    event_id          bigint NOT NULL,
    endpoint_id       uuid NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL,
    created_at        timestamptz NOT NULL,
    event_created_at  timestamptz NOT NULL,
    CONSTRAINT webhook_deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES webhook_endpoints ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_new_pkey PRIMARY KEY (event_id, endpoint_id, event_created_at)
) PARTITION BY RANGE (event_created_at);
CREATE TABLE webhook_deliveries_default PARTITION OF webhook_deliveries_new DEFAULT;
-- every delivery has its event (the old table's foreign key)
INSERT INTO webhook_deliveries_new
    SELECT d.event_id, d.endpoint_id, d.status, d.attempts, d.next_attempt_at, d.created_at, e.created_at
    FROM webhook_deliveries d JOIN events e ON e.id = d.event_id;

CREATE TABLE webhook_attempts_new (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    endpoint_id      uuid NOT NULL,
    event_id         bigint NOT NULL,
    attempt          integer NOT NULL,
    status           text NOT NULL CHECK (status IN ('delivered', 'retrying', 'failed')),
    status_code      integer,
    error            text,
    duration_ms      integer NOT NULL,
    at               timestamptz NOT NULL,
    next_attempt_at  timestamptz,
    CONSTRAINT webhook_attempts_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES webhook_endpoints ON DELETE CASCADE,
    CONSTRAINT webhook_attempts_new_pkey PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE webhook_attempts_default PARTITION OF webhook_attempts_new DEFAULT;
INSERT INTO webhook_attempts_new (id, endpoint_id, event_id, attempt, status, status_code, error, duration_ms, at,
                                  next_attempt_at) OVERRIDING SYSTEM VALUE
    SELECT id, endpoint_id, event_id, attempt, status, status_code, error, duration_ms, at, next_attempt_at
    FROM webhook_attempts;

DROP TABLE webhook_attempts, webhook_deliveries, events;

ALTER TABLE events_new RENAME TO events;
ALTER INDEX events_new_pkey RENAME TO events_pkey;
ALTER SEQUENCE events_new_id_seq RENAME TO events_id_seq;
SELECT setval('events_id_seq', coalesce(max(id), 0) + 1, false) FROM events;
CREATE INDEX events_feed ON events (tenant_id, txid, id);
CREATE INDEX events_subject ON events (tenant_id, (coalesce(data->>'session_id', data->>'id')), id)
    WHERE type LIKE 'session.%' OR type LIKE 'call.%';

ALTER TABLE webhook_deliveries_new RENAME TO webhook_deliveries;
ALTER INDEX webhook_deliveries_new_pkey RENAME TO webhook_deliveries_pkey;
ALTER TABLE webhook_deliveries RENAME CONSTRAINT webhook_deliveries_new_status_check TO webhook_deliveries_status_check;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

ALTER TABLE webhook_attempts_new RENAME TO webhook_attempts;
ALTER INDEX webhook_attempts_new_pkey RENAME TO webhook_attempts_pkey;
ALTER SEQUENCE webhook_attempts_new_id_seq RENAME TO webhook_attempts_id_seq;
ALTER TABLE webhook_attempts RENAME CONSTRAINT webhook_attempts_new_status_check TO webhook_attempts_status_check;
SELECT setval('webhook_attempts_id_seq', coalesce(max(id), 0) + 1, false) FROM webhook_attempts;
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);
