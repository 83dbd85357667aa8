"""Inbound routing: where to connect a party who calls a masked number back."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.broker.errors import InvalidPhoneNumber, NoSession
from service.broker.phones import normalize, provider_digits
from service.db import Conn
from service.db import sessions as q


class Route(msgspec.Struct, frozen=True):
    """Where to connect a call arriving on a DID: the other party, as digits."""

    session_id: UUID
    connect_to: str


async def route(conn: Conn, did: str, caller: str, now: datetime) -> Route:
    """The other party of the caller's live session on this DID, or no_session."""
    try:
        did_e164, caller_e164 = normalize(did, "did"), normalize(caller, "caller")
    except InvalidPhoneNumber:
        raise NoSession("The caller has no active session on this number.") from None
    row = await q.select_route(conn, did_e164, caller_e164, now)
    if row is None:
        raise NoSession("The caller has no active session on this number.")
    return Route(session_id=row.id, connect_to=provider_digits(row.other))
