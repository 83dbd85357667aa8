"""Costs: per pool the calls, minutes and known cost of the last 24 hours and 30 days; calls as CSV by date."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from uuid import UUID

import asyncpg
import msgspec

from service.broker.errors import InvalidRequest
from service.db import Conn
from service.db import costs as q

DAY = timedelta(hours=24)
MONTH = timedelta(days=30)


class CallUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Calls placed in a window: how many, their billed minutes, the cost of those whose cost is known
    (a decimal string), and how many those are (calls - priced_calls have no known cost yet)."""

    calls: int
    minutes: float
    cost: str
    priced_calls: int


NO_CALLS = CallUsage(calls=0, minutes=0.0, cost="0", priced_calls=0)


def _usage(calls: int, billing_seconds: int, priced: int, cost: str) -> CallUsage:
    return CallUsage(calls=calls, minutes=round(billing_seconds / 60, 2), cost=cost, priced_calls=priced)


async def pool_usage(conn: Conn, tenant_id: int, now: datetime) -> dict[str, tuple[CallUsage, CallUsage]]:
    """Per pool with calls: (last 24 hours, last 30 days), by the calls' creation time."""
    return {
        r.pool: (
            _usage(r.calls_day, r.billing_seconds_day, r.priced_calls_day, r.cost_day),
            _usage(r.calls_month, r.billing_seconds_month, r.priced_calls_month, r.cost_month),
        )
        for r in await q.pool_calls(conn, tenant_id, now - DAY, now - MONTH, now)
    }


# The CSV export: its columns (no party numbers: the bridge is the tenant's own DID), the widest range one
# request may ask for, and how many rows are read from the database at a time.
CSV_COLUMNS = (
    "call_id",
    "session_id",
    "order_id",
    "created_at",
    "status",
    "duration_seconds",
    "billing_seconds",
    "cost",
    "billing_pulse_seconds",
    "bridge",
)
CSV_MAX_RANGE = timedelta(days=31)
CSV_BATCH = 1000


def _bound(name: str, text: str | None, end: bool) -> datetime:
    """An RFC 3339 instant (with its offset), or a date: its start (UTC) as `from`, the day after as `to`."""
    if not text:
        raise InvalidRequest(f"`{name}` is required: an RFC 3339 time or a date (YYYY-MM-DD).", field=name)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1) if end else day, dt_time(), UTC)
        at = datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InvalidRequest(
            f"`{name}` must be an RFC 3339 time with its offset (2026-12-01T00:00:00Z) or a date (2026-12-01).",
            field=name,
        )
    return at.astimezone(UTC)


def export_range(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    """The [from, to) of a CSV export: both required, `to` after `from`, at most 31 days apart."""
    start, end = _bound("from", since, end=False), _bound("to", until, end=True)
    if end <= start:
        raise InvalidRequest("`to` must be after `from`.", field="to")
    if end - start > CSV_MAX_RANGE:
        raise InvalidRequest("`to` is more than 31 days after `from`: export a month at a time.", field="to")
    return start, end


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


async def export_calls(db: asyncpg.Pool, tenant_id: int, start: datetime, end: datetime) -> AsyncIterator[bytes]:
    """The tenant's calls created in [start, end) as CSV, oldest first: a header, then CSV_BATCH rows a
    chunk, each batch read after the last one's keyset on a connection held only while it is read."""
    yield _csv([list(CSV_COLUMNS)])
    after: tuple[datetime, UUID] | None = None
    while True:
        async with db.acquire() as conn:
            rows = await q.calls_page(conn, tenant_id, start, end, after, CSV_BATCH)
        if not rows:
            return
        yield _csv([[_cell(v) for v in msgspec.structs.astuple(r)] for r in rows])
        if len(rows) < CSV_BATCH:
            return
        after = (rows[-1].created_at, rows[-1].id)
