-- Two more kinds of actor in the audit log: the service itself (`system`: the recording retention sweep acting
-- on a pool's setting) and an unidentified client (`anonymous`: a failed console sign-in, where the key tried
-- is no identity). The new check is validated at once: the audit log holds ops actions, a small table.
-- The old check's name depends on the database's history (0018 made the partitioned table while the old one
-- still held `audit_log_actor_kind_check`), so it is found by what it checks; the new one has the plain name.
DO $$
DECLARE
    old_check text;
BEGIN
    FOR old_check IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'audit_log'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%actor_kind%'
    LOOP
        EXECUTE format('ALTER TABLE audit_log DROP CONSTRAINT %I', old_check);
    END LOOP;
END
$$;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_actor_kind_check
    CHECK (actor_kind IN ('api_key', 'console', 'command_line', 'system', 'anonymous'));
