-- Numbers at rest, step 2 of 2 (contract): once every row has its sealed columns (`masking migrate` fills
-- them before it applies this), the clear ones go, and the keys and indexes move to the blind indexes.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM sessions WHERE customer_mask IS NULL OR agent_mask IS NULL)
       OR EXISTS (SELECT 1 FROM bindings WHERE number_ix IS NULL OR peer_ix IS NULL)
       OR EXISTS (SELECT 1 FROM calls WHERE from_mask IS NULL OR to_mask IS NULL) THEN
        RAISE EXCEPTION 'numbers are still in clear: run `masking migrate` with the service''s keys (it seals them first)';
    END IF;
END
$$;

ALTER TABLE sessions DROP COLUMN customer, DROP COLUMN agent,
    ALTER COLUMN customer_mask SET NOT NULL, ALTER COLUMN agent_mask SET NOT NULL,
    ADD CHECK ((customer_ct IS NULL) = (customer_ix IS NULL) AND (agent_ct IS NULL) = (agent_ix IS NULL)),
    ADD CHECK (customer_ix <> agent_ix OR redacted_at IS NOT NULL);
CREATE UNIQUE INDEX sessions_one_active_per_order
    ON sessions (tenant_id, order_id, customer_ix, agent_ix) WHERE status = 'active';
CREATE INDEX sessions_by_customer ON sessions (tenant_id, customer_ix);
CREATE INDEX sessions_by_agent ON sessions (tenant_id, agent_ix);

ALTER TABLE bindings DROP COLUMN number, DROP COLUMN peer,
    ALTER COLUMN number_ix SET NOT NULL, ALTER COLUMN peer_ix SET NOT NULL,
    ADD PRIMARY KEY (number_ix, did), ADD CHECK (number_ix <> peer_ix);

ALTER TABLE calls DROP COLUMN from_number, DROP COLUMN to_number,
    ALTER COLUMN from_mask SET NOT NULL, ALTER COLUMN to_mask SET NOT NULL;
CREATE INDEX calls_match ON calls (bridge, from_ix, to_ix) WHERE in_flight;
CREATE INDEX calls_reported ON calls (bridge, from_ix, to_ix, created_at) WHERE report_id IS NOT NULL;
