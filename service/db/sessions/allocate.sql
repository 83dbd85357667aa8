-- ALLOCATE: one attempt to create a session on a DID of its pool, in one statement. Its cost does not
-- depend on how many sessions the pool or its DIDs hold: a few index probes, two upserts, one insert.
-- Loaded twice by service/db/sessions/create.py, which fills in the rules it shares with exhaustion.sql
-- (rules.sql: the CTEs geo and barred), the Session resource's columns and, for a create (CREATE), the
-- repeat check before it, and the session.created event and the lost-race check after it (the markers
-- repeat, guard, returning and finish); a reassignment's move runs it bare (ALLOCATE).
-- Party numbers come sealed (service/db/sealed.py): rule 1 compares their blind indexes (_ix).
-- `bound` < 2 or no session row means the attempt lost a race and must roll back; no `picked` at all
-- means no DID of the pool is eligible (the probes wrap the whole ring of slots).
WITH
{repeat}
{rules},
-- The DIDs contract rules 1 and 3 bar (barred), plus the DIDs earlier attempts lost.
ruled AS (SELECT did FROM barred UNION ALL SELECT unnest(:tried::text[])),
-- Where on the ring of DID slots each random choice probes: the first at :slot, the rest drawn here.
slots AS (SELECT CASE WHEN i = 1 THEN :slot::float8 ELSE random() END AS at FROM generate_series(1, :sample) AS i),
-- Contract rule 2 (the tenant's pool, active DIDs) and rule 5 (spread): per slot, the first eligible DIDs at or after it (wrapping around), by an index probe;
-- one pair of branches per geo mode, and the planner runs only those whose one-time filter holds.
-- Plus contract rule 4: the pair's previous DID (sticky), when it is still eligible.
sample AS (
    SELECT p.number, false AS sticky FROM slots s, LATERAL (
        SELECT number FROM (
        (SELECT d.number FROM dids d
         WHERE d.tenant_id = :tenant_id AND d.pool = :pool AND d.status = 'active'
           AND d.number NOT IN (SELECT did FROM ruled) AND (SELECT NOT geo.only FROM geo)
           AND d.slot >= s.at ORDER BY d.slot LIMIT :window)
        UNION ALL
        (SELECT d.number FROM dids d
         WHERE d.tenant_id = :tenant_id AND d.pool = :pool AND d.status = 'active'
           AND d.number NOT IN (SELECT did FROM ruled) AND (SELECT NOT geo.only FROM geo)
           AND d.slot < s.at ORDER BY d.slot LIMIT :window)
        UNION ALL
        (SELECT d.number FROM dids d
         WHERE d.tenant_id = :tenant_id AND d.pool = :pool AND d.status = 'active' AND d.country = :country
           AND d.number NOT IN (SELECT did FROM ruled) AND (SELECT geo.only FROM geo)
           AND d.slot >= s.at ORDER BY d.slot LIMIT :window)
        UNION ALL
        (SELECT d.number FROM dids d
         WHERE d.tenant_id = :tenant_id AND d.pool = :pool AND d.status = 'active' AND d.country = :country
           AND d.number NOT IN (SELECT did FROM ruled) AND (SELECT geo.only FROM geo)
           AND d.slot < s.at ORDER BY d.slot LIMIT :window)
        ) AS ring LIMIT :window) AS p
    UNION ALL
    (SELECT d.number, true FROM bindings b JOIN dids d ON d.number = b.did, geo
     WHERE b.number_ix = :customer_ix AND b.peer_ix = :agent_ix
       AND d.tenant_id = :tenant_id AND d.pool = :pool AND d.status = 'active'
       AND (NOT geo.only OR d.country = :country) AND d.number NOT IN (SELECT did FROM ruled))
),
-- Each candidate's approximate load, from its did_load shards (no hot counter row: see DESIGN, Scale).
loads AS (
    SELECT s.number, s.sticky,
           (SELECT coalesce(sum(l.sessions), 0) FROM did_load l WHERE l.did = s.number) AS load
    FROM sample s
),
-- Contract rules 4 and 5: the sticky DID, else the less loaded of the random candidates: concurrent requests draw different
-- candidates, so they do not all go to one DID, and the busiest DID stays close to the mean.
pick AS (SELECT number FROM loads WHERE {guard} ORDER BY sticky DESC, load, random() LIMIT 1),
-- DESIGN rule 1 (contract rules 1 and 3), enforced by the database: the binding upsert takes over a row only when it has ended,
-- and only after the cool-off unless the peer is the same; whatever the candidate query saw.
bound AS (
    INSERT INTO bindings (number_ix, did, peer_ix, session_id, ends_at)
    SELECT v.number_ix, pick.number, v.peer_ix, :session_id, :expires_at
    FROM pick, (VALUES (:customer_ix::bytea, :agent_ix::bytea), (:agent_ix, :customer_ix)) AS v(number_ix, peer_ix)
    ORDER BY v.number_ix
    ON CONFLICT (number_ix, did) DO UPDATE
        SET peer_ix = excluded.peer_ix, session_id = excluded.session_id, ends_at = excluded.ends_at
        WHERE bindings.ends_at <= :now
          AND (bindings.peer_ix = excluded.peer_ix OR bindings.ends_at <= :now - :cooloff::interval)
    RETURNING 1
),
-- The session, only when both numbers were bound and the DID is still active. A share lock on the DID
-- row: a concurrent retire (which locks it for update) either waits for this session and sees it, or
-- wins, and then this re-check of the status fails. One active session per order and pair (a repeat).
created AS (
    INSERT INTO sessions (id, tenant_id, order_id, customer_ct, customer_ix, customer_mask, agent_ct, agent_ix,
                          agent_mask, did, pool, created_at, expires_at, record, max_call_minutes, max_calls, metadata)
    SELECT :session_id, :tenant_id, :order_id, :customer_ct, :customer_ix, :customer_mask, :agent_ct, :agent_ix,
           :agent_mask, pick.number, :pool, :now, :expires_at, :record, :max_call_minutes, :max_calls, :metadata
    FROM pick
    WHERE (SELECT count(*) FROM bound) = 2
      AND EXISTS (SELECT 1 FROM dids d WHERE d.number = pick.number AND d.status = 'active' FOR KEY SHARE)
    ON CONFLICT (tenant_id, order_id, customer_ix, agent_ix) WHERE status = 'active' DO NOTHING
    RETURNING {session}{returning}
)
{finish}
