"""An endpoint's delivery attempts as the API lists them, and queueing an event again for its endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from service.broker.errors import InvalidRequest, NotFound, parse_id
from service.broker.events import event_id, parse_event_id
from service.db import Conn
from service.db import events as events_q
from service.db import webhooks as q


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery attempt of an event to an endpoint."""

    event_id: str
    type: str | None
    attempt: int
    status: Literal["delivered", "retrying", "failed"]
    status_code: int | None
    error: str | None
    duration_ms: int
    at: datetime
    next_attempt_at: datetime | None


class AttemptPage(msgspec.Struct, frozen=True):
    """A page of attempts, newest first."""

    items: list[Attempt]
    next_cursor: str | None


def attempt_of(row: q.AttemptRow | q.Outcome, type_: str | None) -> Attempt:
    return Attempt(
        event_id=event_id(row.event_id),
        type=type_,
        attempt=row.attempt,
        status=row.status,  # type: ignore[arg-type]
        status_code=row.status_code,
        error=row.error,
        duration_ms=row.duration_ms,
        at=row.at,
        next_attempt_at=row.next_attempt_at,
    )


async def list_attempts(
    conn: Conn, tenant_id: int, endpoint_id: str, status: str | None, cursor: str | None, limit: int
) -> AttemptPage:
    """An endpoint's delivery attempts, newest first."""
    eid = parse_id(endpoint_id, "webhook")
    if await q.select_endpoint(conn, tenant_id, eid) is None:
        raise NotFound("No webhook with that id.")
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) < 20):
        raise InvalidRequest("`cursor` is not one this service gave out.", field="cursor")
    rows = await q.select_attempts(conn, eid, status, int(cursor) if cursor else None, limit + 1)
    items = [attempt_of(r, r.type) for r in rows[:limit]]
    return AttemptPage(items, str(rows[limit - 1].id) if len(rows) > limit else None)


class Redelivered(msgspec.Struct, frozen=True):
    """How many endpoints the event was queued for again."""

    queued: int


async def redeliver(conn: Conn, tenant_id: int, event: str, now: datetime) -> Redelivered:
    """Queue an event again for every enabled endpoint that wants it, from its first attempt."""
    number = parse_event_id(event)
    if await events_q.select_event(conn, tenant_id, number) is None:
        raise NotFound("No event with that id.")
    return Redelivered(await q.redeliver(conn, tenant_id, number, now))
