"""What every session job shares: the rules' settings and a session as of now (its input types: broker/bodies.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import msgspec

from service.broker.errors import NotFound
from service.db import Conn
from service.db import sessions as q
from service.models import Session

Clock = Callable[[], datetime]


class Rules(msgspec.Struct, frozen=True):
    """The settings the broker's rules depend on."""

    default_ttl_seconds: int
    cooloff_seconds: int


def live_view(session: Session, now: datetime) -> Session:
    """DESIGN rule 2: a session past its expiry reads as expired at once, before the sweeper marks it."""
    if session.status == "active" and session.expires_at <= now:
        return msgspec.structs.replace(session, status="expired", close_reason="ttl", closed_at=session.expires_at)
    return session


async def read_or_raise(conn: Conn, tenant_id: int, session_id: UUID, now: datetime) -> Session:
    """One of the tenant's sessions as of now, or not_found (DESIGN rule 6: a foreign id is a 404)."""
    session = await q.select_session(conn, tenant_id, session_id)
    if session is None:
        raise NotFound("No session with that id.")
    return live_view(session, now)
