-- Reconciliation (issue 22): where a call's outcome came from (`report` or `call_log`; NULL on a call an
-- older version finished, read as `report` when it has a report), its cost and billing pulse from the
-- provider's call log, and how often and when next the call log is asked about a call still waiting for
-- its report (the backoff). Nullable, or a constant default: adding them rewrites nothing.
ALTER TABLE calls
    ADD COLUMN source text,
    ADD COLUMN cost numeric,
    ADD COLUMN billing_pulse_seconds integer,
    ADD COLUMN lookups integer NOT NULL DEFAULT 0,
    ADD COLUMN lookup_at timestamptz;
