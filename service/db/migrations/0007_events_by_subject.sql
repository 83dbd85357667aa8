-- A session's events on its console page: session.* events name the session in data.id, call.* events in
-- data.session_id; this index finds a session's newest events without reading the tenant's whole feed.
-- Built inside the migration's transaction (no CONCURRENTLY), so event writes wait for it: the events
-- table holds at most MASKING_EVENT_RETENTION_DAYS of events.
CREATE INDEX events_subject ON events (tenant_id, (coalesce(data->>'session_id', data->>'id')), id)
    WHERE type LIKE 'session.%' OR type LIKE 'call.%';
