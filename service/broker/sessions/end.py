"""Ending sessions: a client's close and an ops expiry (the sweeper's TTL expiry is in broker/sweeps.py)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from service.broker import events
from service.broker.audit import Context, Target
from service.broker.bodies import ExpireFilter
from service.broker.errors import InvalidRequest, parse_id
from service.broker.phones import normalize
from service.broker.sessions.base import read_or_raise
from service.db import Conn
from service.db import sessions as q
from service.models import Session


async def close_session(
    conn: Conn, tenant_id: int, session_id: str, now: datetime, note: str | None = None, audit: Context | None = None
) -> Session:
    """Close a live session (closed_by_client, with the client's note); an ended session comes back unchanged.

    With an audit context a close is on record (rule 12), in its own transaction; closing again changes
    nothing and writes nothing.
    """
    sid = parse_id(session_id, "session")
    async with conn.transaction():
        closed = await q.close_session(conn, tenant_id, sid, now, note)
        if closed is not None:
            # DESIGN rule 8: session.closed in the same transaction as the close; rule 12: so is its audit row.
            await events.emit_session(conn, tenant_id, "session.closed", closed, now)
            if audit is not None:
                await audit.record(conn, "session.close", Target("session", str(sid)), now, note)
    if closed is None:
        return await read_or_raise(conn, tenant_id, sid, now)
    return closed


async def expire_sessions(
    conn: Conn, tenant_id: int | None, filters: ExpireFilter, now: datetime, audit: Context | None = None
) -> int:
    """Expire (expired_by_ops) every live session matching all given filters; on record with an audit context."""
    if not any(msgspec.structs.astuple(filters)):
        raise InvalidRequest("Give at least one filter: order_id, customer, agent or masked_number.", field="body")
    async with conn.transaction():
        expired = await q.expire_matching(
            conn,
            tenant_id,
            now,
            order_id=filters.order_id,
            customer=normalize(filters.customer, "customer") if filters.customer else None,
            agent=normalize(filters.agent, "agent") if filters.agent else None,
            masked_number=normalize(filters.masked_number, "masked_number") if filters.masked_number else None,
        )
        await events.sessions_closed(conn, expired, now, tenant_id)
        if audit is not None:
            # What was matched; a number in the target is kept masked by the audit log.
            matched = filters.customer or filters.agent or filters.masked_number or ""
            target = Target("order", filters.order_id) if filters.order_id else Target("number", matched)
            await audit.record(conn, "sessions.expire", target, now)
    return len(expired)
