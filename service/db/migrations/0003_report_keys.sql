-- A report's identity (a hash of what it reports) is claimed once, whatever calls came since, so a
-- re-sent report is a duplicate; and an unmatched or duplicate report says why.
CREATE TABLE report_keys (
    key          bytea PRIMARY KEY CHECK (length(key) = 32),
    report_id    bigint NOT NULL,
    received_at  timestamptz NOT NULL
);

ALTER TABLE provider_reports ADD COLUMN reason text;

-- Whether a call on a route already had its report (a later, different report about it is a duplicate):
-- an index lookup instead of a scan of every call.
CREATE INDEX calls_reported ON calls (bridge, from_number, to_number, created_at) WHERE report_id IS NOT NULL;
