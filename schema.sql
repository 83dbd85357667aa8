-- The whole current schema of the masking service: tables, constraints and indexes, readable in one place.
-- A new database starts from this file and is stamped with the latest migration's number; a database
-- made by an older version gets the numbered files of service/db/migrations/ it lacks, in order.
-- Change this file and add a migration in the same commit: tests/test_migrations.py proves they agree.

CREATE TABLE schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Secrets the service generates for itself once (the provider callback token).
CREATE TABLE service_secrets (
    name   text PRIMARY KEY,
    value  text NOT NULL
);

CREATE TABLE tenants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored only as SHA-256 hashes; `prefix` is the shown, non-secret start of the key.
CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix      text NOT NULL,
    scopes      text[] NOT NULL CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['sessions', 'ops']),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_keys_prefix ON api_keys (prefix);

-- A DID belongs to one tenant. `slot` is a fixed random position used to sample candidates cheaply.
CREATE TABLE dids (
    number                text PRIMARY KEY CHECK (number ~ '^\+[1-9][0-9]{5,14}$'),
    tenant_id             bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    pool                  text NOT NULL CHECK (length(pool) BETWEEN 1 AND 64),
    country               text NOT NULL,
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'draining', 'retired')),
    max_concurrent_calls  integer CHECK (max_concurrent_calls > 0),
    slot                  double precision NOT NULL DEFAULT random(),
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dids_pick ON dids (tenant_id, pool, status, slot);
CREATE INDEX dids_list ON dids (tenant_id, pool, number);
-- geo-matched allocation probes: eligible DIDs of one country in slot order
CREATE INDEX dids_pick_geo ON dids (tenant_id, pool, status, country, slot);

CREATE TABLE sessions (
    id                uuid PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    order_id          text NOT NULL CHECK (length(order_id) BETWEEN 1 AND 128),
    -- each party number sealed (service/db/sealed.py): ciphertext, blind index, masked form; retention
    -- and erasure clear the first two and leave the masked form
    customer_ct       bytea,
    customer_ix       bytea,
    customer_mask     text NOT NULL,
    agent_ct          bytea,
    agent_ix          bytea,
    agent_mask        text NOT NULL,
    did               text NOT NULL REFERENCES dids,
    pool              text NOT NULL,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed', 'expired')),
    close_reason      text CHECK (close_reason IN ('ttl', 'closed_by_client', 'expired_by_ops', 'max_calls_reached')),
    -- the client's own words when it closed the session (the API bounds them to 256 characters)
    close_note        text,
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    closed_at         timestamptz,
    record            boolean NOT NULL DEFAULT false,
    max_call_minutes  integer CHECK (max_call_minutes BETWEEN 1 AND 240),
    max_calls         integer CHECK (max_calls >= 1),
    calls_made        integer NOT NULL DEFAULT 0 CHECK (calls_made >= 0),
    metadata          jsonb NOT NULL DEFAULT '{}',
    -- set when retention replaced the real numbers with masked ones
    redacted_at       timestamptz,
    -- the sum of its calls' known costs (a decimal string; null while none is priced): see session_cost()
    cost              text,
    CHECK ((status = 'active') = (close_reason IS NULL)),
    CHECK ((status = 'active') = (closed_at IS NULL)),
    CHECK ((customer_ct IS NULL) = (customer_ix IS NULL) AND (agent_ct IS NULL) = (agent_ix IS NULL)),
    CHECK (customer_ix <> agent_ix OR redacted_at IS NOT NULL)
);
-- A retried create never makes a second active session for the same order and pair.
CREATE UNIQUE INDEX sessions_one_active_per_order
    ON sessions (tenant_id, order_id, customer_ix, agent_ix) WHERE status = 'active';
CREATE INDEX sessions_newest ON sessions (tenant_id, created_at DESC, id DESC);
CREATE INDEX sessions_by_order ON sessions (tenant_id, order_id);
CREATE INDEX sessions_by_customer ON sessions (tenant_id, customer_ix);
CREATE INDEX sessions_by_agent ON sessions (tenant_id, agent_ix);
CREATE INDEX sessions_due ON sessions (expires_at) WHERE status = 'active';
CREATE INDEX sessions_on_did ON sessions (did) WHERE status = 'active';
CREATE INDEX sessions_to_redact ON sessions (closed_at) WHERE redacted_at IS NULL AND status <> 'active';

-- "No crossed lines": one row per (phone number's blind index, DID) holding that number's latest session there.
-- The primary key is the guarantee: a number cannot be bound to a DID twice at once, whatever its role,
-- whatever process inserts. A row is active while ends_at is in the future; an ended row is taken over
-- by the next session of that number on that DID, and meanwhile remembers the peer for cool-off and
-- sticky re-use.
CREATE TABLE bindings (
    did         text NOT NULL REFERENCES dids,
    session_id  uuid NOT NULL,  -- back-reference to the owning session (no FK: written in the same statement)
    ends_at     timestamptz NOT NULL,
    number_ix   bytea NOT NULL,  -- the number's and its peer's blind indexes (service/db/sealed.py)
    peer_ix     bytea NOT NULL,
    PRIMARY KEY (number_ix, did),
    CHECK (number_ix <> peer_ix)
);
CREATE INDEX bindings_load ON bindings (did, ends_at);
CREATE INDEX bindings_session ON bindings (session_id);

-- Allocation that costs the same at any density: an approximate count of active sessions per DID, kept by
-- triggers in sharded rows (no allocation waits on another's counter); read by two-choice allocation.
CREATE TABLE did_load (
    did       text NOT NULL,
    shard     smallint NOT NULL,
    sessions  integer NOT NULL,
    PRIMARY KEY (did, shard)
);

CREATE FUNCTION count_did_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Net change per DID for the whole statement, applied in DID order (so two statements never wait on
    -- each other's rows in opposite orders) to one random shard of each DID.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO did_load AS l (did, shard, sessions)
        SELECT did, floor(random() * 8)::smallint, count(*) FROM new_rows WHERE status = 'active'
        GROUP BY did ORDER BY did
        ON CONFLICT (did, shard) DO UPDATE SET sessions = l.sessions + excluded.sessions;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO did_load AS l (did, shard, sessions)
        SELECT did, floor(random() * 8)::smallint, sum(change) FROM (
            SELECT did, -1 AS change FROM old_rows WHERE status = 'active'
            UNION ALL SELECT did, 1 FROM new_rows WHERE status = 'active') AS c
        GROUP BY did HAVING sum(change) <> 0 ORDER BY did
        ON CONFLICT (did, shard) DO UPDATE SET sessions = l.sessions + excluded.sessions;
    ELSE
        INSERT INTO did_load AS l (did, shard, sessions)
        SELECT did, floor(random() * 8)::smallint, -count(*) FROM old_rows WHERE status = 'active'
        GROUP BY did ORDER BY did
        ON CONFLICT (did, shard) DO UPDATE SET sessions = l.sessions + excluded.sessions;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_load_insert AFTER INSERT ON sessions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_did_load();
CREATE TRIGGER sessions_load_update AFTER UPDATE ON sessions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_did_load();
CREATE TRIGGER sessions_load_delete AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_did_load();

-- Idempotency-Key: the first response to a keyed request, replayed for 24 hours.
CREATE TABLE idempotency_keys (
    tenant_id     bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    status_code   integer,
    body          bytea,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key),
    CHECK ((status_code IS NULL) = (body IS NULL))
);

CREATE TABLE calls (
    id                uuid PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    session_id        uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    first             text NOT NULL CHECK (first IN ('agent', 'customer')),
    bridge            text NOT NULL,
    flow              text,
    status            text NOT NULL DEFAULT 'initiated'
                      CHECK (status IN ('initiated', 'completed', 'missed', 'failed', 'unknown')),
    -- true until a report arrives, the provider refuses, or the report timeout passes
    in_flight         boolean NOT NULL DEFAULT true,
    record            boolean NOT NULL DEFAULT false,
    max_call_minutes  integer CHECK (max_call_minutes BETWEEN 1 AND 240),
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    ended_at          timestamptz,
    duration_seconds  integer,
    billing_seconds   integer,
    recording_url     text,
    hangup_by         text,
    provider_status   text,
    provider_status1  text,
    provider_status2  text,
    provider_message  text,
    report_id         bigint,
    -- where the outcome came from: 'report' or 'call_log' (NULL: finished by an older version, or not yet)
    source            text,
    -- from the provider's call log: the charge (its decimal string) and the billing pulse
    cost              numeric,
    billing_pulse_seconds integer,
    -- lookups of a call still waiting for its report in the provider's call log, and when the next is due
    lookups           integer NOT NULL DEFAULT 0,
    lookup_at         timestamptz,
    -- the numbers called from and to, sealed like a session's (to_mask alone holds `flow:<id>` for a flow)
    from_ct           bytea,
    from_ix           bytea,
    from_mask         text NOT NULL,
    to_ct             bytea,
    to_ix             bytea,
    to_mask           text NOT NULL,
    -- how the last call-log lookup of a call still waiting went: not_found, ambiguous, log_unavailable
    lookup_outcome    text,
    -- recording_url above is the provider's reference to the recording, never handed out (the Call resource
    -- shows the service's own URL); this says when the reference was destroyed (DELETE, or pool retention)
    recording_deleted_at timestamptz,
    CHECK (NOT in_flight OR status IN ('initiated', 'unknown'))
);
-- One call in flight per session, so a report always matches exactly one call.
CREATE UNIQUE INDEX calls_one_in_flight ON calls (session_id) WHERE in_flight;
CREATE INDEX calls_match ON calls (bridge, from_ix, to_ix) WHERE in_flight;
-- whether a call on a route already had its report (a later, different report about it is a duplicate)
CREATE INDEX calls_reported ON calls (bridge, from_ix, to_ix, created_at) WHERE report_id IS NOT NULL;
CREATE INDEX calls_by_session ON calls (session_id, created_at);
CREATE INDEX calls_overdue ON calls (created_at) WHERE in_flight;
CREATE INDEX calls_by_tenant ON calls (tenant_id, created_at);
-- the recording retention sweep finds recorded calls by age without reading the others
CREATE INDEX calls_recorded ON calls (created_at) WHERE recording_url IS NOT NULL;

-- A session's total cost (sessions.cost: the sum of its calls' known costs as a decimal string, null while
-- none is priced), kept wherever a call's cost is set.
CREATE FUNCTION session_cost() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET cost = (SELECT sum(c.cost)::text FROM calls c WHERE c.session_id = NEW.session_id)
    WHERE id = NEW.session_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER calls_session_cost AFTER UPDATE OF cost ON calls
    FOR EACH ROW WHEN (NEW.cost IS DISTINCT FROM OLD.cost) EXECUTE FUNCTION session_cost();

-- Every body the provider posts with a good token, stored before it is answered. Partitioned by the day it
-- arrived, as events are (see below): a day's partition is dropped once the whole day is older than
-- MASKING_REPORT_RETENTION_DAYS and it holds no pending report.
CREATE TABLE provider_reports (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    body         bytea NOT NULL,
    outcome      text NOT NULL DEFAULT 'pending'
                 CHECK (outcome IN ('pending', 'matched', 'unmatched', 'duplicate', 'unparseable')),
    bridge       text,
    tenant_id    bigint REFERENCES tenants ON DELETE SET NULL,
    call_id      uuid REFERENCES calls ON DELETE SET NULL,
    -- why a report matched no call or was a duplicate (same_report, call_already_reported, no_call,
    -- before_call, times_in_future, matching_failed); null when matched
    reason       text,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE provider_reports_default PARTITION OF provider_reports DEFAULT;
-- A report is looked up by its id alone only while pending (matching, settling): this index of each
-- partition holds just those few rows.
CREATE INDEX provider_reports_pending ON provider_reports (id) WHERE outcome = 'pending';
CREATE INDEX provider_reports_unmatched ON provider_reports (tenant_id, id) WHERE outcome = 'unmatched';

-- A report's identity (SHA-256 of its normalized fields, not of its sending time), claimed by the first
-- copy: any later copy is a duplicate whatever calls came since.
CREATE TABLE report_keys (
    key          bytea PRIMARY KEY CHECK (length(key) = 32),
    report_id    bigint NOT NULL,
    received_at  timestamptz NOT NULL
);
-- Call links: an agent's page that places a session's calls; the token is stored only as its SHA-256 hash.
CREATE TABLE call_links (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    session_id  uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    party       text NOT NULL CHECK (party IN ('agent', 'customer')),
    max_uses    integer NOT NULL CHECK (max_uses >= 1),
    uses        integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- the times its party had been replaced when it was made (session_changes): a larger count ends it
    party_changes integer NOT NULL DEFAULT 0 CHECK (party_changes >= 0)
);
CREATE INDEX call_links_by_session ON call_links (session_id);

-- The ops console's server-side sessions (Litestar's session store); the cookie's id is stored only hashed.
CREATE TABLE console_sessions (
    id_hash     bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    data        bytea NOT NULL,
    expires_at  timestamptz
);
CREATE INDEX console_sessions_due ON console_sessions (expires_at);

-- Events written with their change (the outbox behind GET /v1/events and webhooks), webhook endpoints,
-- their deliveries and attempts; pools below their headroom alert.
-- Events, deliveries and attempts are partitioned by day (service/db/partitions.py): the sweeper creates
-- each UTC day's partition (table_pYYYYMMDD) a few days ahead and drops it once the whole day is older than
-- the event retention. A row no day's partition takes lands in the table's default partition, which the
-- sweeper empties into a day's partition when it creates it, or purges by DELETE past the retention.
-- A key on a partitioned table includes its partition key: hence (id, created_at) and the like.
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    type        text NOT NULL,
    created_at  timestamptz NOT NULL,
    data        jsonb NOT NULL,
    -- the writing transaction: the feed pages by (txid, id) and shows only transactions older than every
    -- one still running, so an event committed late never lands behind a cursor already handed out
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_feed ON events (tenant_id, txid, id);
-- a session's events (session.* name it in data.id, call.* in data.session_id), for its console page
CREATE INDEX events_subject ON events (tenant_id, (coalesce(data->>'session_id', data->>'id')), id)
    WHERE type LIKE 'session.%' OR type LIKE 'call.%';

CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    url              text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events           text[] NOT NULL CHECK (cardinality(events) > 0),
    description      text CHECK (length(description) <= 256),
    -- 'deleted': kept (secretless) so that an event written while it is deleted still finds it (migration 0010)
    status           text NOT NULL DEFAULT 'enabled'
        CHECK (status IN ('enabled', 'disabled', 'disabled_failing', 'deleted')),
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

-- One row per event and endpoint that wants it: pending until delivered or out of retries. Partitioned by
-- its event's day, so a day's deliveries are dropped with the day's events (no foreign key to events: with
-- one, PostgreSQL refuses to drop an events partition until it is detached, which first searches the
-- deliveries for rows still pointing at it).
CREATE TABLE webhook_deliveries (
    event_id          bigint NOT NULL,
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL,
    created_at        timestamptz NOT NULL,
    -- its event's created_at (the partition key)
    event_created_at  timestamptz NOT NULL,
    PRIMARY KEY (event_id, endpoint_id, event_created_at)
) PARTITION BY RANGE (event_created_at);
CREATE TABLE webhook_deliveries_default PARTITION OF webhook_deliveries DEFAULT;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at) WHERE status = 'pending';
-- the claim takes each endpoint's oldest due deliveries, endpoint by endpoint (fair across tenants, 0010)
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

-- Partitioned by the day of the attempt.
CREATE TABLE webhook_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    event_id         bigint NOT NULL,
    attempt          integer NOT NULL,
    status           text NOT NULL CHECK (status IN ('delivered', 'retrying', 'failed')),
    status_code      integer,
    error            text,
    duration_ms      integer NOT NULL,
    at               timestamptz NOT NULL,
    next_attempt_at  timestamptz,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE webhook_attempts_default PARTITION OF webhook_attempts DEFAULT;
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);

-- Pools whose headroom is at or below their alert level: one pool.low_headroom event per fall.
CREATE TABLE pool_alerts (
    tenant_id   bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    pool        text NOT NULL,
    alerted_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, pool)
);
-- Background jobs run once per period for the whole service (not per process): when each is next due.
CREATE TABLE job_turns (
    job     text PRIMARY KEY,
    due_at  timestamptz NOT NULL
);
-- Pools as first-class settings: a pool exists once it has a DID or a row here.
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
    -- false: a session or click asking for `record` is refused (recording_not_allowed)
    recording_allowed    boolean NOT NULL DEFAULT true,
    -- recordings' references are destroyed this many days after their call (null: kept)
    recording_retention_days integer CHECK (recording_retention_days BETWEEN 1 AND 3650),
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

-- Sessions refused per pool and minute (pool_exhausted), summed over every process for the console's
-- pools page; rows older than a day are deleted by the sweeper.
CREATE TABLE pool_refusals (
    tenant_id  bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    pool       text NOT NULL,
    minute     timestamptz NOT NULL,
    refused    integer NOT NULL,
    PRIMARY KEY (tenant_id, pool, minute)
);

-- The masked form of a number kept after retention: +919876543210 becomes +91******3210.
CREATE OR REPLACE FUNCTION mask_number(number text) RETURNS text LANGUAGE sql IMMUTABLE
    RETURN regexp_replace(number, '^(\+[0-9]{2})[0-9]*([0-9]{4})$', '\1******\2');

-- The audit log (rule 12): one row per ops action (console, API or command line), written in the
-- action's own transaction. Append-only: a trigger refuses UPDATE, TRUNCATE and every DELETE except the
-- retention purge's, which sets its cut-off in the transaction-local `masking.audit_purge_before` and may
-- delete only rows older than that. No foreign key to tenants: the record outlives what it describes.
-- Partitioned by day of `at` (service/db/partitions.py): retention drops a day's partition once the whole
-- day is older than MASKING_AUDIT_RETENTION_DAYS; the row trigger below is cloned onto every partition, and
-- each partition gets the TRUNCATE trigger too (the sweeper makes it with the partition).
CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    at              timestamptz NOT NULL,
    tenant_id       bigint,  -- NULL for a service-wide action (keys.rotate) or an unknown one (failed sign-in)
    -- who: an API key (its id and name), the console session of a key (its id), a command-line user, one of
    -- the service's own jobs (system: retention), or an unidentified client (anonymous: a failed sign-in)
    actor_kind      text NOT NULL CHECK (actor_kind IN ('api_key', 'console', 'command_line', 'system', 'anonymous')),
    actor_id        text NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 128),
    actor_name      text CHECK (length(actor_name) <= 128),
    action          text NOT NULL CHECK (action ~ '^[a-z_]+(\.[a-z_]+)*$' AND length(action) <= 64),
    target_type     text CHECK (length(target_type) <= 64),
    target_id       text CHECK (length(target_id) <= 256),
    reason          text CHECK (length(reason) <= 500),
    client_address  text CHECK (length(client_address) <= 64),
    request_id      text CHECK (length(request_id) <= 64),
    -- the writing transaction: GET /v1/audit pages by (txid, id) as the events feed does, so a row
    -- committed late never lands behind a cursor already handed out
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
CREATE INDEX audit_log_feed ON audit_log (tenant_id, txid, id);
CREATE INDEX audit_log_by_actor ON audit_log (tenant_id, actor_id, txid, id);
CREATE INDEX audit_log_by_action ON audit_log (tenant_id, action, txid, id);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.at < coalesce(nullif(current_setting('masking.audit_purge_before', true), '')::timestamptz,
                             '-infinity') THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Rows leave the audit log only through its retention purge (MASKING_AUDIT_RETENTION_DAYS).';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Every data key id a ciphertext in this database may name (service/crypto.py): a process refuses to start
-- without them all, and a rotation removes a key's row once no ciphertext names it any more.
CREATE TABLE data_keys (
    id        text PRIMARY KEY,
    added_at  timestamptz NOT NULL DEFAULT now()
);

-- A session is created in one statement (service/db/sessions/create.py, CREATE): an attempt that picked a
-- DID but made no session calls lost_race(), which fails the statement, so the bindings it made are undone.
CREATE FUNCTION lost_race(did text) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'this allocation lost its DID to a concurrent request; the service tries again'
        USING ERRCODE = 'MS001', DETAIL = did;
END
$$;
