"""SQL for calls and the provider's reports."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from service.db import Conn

# Record the call before dialling. The session must be live, and its DID below its
# max_concurrent_calls (the DID row is locked so that clicks on one DID count in turn). One call in
# flight per session is the partial unique index calls_one_in_flight: a concurrent click on the same
# session gets a unique violation.
INSERT_CALL = """
WITH target AS (
    SELECT did FROM sessions
    WHERE id = $2 AND tenant_id = $1 AND status = 'active' AND expires_at > $8),
room AS (
    SELECT d.number FROM dids d JOIN target t ON d.number = t.did
    WHERE d.max_concurrent_calls IS NULL
       OR (SELECT count(*) FROM calls c WHERE c.bridge = d.number AND c.in_flight) < d.max_concurrent_calls
    FOR NO KEY UPDATE OF d),
s AS (
    UPDATE sessions SET calls_made = calls_made + 1 FROM room
    WHERE sessions.id = $2 AND sessions.did = room.number
    RETURNING sessions.id, sessions.did, sessions.customer, sessions.agent, sessions.record,
              sessions.max_call_minutes)
INSERT INTO calls (id, tenant_id, session_id, first, from_number, to_number, bridge, flow, record,
                   max_call_minutes, created_at)
SELECT $3, $1, s.id, $4,
       CASE WHEN $4 = 'agent' THEN s.agent ELSE s.customer END,
       CASE WHEN $5::text IS NOT NULL THEN 'flow:' || $5 WHEN $4 = 'agent' THEN s.customer ELSE s.agent END,
       s.did, $5, coalesce($6, s.record), coalesce($7, s.max_call_minutes), $8
FROM s
RETURNING *
"""


async def insert_call(
    conn: Conn,
    *,
    tenant_id: int,
    session_id: UUID,
    call_id: UUID,
    first: str,
    flow: str | None,
    record: bool | None,
    max_call_minutes: int | None,
    now: datetime,
) -> asyncpg.Record | None:
    """Record a call in a live session; None when the session is not live or its DID is at its call limit."""
    row: asyncpg.Record | None = await conn.fetchrow(
        INSERT_CALL, tenant_id, session_id, call_id, first, flow, record, max_call_minutes, now
    )
    return row


async def recent_calls(
    conn: Conn, tenant_id: int, session_id: object, now: datetime, window: timedelta
) -> asyncpg.Record:
    """Calls of the tenant in the last minute and of the session in the window, with the oldest of each."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        SELECT t.n AS tenant_calls, t.oldest AS tenant_oldest, s.n AS session_calls, s.oldest AS session_oldest
        FROM (SELECT count(*) AS n, min(created_at) AS oldest FROM calls
              WHERE tenant_id = $1 AND created_at > $3::timestamptz - interval '1 minute') t,
             (SELECT count(*) AS n, min(created_at) AS oldest FROM calls
              WHERE session_id = $2 AND created_at > $3::timestamptz - $4::interval) s
        """,
        tenant_id,
        session_id,
        now,
        window,
    )
    assert row is not None
    return row


async def record_answer(conn: Conn, call_id: UUID, status: str, in_flight: bool, message: str | None) -> asyncpg.Record:
    """Apply the provider's answer to a call that no report has finished yet; return the call as it is."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        WITH u AS (
            UPDATE calls SET status = $2, in_flight = $3, provider_message = $4
            WHERE id = $1 AND report_id IS NULL AND status = 'initiated' RETURNING *)
        SELECT * FROM u UNION ALL SELECT * FROM calls WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM u)
        """,
        call_id,
        status,
        in_flight,
        message,
    )
    assert row is not None
    return row


async def select_call(conn: Conn, tenant_id: int, call_id: UUID) -> asyncpg.Record | None:
    """One of the tenant's calls."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM calls WHERE id = $1 AND tenant_id = $2", call_id, tenant_id
    )
    return row


async def select_session_calls(conn: Conn, tenant_id: int, session_id: UUID) -> list[asyncpg.Record]:
    """A session's calls, oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM calls WHERE session_id = $1 AND tenant_id = $2 ORDER BY created_at, id", session_id, tenant_id
    )
    return rows


INSERT_REPORT = "INSERT INTO provider_reports (body, received_at) VALUES ($1, $2) RETURNING id"
LOCK_REPORT = "SELECT id, body FROM provider_reports WHERE id = $1 AND outcome = 'pending' FOR UPDATE SKIP LOCKED"
FIND_CALL_BY_ROUTE = """
SELECT * FROM calls WHERE bridge = $1 AND from_number = $2 AND to_number = $3 AND in_flight
ORDER BY created_at DESC LIMIT 1 FOR UPDATE
"""
FINISHED_CALL_EXISTS = """
SELECT EXISTS (SELECT 1 FROM calls WHERE bridge = $1 AND from_number = $2 AND to_number = $3
               AND report_id IS NOT NULL AND created_at > $4)
"""
SETTLE_REPORT = """
UPDATE provider_reports SET outcome = $2, bridge = $3, call_id = $4,
    tenant_id = coalesce($5, (SELECT tenant_id FROM dids WHERE number = $3))
WHERE id = $1
"""


async def insert_report(conn: Conn, body: bytes, received_at: datetime) -> int:
    """Store a report's raw body, durably, before anything else; return its id."""
    report_id: int = await conn.fetchval(INSERT_REPORT, body, received_at)
    return report_id


async def lock_report(conn: Conn, report_id: int) -> asyncpg.Record | None:
    """A pending report, locked for matching (None if another process has it or it is done)."""
    row: asyncpg.Record | None = await conn.fetchrow(LOCK_REPORT, report_id)
    return row


async def find_call_for_report(
    conn: Conn, mid: UUID | None, bridge: str, from_number: str, to_number: str
) -> asyncpg.Record | None:
    """The call a report is about, locked: by mid when given, else the in-flight call on (bridge, from, to)."""
    if mid is not None:
        by_mid: asyncpg.Record | None = await conn.fetchrow(
            "SELECT * FROM calls WHERE id = $1 AND bridge = $2 FOR UPDATE", mid, bridge
        )
        if by_mid is not None:
            return by_mid
    row: asyncpg.Record | None = await conn.fetchrow(FIND_CALL_BY_ROUTE, bridge, from_number, to_number)
    return row


async def finished_call_exists(conn: Conn, bridge: str, from_number: str, to_number: str, since: datetime) -> bool:
    """Whether a call on (bridge, from, to) already got its report recently (a later report is a duplicate)."""
    return bool(await conn.fetchval(FINISHED_CALL_EXISTS, bridge, from_number, to_number, since))


async def complete_call(conn: Conn, call_id: UUID, report_id: int, fields: dict[str, Any]) -> asyncpg.Record:
    """Finish a call from its report."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        UPDATE calls SET status = $3, in_flight = false, report_id = $2, started_at = $4, ended_at = $5,
            duration_seconds = $6, billing_seconds = $7, recording_url = $8, hangup_by = $9,
            provider_status = $10, provider_status1 = $11, provider_status2 = $12
        WHERE id = $1 RETURNING *
        """,
        call_id,
        report_id,
        fields["status"],
        fields["started_at"],
        fields["ended_at"],
        fields["duration_seconds"],
        fields["billing_seconds"],
        fields["recording_url"],
        fields["hangup_by"],
        fields["provider_status"],
        fields["provider_status1"],
        fields["provider_status2"],
    )
    assert row is not None
    return row


async def close_if_max_calls(conn: Conn, session_id: UUID, now: datetime) -> bool:
    """Close the session (max_calls_reached) when its completed calls reached max_calls."""
    row = await conn.fetchrow(
        """
        WITH s AS (
            UPDATE sessions SET status = 'closed', close_reason = 'max_calls_reached', closed_at = $2
            WHERE id = $1 AND status = 'active' AND expires_at > $2 AND max_calls IS NOT NULL
              AND (SELECT count(*) FROM calls WHERE session_id = $1 AND status = 'completed') >= max_calls
            RETURNING id),
        b AS (UPDATE bindings SET ends_at = $2 FROM s WHERE bindings.session_id = s.id AND bindings.ends_at > $2)
        SELECT id FROM s
        """,
        session_id,
        now,
    )
    return row is not None


async def settle_report(
    conn: Conn, report_id: int, outcome: str, bridge: str | None, call_id: UUID | None, tenant_id: int | None
) -> None:
    """Record what a report turned out to be."""
    await conn.execute(
        SETTLE_REPORT,
        report_id,
        outcome,
        bridge,
        call_id,
        tenant_id,
    )


async def select_pending_reports(conn: Conn, older_than: datetime, limit: int) -> list[int]:
    """Reports stored but never matched (a process died in between)."""
    rows = await conn.fetch(
        "SELECT id FROM provider_reports WHERE outcome = 'pending' AND received_at <= $1 ORDER BY id LIMIT $2",
        older_than,
        limit,
    )
    return [r["id"] for r in rows]


async def time_out_calls(conn: Conn, before: datetime, limit: int) -> list[UUID]:
    """Mark one batch of calls with no report since before as unknown, freeing their sessions."""
    rows = await conn.fetch(
        """
        WITH due AS (SELECT id FROM calls WHERE in_flight AND created_at <= $1
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        UPDATE calls c SET status = 'unknown', in_flight = false FROM due WHERE c.id = due.id RETURNING c.id
        """,
        before,
        limit,
    )
    return [r["id"] for r in rows]


async def select_reports(
    conn: Conn, tenant_id: int | None, outcomes: list[str], after_id: int | None, limit: int
) -> list[asyncpg.Record]:
    """Reports with these outcomes: a tenant's (bridge on its DIDs), or with tenant_id None those on no DID."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT id, received_at, body, bridge, outcome, call_id FROM provider_reports
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
    return rows


async def select_route(conn: Conn, did: str, caller: str, now: datetime) -> asyncpg.Record | None:
    """The live session on a DID that has the caller as a party."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        SELECT id, CASE WHEN customer = $2 THEN agent ELSE customer END AS other FROM sessions
        WHERE did = $1 AND (customer = $2 OR agent = $2) AND status = 'active' AND expires_at > $3
        """,
        did,
        caller,
        now,
    )
    return row


def report_window(now: datetime, timeout_seconds: int) -> datetime:
    """How far back a finished call can still receive a (duplicate) report."""
    return now - timedelta(seconds=timeout_seconds) - timedelta(days=1)
