"""Inbound routing: where to connect a party who calls a masked number back, or the pool's fallback."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

import msgspec

from service import metrics
from service.broker.errors import InvalidPhoneNumber, NoSession
from service.broker.phones import normalize, provider_digits
from service.db import Conn
from service.db import pools as pools_q
from service.db import sessions as q


class Route(msgspec.Struct, frozen=True):
    """Where to connect a call arriving on a DID: the other party, as digits."""

    session_id: UUID
    connect_to: str


class FallbackRoute(msgspec.Struct, frozen=True, kw_only=True):
    """A caller with no active session on the DID: the pool's fallback number (digits) or IVR flow, and why."""

    session_id: None = None
    connect_to: str | None
    flow: str | None
    reason: Literal["no_session", "session_ended"]


_NO_SESSION = "The caller has no active session on this number."


async def route(conn: Conn, did: str, caller: str, now: datetime, cooloff_seconds: int = 0) -> Route | FallbackRoute:
    """The other party of the caller's live session on this DID; else the DID's pool fallback; else no_session.

    cooloff_seconds is the service-wide cool-off, used when the pool sets none: a caller whose session on
    the DID ended within it is told `session_ended` rather than `no_session`.
    """
    try:
        did_e164, caller_e164 = normalize(did, "did"), normalize(caller, "caller")
    except InvalidPhoneNumber:
        metrics.ROUTED_WITHOUT_SESSION.labels("no_session", "no").inc()
        raise NoSession(_NO_SESSION) from None
    row = await q.select_route(conn, did_e164, caller_e164, now)
    if row is not None:
        return Route(session_id=row.id, connect_to=provider_digits(row.other))
    fb = await pools_q.select_fallback(conn, did_e164, caller_e164)
    reason: Literal["no_session", "session_ended"] = "no_session"
    if fb is not None and fb.caller_ended_at is not None:
        cooloff = timedelta(seconds=fb.cooloff_seconds if fb.cooloff_seconds is not None else cooloff_seconds)
        if now - cooloff < fb.caller_ended_at <= now:
            reason = "session_ended"
    if fb is None or (fb.fallback_connect_to is None and fb.fallback_flow is None):
        metrics.ROUTED_WITHOUT_SESSION.labels(reason, "no").inc()
        raise NoSession(_NO_SESSION, reason=reason)
    metrics.ROUTED_WITHOUT_SESSION.labels(reason, "yes").inc()
    return FallbackRoute(
        connect_to=provider_digits(fb.fallback_connect_to) if fb.fallback_connect_to else None,
        flow=fb.fallback_flow,
        reason=reason,
    )
