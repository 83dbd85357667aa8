-- The audit log (rule 12): one row per ops action (console, API or command line), written in the
-- action's own transaction. Append-only: a trigger refuses UPDATE, TRUNCATE and every DELETE except the
-- retention purge's, which sets its cut-off in the transaction-local `masking.audit_purge_before` and may
-- delete only rows older than that. No foreign key to tenants: the record outlives what it describes.
CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL,
    tenant_id       bigint,  -- NULL for a service-wide action (keys.rotate)
    -- who: an API key (its id and name), the console session of a key (its id), or a command-line user
    actor_kind      text NOT NULL CHECK (actor_kind IN ('api_key', 'console', 'command_line')),
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
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id()
);
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
