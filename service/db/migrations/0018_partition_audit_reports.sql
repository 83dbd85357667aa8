-- The audit log and provider reports become tables partitioned by day (service/db/partitions.py), as events
-- did in 0014: retention drops a whole day's partition instead of deleting its rows one by one.
--
-- Each table is rebuilt: the old one is renamed aside, a partitioned table takes its name with only its
-- default partition, every row is copied (ids kept, the identity continuing after them) and the old table is
-- dropped. The keys include the partition key: (id, at) and (id, received_at). Cost: one full rewrite of the
-- two tables inside this migration's transaction, holding them locked meanwhile (seconds per million rows;
-- see 0014 for how a big deployment would copy in batches instead). Copied rows land in the default
-- partition; the sweeper purges them by DELETE as they age out.
--
-- The audit log stays append-only: the row trigger on the partitioned table is cloned onto every partition,
-- and the TRUNCATE trigger is made on the parent, its default partition and (by the sweeper) each day's.

ALTER TABLE audit_log RENAME TO audit_log_old;
ALTER INDEX audit_log_pkey RENAME TO audit_log_old_pkey;
ALTER SEQUENCE audit_log_id_seq RENAME TO audit_log_old_id_seq;
DROP INDEX audit_log_feed, audit_log_by_actor, audit_log_by_action, audit_log_at;

CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    at              timestamptz NOT NULL,
    tenant_id       bigint,
    actor_kind      text NOT NULL CHECK (actor_kind IN ('api_key', 'console', 'command_line')),
    actor_id        text NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 128),
    actor_name      text CHECK (length(actor_name) <= 128),
    action          text NOT NULL CHECK (action ~ '^[a-z_]+(\.[a-z_]+)*$' AND length(action) <= 64),
    target_type     text CHECK (length(target_type) <= 64),
    target_id       text CHECK (length(target_id) <= 256),
    reason          text CHECK (length(reason) <= 500),
    client_address  text CHECK (length(client_address) <= 64),
    request_id      text CHECK (length(request_id) <= 64),
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
INSERT INTO audit_log (id, at, tenant_id, actor_kind, actor_id, actor_name, action, target_type, target_id, reason,
                       client_address, request_id, txid) OVERRIDING SYSTEM VALUE
    SELECT id, at, tenant_id, actor_kind, actor_id, actor_name, action, target_type, target_id, reason,
           client_address, request_id, txid
    FROM audit_log_old;
SELECT setval('audit_log_id_seq', coalesce(max(id), 0) + 1, false) FROM audit_log;
DROP TABLE audit_log_old;
CREATE INDEX audit_log_feed ON audit_log (tenant_id, txid, id);
CREATE INDEX audit_log_by_actor ON audit_log (tenant_id, actor_id, txid, id);
CREATE INDEX audit_log_by_action ON audit_log (tenant_id, action, txid, id);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

ALTER TABLE provider_reports RENAME TO provider_reports_old;
ALTER INDEX provider_reports_pkey RENAME TO provider_reports_old_pkey;
ALTER SEQUENCE provider_reports_id_seq RENAME TO provider_reports_old_id_seq;
DROP INDEX provider_reports_pending, provider_reports_unmatched;

CREATE TABLE provider_reports (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    body         bytea NOT NULL,
    outcome      text NOT NULL DEFAULT 'pending'
                 CHECK (outcome IN ('pending', 'matched', 'unmatched', 'duplicate', 'unparseable')),
    bridge       text,
    tenant_id    bigint REFERENCES tenants ON DELETE SET NULL,
    call_id      uuid REFERENCES calls ON DELETE SET NULL,
    reason       text,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE TABLE provider_reports_default PARTITION OF provider_reports DEFAULT;
INSERT INTO provider_reports (id, received_at, body, outcome, bridge, tenant_id, call_id, reason)
    OVERRIDING SYSTEM VALUE
    SELECT id, received_at, body, outcome, bridge, tenant_id, call_id, reason FROM provider_reports_old;
SELECT setval('provider_reports_id_seq', coalesce(max(id), 0) + 1, false) FROM provider_reports;
DROP TABLE provider_reports_old;
CREATE INDEX provider_reports_pending ON provider_reports (id) WHERE outcome = 'pending';
CREATE INDEX provider_reports_unmatched ON provider_reports (tenant_id, id) WHERE outcome = 'unmatched';
