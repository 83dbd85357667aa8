"""Reading sessions: one by id, and the tenant's sessions a keyset page at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from service.broker.errors import parse_id
from service.broker.paging import Cursor
from service.broker.phones import normalize
from service.broker.sessions.base import live_view, read_or_raise
from service.db import Conn
from service.db import sessions as q
from service.models import Session

# A sessions page resumes after (created_at, id) of its last row.
CURSOR = Cursor("cursor")


async def get_session(conn: Conn, tenant_id: int, session_id: str, now: datetime) -> Session:
    """One of the tenant's sessions, or not_found."""
    return await read_or_raise(conn, tenant_id, parse_id(session_id, "session"), now)


class Page(msgspec.Struct, frozen=True):
    """A page of sessions and the cursor of the next one."""

    items: list[Session]
    next_cursor: str | None


async def list_sessions(
    conn: Conn,
    tenant_id: int,
    now: datetime,
    *,
    order_id: str | None,
    customer: str | None,
    status: Literal["active", "closed", "expired"] | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """The tenant's sessions, newest first, a keyset page at a time."""
    rows = await q.select_sessions(
        conn,
        tenant_id,
        now,
        order_id=order_id,
        customer=normalize(customer, "customer") if customer else None,
        status=status,
        after=CURSOR.time_and_id(cursor) if cursor else None,
        limit=limit + 1,
    )
    items = [live_view(r, now) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = CURSOR.encode(last.created_at.isoformat(), str(last.id))
    return Page(items=items, next_cursor=next_cursor)
