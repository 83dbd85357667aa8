-- A report's identity (a hash of what it reports) is claimed once, whatever calls came since, so a
-- re-sent report is a duplicate; and an unmatched or duplicate report says why.
CREATE TABLE report_keys (
    key          bytea PRIMARY KEY CHECK (length(key) = 32),
    report_id    bigint NOT NULL,
    received_at  timestamptz NOT NULL
);

ALTER TABLE provider_reports ADD COLUMN reason text;
