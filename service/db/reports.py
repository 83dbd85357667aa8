"""SQL for the provider's reports: stored and settled in one statement (matched, duplicate, unmatched...)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec

from service.db import Conn, Query
from service.db.calls import CALL
from service.db.events import emit_ctes, session_json
from service.models import Call

INSERT_REPORT = "INSERT INTO provider_reports (body, received_at) VALUES ($1, $2) RETURNING id"
INSERT_UNPARSEABLE = (
    "INSERT INTO provider_reports (body, received_at, outcome) VALUES ($1, $2, 'unparseable') RETURNING id"
)
LOCK_REPORT = """
SELECT body, received_at FROM provider_reports WHERE id = $1 AND outcome = 'pending' FOR UPDATE SKIP LOCKED
"""
SETTLE_REPORT = """
UPDATE provider_reports SET outcome = $2, reason = $3 WHERE id = $1 AND outcome = 'pending'
"""


def report_json(alias: str) -> str:
    """A stored report row (alias) as the data of its report.unmatched event (body_text: its body as text)."""
    a = alias
    return f"""jsonb_build_object('id', {a}.id, 'received_at', {a}.received_at, 'bridge', {a}.bridge,
        'outcome', {a}.outcome, 'reason', {a}.reason, 'call_id', {a}.call_id, 'body', :body_text::text)"""


# A pending report that cannot be applied: settled unmatched with its bridge, and its DID's tenant told.
_GIVEN_UP_EVENT = f"SELECT r.tenant_id, 'report.unmatched' AS type, {report_json('r')} AS data FROM stored r"
GIVE_UP = Query(
    f"""
WITH stored AS (
    UPDATE provider_reports r SET outcome = 'unmatched', reason = :reason, bridge = :bridge,
        tenant_id = (SELECT tenant_id FROM dids WHERE number = :bridge)
    WHERE r.id = :report_id AND r.outcome = 'pending'
    RETURNING r.id, r.received_at, r.bridge, r.outcome, r.reason, r.call_id, r.tenant_id),
{emit_ctes("emitted", _GIVEN_UP_EVENT, ":now")}
SELECT count(*) FROM stored
"""
)

# Store a parsed report and apply it, in one statement (one round trip, atomic, so nothing is
# acknowledged unstored and nothing half-applied):
# - claimed: the report's key (a hash of what it reports) goes into report_keys once; a copy finds it
#   taken (a concurrent copy waits for the first one's commit) and is a duplicate, whatever came since.
# - candidate: the call `mid` names, else the newest in-flight call on (bridge, from, to), locked. It is
#   applied only if it was placed no later than the report's earliest time plus the clock tolerance: a
#   report never completes a call placed after the conversation it describes.
# - applied / closed: the call completed or missed from the report; its session closed at max_calls.
# - prior: a call that already had its report (a later, different report about it is a duplicate).
# - stored: the report row with its outcome and reason; for a pending row being re-matched (:report_id
#   given) the same row is updated.
INGEST = Query(
    f"""
WITH rid AS (
    SELECT coalesce(:report_id::bigint, nextval(pg_get_serial_sequence('provider_reports', 'id'))) AS id),
claimed AS (
    INSERT INTO report_keys (key, report_id, received_at) SELECT :key, rid.id, :now FROM rid
    ON CONFLICT (key) DO NOTHING RETURNING report_id),
named AS (
    SELECT id FROM calls WHERE id = :mid::uuid AND bridge = :bridge),
target AS (
    SELECT coalesce(
        (SELECT id FROM named),
        (SELECT c.id FROM calls c
         WHERE c.in_flight AND c.bridge = :bridge AND c.from_number = :from AND c.to_number = :to
           AND NOT EXISTS (SELECT 1 FROM named)
         ORDER BY c.created_at DESC LIMIT 1)) AS id),
candidate AS (
    SELECT c.id AS call_id,
           (:earliest::timestamptz IS NULL OR c.created_at <= :earliest::timestamptz + :tolerance::interval) AS in_time
    FROM calls c JOIN target t ON c.id = t.id
    WHERE EXISTS (SELECT 1 FROM claimed) AND NOT :future::boolean AND c.in_flight
    FOR UPDATE OF c),
applied AS (
    UPDATE calls SET status = :status, in_flight = false, report_id = (SELECT id FROM rid),
        started_at = :started_at, ended_at = :ended_at, duration_seconds = :duration_seconds,
        billing_seconds = :billing_seconds, recording_url = :recording_url, hangup_by = :hangup_by,
        provider_status = :provider_status, provider_status1 = :provider_status1,
        provider_status2 = :provider_status2
    FROM candidate WHERE calls.id = candidate.call_id AND candidate.in_time
    RETURNING {CALL}, tenant_id),
closed AS (
    UPDATE sessions s SET status = 'closed', close_reason = 'max_calls_reached', closed_at = :now
    FROM applied a
    WHERE s.id = a.session_id AND a.status = 'completed' AND s.status = 'active' AND s.expires_at > :now
      AND s.max_calls IS NOT NULL
      AND (SELECT count(*) FROM calls WHERE session_id = s.id AND status = 'completed') + 1 >= s.max_calls
    RETURNING s.id, s.tenant_id, {session_json("s")} AS data),
unbound AS (
    UPDATE bindings b SET ends_at = :now FROM closed WHERE b.session_id = closed.id AND b.ends_at > :now),
prior AS (
    SELECT 1 FROM calls c
    WHERE EXISTS (SELECT 1 FROM claimed) AND NOT EXISTS (SELECT 1 FROM candidate WHERE in_time)
      AND c.report_id IS NOT NULL AND c.bridge = :bridge
      AND (c.id = (SELECT id FROM named)
           OR (NOT EXISTS (SELECT 1 FROM named) AND c.from_number = :from AND c.to_number = :to
               AND c.created_at > :since))
      AND (:earliest::timestamptz IS NULL OR c.created_at <= :earliest::timestamptz + :tolerance::interval)
    LIMIT 1),
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
stored AS (
    INSERT INTO provider_reports (id, body, received_at, outcome, reason, bridge, call_id, tenant_id)
    OVERRIDING SYSTEM VALUE
    SELECT v.id, :body, :now, v.outcome, v.reason, :bridge, (SELECT id FROM applied),
           coalesce((SELECT tenant_id FROM applied), (SELECT tenant_id FROM dids WHERE number = :bridge))
    FROM verdict v
    ON CONFLICT (id) DO UPDATE SET outcome = EXCLUDED.outcome, reason = EXCLUDED.reason, bridge = EXCLUDED.bridge,
        call_id = EXCLUDED.call_id, tenant_id = EXCLUDED.tenant_id
    RETURNING id, outcome, reason, tenant_id, received_at, bridge, call_id),
-- the events of what this report did (issue 13), written in this same statement: the call's new
-- status, its session closed at max_calls, or the report matching nothing
{
        emit_ctes(
            "emitted",
            f'''
    SELECT a.tenant_id, 'call.' || a.status AS type, to_jsonb(a) - 'tenant_id' AS data FROM applied a
    UNION ALL SELECT c.tenant_id, 'session.closed', c.data FROM closed c
    UNION ALL SELECT r.tenant_id, 'report.unmatched', {report_json('r')}
    FROM stored r WHERE r.outcome = 'unmatched' ''',
            ":now",
        )
    }
SELECT s.id AS report_id, s.outcome, s.reason, a.* FROM stored s LEFT JOIN applied a ON true
"""
)


class Ingested(msgspec.Struct, frozen=True):
    """What storing a report did: its id, outcome and reason, and the call it finished (if any)."""

    report_id: int
    outcome: str
    reason: str | None
    call: Call | None
    tenant_id: int | None


class StoredReport(msgspec.Struct, frozen=True):
    """A stored report as the operator and ops see it."""

    id: int
    received_at: datetime
    body: bytes
    bridge: str | None
    outcome: str
    reason: str | None
    call_id: UUID | None


class Pending(msgspec.Struct, frozen=True):
    """A pending report's body and arrival, locked for matching."""

    body: bytes
    received_at: datetime


async def ingest_report(conn: Conn, values: dict[str, Any]) -> Ingested:
    """Store a parsed report and apply it to its call in one statement (INGEST's :names in values)."""
    row = await conn.fetchrow(INGEST.sql, *INGEST.args(values))
    assert row is not None, "the statement always returns the stored report"
    call = msgspec.convert(row, Call) if row["id"] is not None else None
    return Ingested(row["report_id"], row["outcome"], row["reason"], call, row["tenant_id"])


def as_text(body: bytes) -> str:
    """The body as the report.unmatched event shows it (as GET /v1/reports does; PostgreSQL text holds no NUL)."""
    return body.decode("utf-8", "replace").replace("\x00", "\ufffd")


def ingest_values(
    *, report_id: int | None, body: bytes, key: bytes, now: datetime, since: datetime, tolerance: timedelta
) -> dict[str, Any]:
    """The statement's values that do not come from the report's own fields."""
    return {
        "report_id": report_id,
        "body": body,
        "body_text": as_text(body),
        "key": key,
        "now": now,
        "since": since,
        "tolerance": tolerance,
    }


async def insert_unparseable(conn: Conn, body: bytes, received_at: datetime) -> int:
    """Store a body that names no call, settled as unparseable, in one statement."""
    report_id: int = await conn.fetchval(INSERT_UNPARSEABLE, body, received_at)
    return report_id


async def insert_report(conn: Conn, body: bytes, received_at: datetime) -> int:
    """Store a report's raw body as pending (when applying it failed), for the sweeper; return its id."""
    report_id: int = await conn.fetchval(INSERT_REPORT, body, received_at)
    return report_id


async def lock_report(conn: Conn, report_id: int) -> Pending | None:
    """A pending report, locked for matching (None if another process has it or it is done)."""
    row = await conn.fetchrow(LOCK_REPORT, report_id)
    return None if row is None else Pending(bytes(row["body"]), row["received_at"])


async def settle_report(conn: Conn, report_id: int, outcome: str, reason: str | None) -> None:
    """Give a pending report its final outcome without applying it (unparseable)."""
    await conn.execute(SETTLE_REPORT, report_id, outcome, reason)


async def give_up_report(
    conn: Conn, report_id: int, reason: str, bridge: str | None, body: bytes, now: datetime
) -> None:
    """Settle a pending report that cannot be applied as unmatched, emitting report.unmatched to its DID's tenant."""
    values = {"report_id": report_id, "reason": reason, "bridge": bridge, "body_text": as_text(body), "now": now}
    await conn.execute(GIVE_UP.sql, *GIVE_UP.args(values))


async def select_pending_reports(conn: Conn, older_than: datetime, limit: int) -> list[int]:
    """Reports stored but never matched (applying them failed, or an older version stored them)."""
    rows = await conn.fetch(
        "SELECT id FROM provider_reports WHERE outcome = 'pending' AND received_at <= $1 ORDER BY id LIMIT $2",
        older_than,
        limit,
    )
    return [r["id"] for r in rows]


async def select_reports(
    conn: Conn, tenant_id: int | None, outcomes: list[str], after_id: int | None, limit: int
) -> list[StoredReport]:
    """Reports with these outcomes: a tenant's (bridge on its DIDs), or with tenant_id None those on no DID."""
    rows = await conn.fetch(
        """
        SELECT id, received_at, body, bridge, outcome, reason, call_id FROM provider_reports
        WHERE outcome = ANY($2::text[])
          AND (tenant_id = $1 OR ($1::bigint IS NULL AND tenant_id IS NULL))
          AND ($3::bigint IS NULL OR id < $3)
        ORDER BY id DESC LIMIT $4
        """,
        tenant_id,
        outcomes,
        after_id,
        limit,
    )
    return [msgspec.convert(r, StoredReport) for r in rows]
