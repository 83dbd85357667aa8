-- The client's own words when it closes a session (POST /v1/sessions/{id}/close {"reason"}), shown as the
-- session's `close_note`; the API bounds it to 256 characters. Nullable and without a default: adding it
-- rewrites nothing and takes its lock only for a moment.
ALTER TABLE sessions ADD COLUMN close_note text;
