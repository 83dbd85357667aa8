-- EXHAUSTION: why a pool has no DID for a pair, counted per rule (contract rules 1 to 3), for pool_exhausted's
-- details. Its rules are allocate.sql's (rules.sql, in braces), so the counts tell why allocation found none.
-- Loaded once by service/db/sessions/create.py.
WITH
{rules},
-- Each barred DID once: busy when either number is bound on it now, else cooling off.
ruled AS (SELECT did, bool_or(busy) AS busy FROM barred GROUP BY did),
d AS (
    SELECT d.status, (geo.only AND d.country <> :country) AS foreign_country, r.busy
    FROM dids d CROSS JOIN geo LEFT JOIN ruled r ON r.did = d.number
    WHERE d.tenant_id = :tenant_id AND d.pool = :pool
)
SELECT count(*)::int AS pool_dids,
       count(*) FILTER (WHERE status <> 'active')::int AS not_active,
       count(*) FILTER (WHERE status = 'active' AND foreign_country)::int AS other_country,
       count(*) FILTER (WHERE status = 'active' AND NOT foreign_country AND busy)::int AS party_busy,
       count(*) FILTER (WHERE status = 'active' AND NOT foreign_country AND NOT busy)::int AS cooling_off
FROM d
