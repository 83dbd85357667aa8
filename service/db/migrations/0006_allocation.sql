-- Allocation that costs the same at any density: an approximate count of active sessions per DID, kept by
-- triggers in sharded rows (no allocation waits on another's counter), and an index for geo-matched picks.
CREATE TABLE did_load (
    did       text NOT NULL,
    shard     smallint NOT NULL,
    sessions  integer NOT NULL,
    PRIMARY KEY (did, shard)
);

CREATE FUNCTION count_did_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Net change per DID for the whole statement, applied in DID order (so two statements never wait on
    -- each other's rows in opposite orders) to one random shard of each DID.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO did_load AS l (did, shard, sessions)
        SELECT did, floor(random() * 8)::smallint, count(*) FROM new_rows WHERE status = 'active'
        GROUP BY did ORDER BY did
        ON CONFLICT (did, shard) DO UPDATE SET sessions = l.sessions + excluded.sessions;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO did_load AS l (did, shard, sessions)
        SELECT did, floor(random() * 8)::smallint, sum(change) FROM (
            SELECT did, -1 AS change FROM old_rows WHERE status = 'active'
            UNION ALL SELECT did, 1 FROM new_rows WHERE status = 'active') AS c
        GROUP BY did HAVING sum(change) <> 0 ORDER BY did
        ON CONFLICT (did, shard) DO UPDATE SET sessions = l.sessions + excluded.sessions;
    ELSE
        INSERT INTO did_load AS l (did, shard, sessions)
        SELECT did, floor(random() * 8)::smallint, -count(*) FROM old_rows WHERE status = 'active'
        GROUP BY did ORDER BY did
        ON CONFLICT (did, shard) DO UPDATE SET sessions = l.sessions + excluded.sessions;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_load_insert AFTER INSERT ON sessions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_did_load();
CREATE TRIGGER sessions_load_update AFTER UPDATE ON sessions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_did_load();
CREATE TRIGGER sessions_load_delete AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_did_load();

-- The triggers hold their lock on sessions until this transaction commits, so the count below misses nothing.
INSERT INTO did_load (did, shard, sessions)
SELECT did, 0, count(*) FROM sessions WHERE status = 'active' GROUP BY did;

CREATE INDEX dids_pick_geo ON dids (tenant_id, pool, status, country, slot);
