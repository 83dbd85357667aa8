"""SQL for the ops console: its server-side sessions, and the reads only the console makes."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.db import Conn, sealed
from service.db.calls import CALL, call
from service.db.dids import DID_COLUMNS
from service.db.sessions import SESSION
from service.db.sessions.row import session
from service.models import Call, Did, Session


async def store_get(conn: Conn, id_hash: bytes, now: datetime, renew_until: datetime | None) -> bytes | None:
    """A live console session's data (its expiry moved to renew_until when given)."""
    data: bytes | None = await conn.fetchval(
        """
        UPDATE console_sessions SET expires_at = coalesce($3, expires_at)
        WHERE id_hash = $1 AND (expires_at IS NULL OR expires_at > $2) RETURNING data
        """,
        id_hash,
        now,
        renew_until,
    )
    return data


async def store_set(conn: Conn, id_hash: bytes, data: bytes, expires_at: datetime | None) -> None:
    """Write a console session's data."""
    await conn.execute(
        """
        INSERT INTO console_sessions (id_hash, data, expires_at) VALUES ($1, $2, $3)
        ON CONFLICT (id_hash) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at
        """,
        id_hash,
        data,
        expires_at,
    )


async def store_delete(conn: Conn, id_hash: bytes) -> None:
    """Forget one console session."""
    await conn.execute("DELETE FROM console_sessions WHERE id_hash = $1", id_hash)


async def store_expires_at(conn: Conn, id_hash: bytes) -> datetime | None:
    """When a console session ends (None: never, or no such session)."""
    at: datetime | None = await conn.fetchval("SELECT expires_at FROM console_sessions WHERE id_hash = $1", id_hash)
    return at


async def store_delete_expired(conn: Conn, now: datetime, limit: int) -> int:
    """Delete one batch of ended console sessions."""
    done: int = await conn.fetchval(
        """
        WITH due AS (SELECT id_hash FROM console_sessions WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED),
        d AS (DELETE FROM console_sessions c USING due WHERE c.id_hash = due.id_hash RETURNING 1)
        SELECT count(*)::int FROM d
        """,
        now,
        limit,
    )
    return done


async def store_delete_all(conn: Conn) -> None:
    """Forget every console session."""
    await conn.execute("DELETE FROM console_sessions")


async def recent_sessions(conn: Conn, tenant_id: int, limit: int) -> list[Session]:
    """The tenant's newest sessions (the walk of its (tenant_id, created_at) index)."""
    rows = await conn.fetch(
        f"SELECT {SESSION} FROM sessions WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        tenant_id,
        limit,
    )
    return [session(r) for r in rows]


async def sessions_with_number(conn: Conn, tenant_id: int, number: str, limit: int) -> list[Session]:
    """The tenant's sessions, newest first, with a number as a party or as the masked number."""
    rows = await conn.fetch(
        f"""
        SELECT {SESSION} FROM sessions
        WHERE tenant_id = $1 AND (customer_ix = $4 OR agent_ix = $4 OR did = $2)
        ORDER BY created_at DESC, id DESC LIMIT $3
        """,
        tenant_id,
        number,
        limit,
        sealed.probe(tenant_id, number),
    )
    return [session(r) for r in rows]


async def sessions_of_order_prefix(conn: Conn, tenant_id: int, prefix: str, window: int, limit: int) -> list[Session]:
    """The tenant's sessions, newest first, of the order id itself (at any age, by index), and of order ids
    starting with it among its newest `window` sessions (a bounded walk, whatever the table's size)."""
    rows = await conn.fetch(
        f"""
        SELECT {SESSION} FROM sessions WHERE tenant_id = $1 AND order_id = $2
        UNION
        SELECT {SESSION} FROM (
            SELECT * FROM sessions WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $3) AS recent
        WHERE starts_with(order_id, $2)
        ORDER BY created_at DESC, id DESC LIMIT $4
        """,
        tenant_id,
        prefix,
        window,
        limit,
    )
    return [session(r) for r in rows]


async def search_dids(
    conn: Conn,
    tenant_id: int,
    now: datetime,
    *,
    digits: str | None,
    pool: str | None,
    status: str | None,
    limit: int,
) -> list[Did]:
    """The tenant's DIDs whose number contains these digits (of one pool or status when given), by pool and
    number, at most limit: the search is a predicate of the walk of the tenant's (tenant_id, pool, number) index,
    which stops at the limit, so no DID is out of reach however big the pool."""
    rows = await conn.fetch(
        f"""
        SELECT {DID_COLUMNS} FROM dids d
        WHERE d.tenant_id = $1 AND ($3::text IS NULL OR d.pool = $3) AND ($4::text IS NULL OR d.status = $4)
          AND ($5::text IS NULL OR strpos(d.number, $5) > 0)
        ORDER BY d.pool, d.number
        LIMIT $6
        """,
        tenant_id,
        now,
        pool,
        status,
        digits,
        limit,
    )
    return [msgspec.convert(r, Did) for r in rows]


class AttentionCall(msgspec.Struct, frozen=True, kw_only=True):
    """A call that needs a look, with its session's order."""

    call: Call
    order_id: str


async def select_attention_calls(conn: Conn, tenant_id: int, since: datetime, limit: int) -> list[AttentionCall]:
    """The tenant's calls since a time that ended unknown or failed, newest first."""
    rows = await conn.fetch(
        f"""
        SELECT row_to_json(c)::jsonb AS call, s.order_id FROM (
            SELECT {CALL} FROM calls
            WHERE tenant_id = $1 AND created_at > $2 AND status IN ('unknown', 'failed')
            ORDER BY created_at DESC LIMIT $3) c
        JOIN sessions s ON s.id = c.session_id
        ORDER BY c.created_at DESC
        """,
        tenant_id,
        since,
        limit,
    )
    return [AttentionCall(call=call(r["call"], strict=False), order_id=r["order_id"]) for r in rows]


class HourCount(msgspec.Struct, frozen=True):
    """Sessions created in one hour."""

    at: datetime
    sessions: int


async def sessions_per_hour(conn: Conn, tenant_id: int, since: datetime, hours: int) -> list[HourCount]:
    """Sessions the tenant created in each hour from since, oldest first, every hour present."""
    rows = await conn.fetch(
        """
        SELECT h.at, count(s.id)::int AS sessions
        FROM generate_series(date_trunc('hour', $2::timestamptz), date_trunc('hour', $2::timestamptz)
                             + ($3 - 1) * interval '1 hour', interval '1 hour') AS h(at)
        LEFT JOIN sessions s ON s.tenant_id = $1 AND s.created_at >= h.at AND s.created_at < h.at + interval '1 hour'
        GROUP BY h.at ORDER BY h.at
        """,
        tenant_id,
        since,
        hours,
    )
    return [msgspec.convert(r, HourCount) for r in rows]


async def select_session_ids_of_order(conn: Conn, tenant_id: int, order_id: str, now: datetime) -> list[UUID]:
    """The tenant's live sessions of an order (what an expiry by order would end)."""
    rows = await conn.fetch(
        "SELECT id FROM sessions WHERE tenant_id = $1 AND order_id = $2 AND status = 'active' AND expires_at > $3",
        tenant_id,
        order_id,
        now,
    )
    return [r["id"] for r in rows]


class FailingEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event an endpoint has not taken, as it stands now: its delivery's state and its newest attempt."""

    event_id: int
    type: str | None  # None once the event itself is past retention
    state: str  # pending (retried later) or failed (given up); the newest attempt's status without a delivery row
    attempts: int
    next_attempt_at: datetime | None  # when pending
    status_code: int | None  # of the newest attempt
    error: str | None
    at: datetime


async def failing_events(conn: Conn, tenant_id: int, endpoint_id: UUID, window: int, limit: int) -> list[FailingEvent]:
    """The events whose newest attempt to an endpoint did not deliver and that are not delivered since, newest
    first: one row each, read from the endpoint's newest `window` attempts (a bounded walk of its index)."""
    rows = await conn.fetch(
        """
        WITH newest AS (
            SELECT DISTINCT ON (event_id) id, event_id FROM (
                SELECT id, event_id FROM webhook_attempts WHERE endpoint_id = $2 ORDER BY id DESC LIMIT $3) AS w
            ORDER BY event_id, id DESC)
        SELECT a.event_id, e.type, coalesce(d.status, a.status) AS state, coalesce(d.attempts, a.attempt) AS attempts,
               CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
               a.status_code, a.error, a.at
        FROM newest n JOIN webhook_attempts a ON a.id = n.id
        LEFT JOIN webhook_deliveries d ON d.event_id = n.event_id AND d.endpoint_id = $2
        LEFT JOIN events e ON e.id = n.event_id AND e.tenant_id = $1
        WHERE coalesce(d.status, a.status) <> 'delivered' AND a.status <> 'delivered'
        ORDER BY a.id DESC LIMIT $4
        """,
        tenant_id,
        endpoint_id,
        window,
        limit,
    )
    return [msgspec.convert(r, FailingEvent) for r in rows]
