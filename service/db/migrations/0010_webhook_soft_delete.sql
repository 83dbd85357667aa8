-- A deleted webhook endpoint is kept, marked 'deleted' and without its secrets: a DELETE raced the
-- transactions writing an event and its delivery to that endpoint (a foreign key violation, a 500 for
-- the session create) and the worker's locks on its deliveries (a deadlock).
ALTER TABLE webhook_endpoints DROP CONSTRAINT webhook_endpoints_status_check,
    ADD CONSTRAINT webhook_endpoints_status_check
        CHECK (status IN ('enabled', 'disabled', 'disabled_failing', 'deleted'));
