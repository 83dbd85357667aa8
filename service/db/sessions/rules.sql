-- The eligibility rules of a pool's DIDs for a pair, shared by allocate.sql (which picks a DID they leave)
-- and exhaustion.sql (which counts the DIDs each rules out), so both say the same: each holds it as its rules marker.
-- Contract rule 2 (geo-match): when the pool has an active DID in the customer's country, only those qualify.
geo AS (
    SELECT EXISTS (SELECT 1 FROM dids
                   WHERE tenant_id = :tenant_id AND pool = :pool AND status = 'active' AND country = :country) AS only
),
-- Contract rules 1 (no crossed lines) and 3 (cool-off): DIDs where either number is bound now (busy), or
-- ended a session with somebody else less than the cool-off ago (numbers by their blind indexes).
barred AS (
    SELECT did, ends_at > :now AS busy FROM bindings
    WHERE number_ix IN (:customer_ix, :agent_ix)
      AND (ends_at > :now OR (ends_at > :now - :cooloff::interval AND peer_ix NOT IN (:customer_ix, :agent_ix)))
)
