"""SQL for events: inserted with their change (with a pending delivery per endpoint that wants them), paged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from service.db import Conn, sealed
from service.db.horizon import FEED_HORIZON


def emit_ctes(name: str, source: str, now: str) -> str:
    """Two CTEs that write an event for each row of source (tenant_id, type, data) and its pending deliveries.

    For statements that change and emit in one round trip (report ingest): a data-modifying CTE always
    runs to completion, so the events are written exactly when the statement's change is.
    """
    return f"""{name} AS (
    INSERT INTO events (tenant_id, type, created_at, data)
    SELECT src.tenant_id, src.type, {now}, src.data FROM ({source}) src WHERE src.tenant_id IS NOT NULL
    RETURNING id, tenant_id, type, created_at),
{name}_deliveries AS (
    INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at, event_created_at)
    SELECT e.id, w.id, e.created_at, e.created_at, e.created_at FROM {name} e
    JOIN webhook_endpoints w ON w.tenant_id = e.tenant_id AND w.status = 'enabled'
        AND w.events && ARRAY[e.type, '*'])"""


# Many events at once from Python (the data already JSON text), each with its deliveries.
INSERT_EVENTS = f"""
WITH src AS (
    SELECT t.tenant_id, t.type, t.data::jsonb AS data
    FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(tenant_id, type, data)),
{emit_ctes("e", "SELECT * FROM src", "$4::timestamptz")}
SELECT id FROM e ORDER BY id
"""


async def insert_events(conn: Conn, now: datetime, events: Sequence[tuple[int, str, bytes]]) -> list[int]:
    """Write events (tenant, type, JSON data) and a pending delivery for each enabled endpoint that wants them."""
    if not events:
        return []
    rows = await conn.fetch(
        INSERT_EVENTS,
        [e[0] for e in events],
        [e[1] for e in events],
        [_sealed_json(*e) for e in events],
        now,
    )
    return [r["id"] for r in rows]


def _sealed_json(tenant_id: int, type_: str, data: bytes) -> str:
    """An event's JSON data with its numbers sealed (service/db/sealed.py), as stored."""
    decoded = msgspec.json.decode(data)
    sealed_data = sealed.seal_event(tenant_id, type_, decoded)
    return (data if sealed_data is decoded else msgspec.json.encode(sealed_data)).decode()


def _event(tenant_id: int, row: Any) -> EventRow:
    """A stored event with its data opened."""
    values = dict(row)
    values["data"] = sealed.open_event(tenant_id, values["type"], values["data"])
    return msgspec.convert(values, EventRow)


class EventRow(msgspec.Struct, frozen=True):
    """A stored event with its feed position (txid, id)."""

    id: int
    type: str
    created_at: datetime
    data: Any
    txid: str


# Only transactions older than every one of this database still running are shown (FEED_HORIZON): an event
# inserted by a transaction that commits later than a younger one can then never appear behind a cursor
# already handed out, and a transaction left open in another database does not stall the feed. The order is
# the columns' (xid8), not the text the select list makes of txid (as text, 999 sorts after 1000), so
# pages follow the cursor's numeric order and read each day partition's events_feed index in order.
SELECT_FEED = f"""
SELECT id, type, created_at, data, txid::text AS txid FROM events
WHERE tenant_id = $1 AND ($2::text IS NULL OR type = $2)
  AND ($3::text IS NULL OR (txid, id) > ($3::text::xid8, $4::bigint))
  AND txid < {FEED_HORIZON}
ORDER BY events.txid, events.id LIMIT $5
"""


async def select_feed(
    conn: Conn, tenant_id: int, type_: str | None, after: tuple[str, int] | None, limit: int
) -> list[EventRow]:
    """A page of the tenant's events, oldest first, after a feed position."""
    rows = await conn.fetch(
        SELECT_FEED, tenant_id, type_, after[0] if after else None, after[1] if after else None, limit
    )
    return [_event(tenant_id, r) for r in rows]


async def select_event(conn: Conn, tenant_id: int, event_id: int) -> EventRow | None:
    """One of the tenant's events."""
    row = await conn.fetchrow(
        "SELECT id, type, created_at, data, txid::text AS txid FROM events WHERE id = $1 AND tenant_id = $2",
        event_id,
        tenant_id,
    )
    return None if row is None else _event(tenant_id, row)


# A session's events, newest first. The subject expression and the type predicate are written exactly as
# in the events_subject index, so the planner can use it (a partial index needs its predicate implied).
SELECT_OF_SESSION = """
SELECT id, type, created_at, data, txid::text AS txid FROM events
WHERE tenant_id = $1 AND coalesce(data->>'session_id', data->>'id') = $2
  AND (type LIKE 'session.%' OR type LIKE 'call.%')
ORDER BY id DESC LIMIT $3
"""


async def select_of_session(conn: Conn, tenant_id: int, session_id: str, limit: int) -> list[EventRow]:
    """The newest events whose subject is this session (session.* and call.*), newest first."""
    rows = await conn.fetch(SELECT_OF_SESSION, tenant_id, session_id, limit)
    return [_event(tenant_id, r) for r in rows]


async def alert_pools(conn: Conn, low: Sequence[tuple[int, str]], now: datetime) -> list[tuple[int, str]]:
    """Remember pools now low on headroom; return those that were not yet (each alerts once per fall)."""
    if not low:
        return []
    rows = await conn.fetch(
        """
        INSERT INTO pool_alerts (tenant_id, pool, alerted_at)
        SELECT * FROM unnest($1::bigint[], $2::text[], array_fill($3::timestamptz, ARRAY[cardinality($1)]))
        ON CONFLICT (tenant_id, pool) DO NOTHING
        RETURNING tenant_id, pool
        """,
        [t for t, _ in low],
        [p for _, p in low],
        now,
    )
    return [(r["tenant_id"], r["pool"]) for r in rows]


async def rearm_pools(conn: Conn, low: Sequence[tuple[int, str]]) -> int:
    """Forget the alert of every pool no longer low, so that its next fall alerts again."""
    status = await conn.execute(
        """
        DELETE FROM pool_alerts a
        WHERE NOT EXISTS (SELECT 1 FROM unnest($1::bigint[], $2::text[]) AS l(tenant_id, pool)
                          WHERE l.tenant_id = a.tenant_id AND l.pool = a.pool)
        """,
        [t for t, _ in low],
        [p for _, p in low],
    )
    return int(status.rsplit(" ", 1)[-1])


async def tenants_of_sessions(conn: Conn, session_ids: Sequence[Any]) -> dict[Any, int]:
    """The tenant of each of these sessions."""
    rows = await conn.fetch("SELECT id, tenant_id FROM sessions WHERE id = ANY($1::uuid[])", list(session_ids))
    return {r["id"]: r["tenant_id"] for r in rows}
