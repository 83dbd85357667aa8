-- INGEST: store a parsed provider report and apply it, in one statement: one round trip, atomic, so
-- nothing is acknowledged unstored (DESIGN rule 5) and nothing is half-applied. Loaded once by
-- service/db/reports.py, which fills in the three names in braces below: the Call resource's columns,
-- the one end-session rule (service/db/sessions/end.py) and the one event writer (service/db/events.py).
WITH
-- The report's id: the pending row being re-matched (:report_id), else a new one.
rid AS (
    SELECT coalesce(:report_id::bigint, nextval(pg_get_serial_sequence('provider_reports', 'id'))) AS id),
-- DESIGN rule 5 (the same report twice has one effect): the report's key (a hash of what it reports)
-- goes into report_keys once; a copy finds it taken (a concurrent copy waits for the first one's
-- commit) and is a duplicate, whatever came since.
claimed AS (
    INSERT INTO report_keys (key, report_id, received_at) SELECT :key, rid.id, :now FROM rid
    ON CONFLICT (key) DO NOTHING RETURNING report_id),
-- The call the report names by its `mid`, on the report's bridge.
named AS (
    SELECT id FROM calls WHERE id = :mid::uuid AND bridge = :bridge),
-- Else contract rule 1 (no crossed lines: (bridge, from, to) names one session): the newest in-flight
-- call on it. The report's numbers come as blind indexes under the DID's tenant (service/db/sealed.py).
target AS (
    SELECT coalesce(
        (SELECT id FROM named),
        (SELECT c.id FROM calls c
         WHERE c.in_flight AND c.bridge = :bridge AND c.from_ix = :from_ix AND c.to_ix = :to_ix
           AND NOT EXISTS (SELECT 1 FROM named)
         ORDER BY c.created_at DESC LIMIT 1)) AS id),
-- The call, locked, and whether the report may apply to it: it was placed no later than the report's
-- earliest time plus the clock tolerance (a report never completes a call placed after the
-- conversation it describes), and no time of the report is in the future. Nor is the report a re-send
-- (docs/provider.md, "Re-sent reports"): it agrees with the report that finished an earlier call on the
-- route in all a re-send cannot change (durations, status in any case, its times where both have them),
-- and this call was placed after that earlier conversation ended (less the clock tolerance).
candidate AS (
    SELECT c.id AS call_id,
           (:earliest::timestamptz IS NULL OR c.created_at <= :earliest::timestamptz + :tolerance::interval)
           AND NOT EXISTS (
               SELECT 1 FROM calls p LEFT JOIN provider_reports r ON r.id = p.report_id
               WHERE p.report_id IS NOT NULL AND p.bridge = c.bridge AND p.from_ix = c.from_ix
                 AND p.to_ix = c.to_ix AND p.created_at > :since AND p.created_at < c.created_at
                 AND p.duration_seconds IS NOT DISTINCT FROM :duration_seconds::integer
                 AND p.billing_seconds IS NOT DISTINCT FROM :billing_seconds::integer
                 AND upper(p.provider_status) IS NOT DISTINCT FROM upper(:provider_status::text)
                 AND (:started_at::timestamptz IS NULL OR p.started_at IS NULL OR p.started_at = :started_at::timestamptz)
                 AND (:ended_at::timestamptz IS NULL OR p.ended_at IS NULL OR p.ended_at = :ended_at::timestamptz)
                 AND c.created_at > coalesce(p.ended_at, r.received_at) - :tolerance::interval) AS in_time
    FROM calls c JOIN target t ON c.id = t.id
    WHERE EXISTS (SELECT 1 FROM claimed) AND NOT :future::boolean AND c.in_flight
    FOR UPDATE OF c),
-- The call completed or missed from the report (its in-flight slot freed: DESIGN rule 4).
applied AS (
    UPDATE calls SET status = :status, in_flight = false, report_id = (SELECT id FROM rid),
        started_at = :started_at, ended_at = :ended_at, duration_seconds = :duration_seconds,
        billing_seconds = :billing_seconds, recording_url = :recording_url, hangup_by = :hangup_by,
        provider_status = :provider_status, provider_status1 = :provider_status1,
        provider_status2 = :provider_status2, source = :source, cost = :cost::numeric,
        billing_pulse_seconds = :billing_pulse_seconds::integer
    FROM candidate WHERE calls.id = candidate.call_id AND candidate.in_time
    RETURNING {call}),
-- Contract (max_calls): the session closes (max_calls_reached) when this is its max_calls-th completed
-- call; the CTEs `closed` and `closed_freed` are the one end-session rule.
{end_at_max_calls},
-- A call that already had its report: a later, different report about it is a duplicate.
prior AS (
    SELECT 1 FROM calls c
    WHERE EXISTS (SELECT 1 FROM claimed) AND NOT EXISTS (SELECT 1 FROM candidate WHERE in_time)
      AND c.report_id IS NOT NULL AND c.bridge = :bridge
      AND (c.id = (SELECT id FROM named)
           OR (NOT EXISTS (SELECT 1 FROM named) AND c.from_ix = :from_ix AND c.to_ix = :to_ix
               AND c.created_at > :since))
      AND (:earliest::timestamptz IS NULL OR c.created_at <= :earliest::timestamptz + :tolerance::interval)
    LIMIT 1),
-- The report's outcome and reason, as GET /v1/reports shows them.
verdict AS (
    SELECT rid.id,
        CASE WHEN NOT EXISTS (SELECT 1 FROM claimed) THEN 'duplicate'
             WHEN EXISTS (SELECT 1 FROM candidate WHERE in_time) THEN 'matched'
             WHEN EXISTS (SELECT 1 FROM prior) THEN 'duplicate'
             ELSE 'unmatched' END AS outcome,
        CASE WHEN NOT EXISTS (SELECT 1 FROM claimed) THEN 'same_report'
             WHEN EXISTS (SELECT 1 FROM candidate WHERE in_time) THEN NULL
             WHEN EXISTS (SELECT 1 FROM prior) THEN 'call_already_reported'
             WHEN :future::boolean THEN 'times_in_future'
             WHEN EXISTS (SELECT 1 FROM candidate) THEN 'before_call'
             ELSE 'no_call' END AS reason
    FROM rid),
-- DESIGN rule 5: the report row with its outcome, scoped to its DID's tenant (rule 6); a pending row
-- being re-matched is updated in place.
stored AS (
    INSERT INTO provider_reports (id, body, received_at, outcome, reason, bridge, call_id, tenant_id)
    OVERRIDING SYSTEM VALUE
    SELECT v.id, :body, :now, v.outcome, v.reason, :bridge, (SELECT id FROM applied),
           coalesce((SELECT tenant_id FROM applied), (SELECT tenant_id FROM dids WHERE number = :bridge))
    FROM verdict v
    ON CONFLICT (id) DO UPDATE SET outcome = EXCLUDED.outcome, reason = EXCLUDED.reason, bridge = EXCLUDED.bridge,
        call_id = EXCLUDED.call_id, tenant_id = EXCLUDED.tenant_id
    RETURNING id, outcome, reason, tenant_id, received_at, bridge, call_id),
-- DESIGN rule 8 (an event is written with its change): the call's new status, its session closed at
-- max_calls, or the report matching nothing; the CTEs `emitted` and `emitted_deliveries`.
{events}
SELECT s.id AS report_id, s.outcome, s.reason, a.* FROM stored s LEFT JOIN applied a ON true
