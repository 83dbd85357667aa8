-- A deleted webhook endpoint is kept, marked 'deleted' and without its secrets: a DELETE raced the
-- transactions writing an event and its delivery to that endpoint (a foreign key violation, a 500 for
-- the session create) and the worker's locks on its deliveries (a deadlock).
ALTER TABLE webhook_endpoints DROP CONSTRAINT webhook_endpoints_status_check,
    ADD CONSTRAINT webhook_endpoints_status_check
        CHECK (status IN ('enabled', 'disabled', 'disabled_failing', 'deleted'));

-- The claim is fair across tenants and endpoints: it takes each endpoint's oldest due deliveries by this
-- index rather than the oldest due deliveries overall (which one tenant's backlog could fill).
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
