-- A call link belongs to the party it was made for: it remembers how many times that party had been
-- replaced (session_changes rows of its session and party) when it was minted, and is dead once the count
-- grows. Links made before this migration are counted by time, which is exact for all but a link minted in
-- the same instant as a change.
ALTER TABLE call_links ADD COLUMN party_changes integer NOT NULL DEFAULT 0 CHECK (party_changes >= 0);
UPDATE call_links l SET party_changes = (
    SELECT count(*) FROM session_changes c
    WHERE c.session_id = l.session_id AND c.party = l.party AND c.at <= l.created_at);
