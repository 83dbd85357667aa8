-- Recordings and session costs (issue 22).
-- calls.recording_url keeps holding the provider's reference to a call's recording (never handed out: the
-- Call resource shows the service's own URL); recording_deleted_at says when that reference was destroyed
-- (DELETE /v1/calls/{id}/recording, or the pool's recording_retention_days). lookup_outcome: how the last
-- call-log lookup of a call still waiting for its report went (not_found, ambiguous, log_unavailable).
ALTER TABLE calls
    ADD COLUMN recording_deleted_at timestamptz,
    ADD COLUMN lookup_outcome text;
-- The retention sweep finds recorded calls by age without reading the others. Built inside the migration's
-- transaction: calls that carry a recording are a small share of the table.
CREATE INDEX calls_recorded ON calls (created_at) WHERE recording_url IS NOT NULL;

-- A pool may forbid recording, and forget recordings after some days (null: keep them).
ALTER TABLE pool_settings
    ADD COLUMN recording_allowed boolean NOT NULL DEFAULT true,
    ADD COLUMN recording_retention_days integer CHECK (recording_retention_days BETWEEN 1 AND 3650);

-- A session's total cost: the sum of its calls' known costs as the resource shows it (a decimal string;
-- null while no call is priced), kept by a trigger wherever a call's cost is set.
ALTER TABLE sessions ADD COLUMN cost text;

CREATE FUNCTION session_cost() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET cost = (SELECT sum(c.cost)::text FROM calls c WHERE c.session_id = NEW.session_id)
    WHERE id = NEW.session_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER calls_session_cost AFTER UPDATE OF cost ON calls
    FOR EACH ROW WHEN (NEW.cost IS DISTINCT FROM OLD.cost) EXECUTE FUNCTION session_cost();

UPDATE sessions s SET cost = t.total
FROM (SELECT session_id, sum(cost)::text AS total FROM calls WHERE cost IS NOT NULL GROUP BY session_id) t
WHERE s.id = t.session_id;
