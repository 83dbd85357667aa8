-- A session is created in one statement (service/db/sessions/create.py, CREATE): an attempt that picked a
-- DID but made no session calls lost_race(), which fails the statement, so the bindings it made are undone.
CREATE FUNCTION lost_race(did text) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'this allocation lost its DID to a concurrent request; the service tries again'
        USING ERRCODE = 'MS001', DETAIL = did;
END
$$;
