"""Events: one function per kind of change, each writing its event and deliveries in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from uuid import UUID

import msgspec

from service.broker.errors import InvalidRequest, NotFound
from service.broker.paging import Cursor
from service.db import Conn
from service.db import events as q
from service.models import Call, Report, Session

SessionEvent = Literal["session.created", "session.updated", "session.closed"]
EventType = Literal[
    "session.created",
    "session.updated",
    "session.closed",
    "call.initiated",
    "call.completed",
    "call.missed",
    "call.failed",
    "call.unknown",
    "call.recording_ready",
    "report.unmatched",
    "pool.low_headroom",
    "webhook.test",
]
TYPES: tuple[str, ...] = get_args(EventType)


def _now() -> datetime:
    return datetime.now(UTC)


async def emit(conn: Conn, tenant_id: int, type_: str, data: Any, now: datetime | None = None) -> None:
    """Write one event (data: the resource as its GET route returns it) with its deliveries."""
    await emit_many(conn, now or _now(), [(tenant_id, type_, data)])


async def emit_many(conn: Conn, now: datetime, batch: Sequence[tuple[int, str, Any]]) -> None:
    """The one way Python writes events (DESIGN rule 8: in the caller's transaction, with the change):
    each (tenant, type, data) with a pending delivery per endpoint that wants it. SQL that changes and
    emits in one statement uses db/events.emit_ctes, which this runs too."""
    await q.insert_events(conn, now, [(t, type_, msgspec.json.encode(data)) for t, type_, data in batch])


async def emit_session(
    conn: Conn, tenant_id: int, type_: SessionEvent, session: Session, now: datetime | None = None
) -> None:
    """session.created, session.updated (TTL or party changed) or session.closed, for one session."""
    await emit(conn, tenant_id, type_, session, now)


async def sessions_closed(conn: Conn, sessions: Sequence[Session], now: datetime, tenant_id: int | None = None) -> None:
    """session.closed for each of these sessions (a bulk expiry, a sweep); their tenants looked up if not given."""
    if not sessions:
        return
    tenants = (
        {s.id: tenant_id for s in sessions}
        if tenant_id
        else await q.tenants_of_sessions(conn, [s.id for s in sessions])
    )
    await emit_many(conn, now, [(tenants[s.id], "session.closed", s) for s in sessions if s.id in tenants])


async def emit_call(conn: Conn, tenant_id: int, call: Call, now: datetime | None = None) -> None:
    """call.<status> for a call that just reached that status."""
    await emit(conn, tenant_id, f"call.{call.status}", call, now)


async def calls_unknown(conn: Conn, calls: Sequence[Call], now: datetime) -> None:
    """call.unknown for calls that no report finished within the report timeout."""
    if not calls:
        return
    tenants = await q.tenants_of_sessions(conn, [c.session_id for c in calls])
    await emit_many(
        conn, now, [(tenants[c.session_id], f"call.{c.status}", c) for c in calls if c.session_id in tenants]
    )


class Event(msgspec.Struct, frozen=True):
    """An event as the feed and webhooks carry it."""

    id: str
    type: str
    created_at: datetime
    data: Any


_RESOURCES: dict[str, type[Any]] = {"session": Session, "call": Call, "report": Report}


def render(row: q.EventRow) -> Event:
    """The event as delivered: data normalized through its resource type, so SQL-built and Python-built agree."""
    kind = row.type.split(".", 1)[0]
    data = row.data
    if kind in _RESOURCES:
        data = msgspec.convert(data, _RESOURCES[kind])
    return Event(event_id(row.id), row.type, row.created_at, data)


def event_id(number: int) -> str:
    """The public id of an event (`evt_` and its number)."""
    return f"evt_{number}"


def parse_event_id(value: str) -> int:
    """An event's number from its public id; anything else is simply not found."""
    if value.startswith("evt_") and value[4:].isascii() and value[4:].isdigit() and len(value) < 24:
        return int(value[4:])
    raise NotFound("No event with that id.")


class EventPage(msgspec.Struct, frozen=True):
    """A page of events, oldest first; next_cursor resumes after the last one (or where you were)."""

    items: list[Event]
    next_cursor: str | None


# The feed resumes after (txid, id). Cursors given out before the paging codec were "txid.id": still taken.
CURSOR = Cursor("after", legacy_sep=".")


async def feed(conn: Conn, tenant_id: int, type_: str | None, after: str | None, limit: int) -> EventPage:
    """The tenant's events oldest first after a cursor: a backend that was down catches up here."""
    if type_ is not None and type_ not in TYPES:
        raise InvalidRequest(f"`type` must be one of: {', '.join(TYPES)}.", field="type")
    position = None
    if after:
        txid, number = CURSOR.numbers(after, 2)
        position = (str(txid), number)
    rows = await q.select_feed(conn, tenant_id, type_, position, limit)
    return EventPage([render(r) for r in rows], CURSOR.encode(rows[-1].txid, rows[-1].id) if rows else after)


async def of_session(conn: Conn, tenant_id: int, session_id: UUID, limit: int = 50) -> list[Event]:
    """The newest events about one session (its session.* and its calls' call.*), newest first."""
    return [render(r) for r in await q.select_of_session(conn, tenant_id, str(session_id), limit)]
