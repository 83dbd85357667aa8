"""Costs: per pool the calls, minutes and known cost of the last 24 h and 30 days; calls as CSV; the cost sweep."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import structlog

from service.broker.errors import InvalidRequest
from service.broker.reconcile import CallLogReader
from service.db import Conn
from service.db import costs as q
from service.db import reconcile as reconcile_q
from service.provider.calllog import CallLogError, LogRow

log = structlog.get_logger("service.costs")

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


# A cell a spreadsheet would read as a formula starts with one of these; the client's own text (the order id)
# that does is prefixed with ' (OWASP's rule against CSV injection). Our own values (ids, times, statuses,
# amounts, the DID) never need it.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _text_cell(text: str) -> str:
    """Client text as a cell no spreadsheet runs as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _row(call: q.CallRow) -> list[str]:
    cells = [_cell(v) for v in msgspec.structs.astuple(call)]
    cells[2] = _text_cell(call.order_id)
    return cells


async def export_calls(db: asyncpg.Pool, tenant_id: int, start: datetime, end: datetime) -> AsyncIterator[bytes]:
    """The tenant's calls created in [start, end) as CSV, oldest first: a header, then CSV_BATCH rows a
    chunk, each batch read after the last one's keyset on a connection held only while it is read.

    A failure after the first chunk cannot change the 200 already sent: it is logged and raised, and the
    server then aborts the connection without the last chunk, so the client sees an incomplete transfer
    rather than a file that merely looks complete.
    """
    yield _csv([list(CSV_COLUMNS)])
    after: tuple[datetime, UUID] | None = None
    sent = 0
    try:
        while True:
            async with db.acquire() as conn:
                rows = await q.calls_page(conn, tenant_id, start, end, after, CSV_BATCH)
            if not rows:
                return
            yield _csv([_row(r) for r in rows])
            sent += len(rows)
            if len(rows) < CSV_BATCH:
                return
            after = (rows[-1].created_at, rows[-1].id)
    except Exception as e:
        log.error("csv_export_failed", tenant_id=tenant_id, rows_sent=sent, error=type(e).__name__)
        raise


# The daily cost sweep reads the previous day's call log (a day in the provider's zone) once the provider
# has had SWEEP_AFTER of the new day to finish writing it; after a failed read it waits SWEEP_RETRY.
SWEEP_AFTER = timedelta(hours=2)
SWEEP_RETRY = timedelta(minutes=10)
SWEEP_BATCH = 500


class CostTally(msgspec.Struct, kw_only=True):
    """What one cost sweep did: calls priced, not found in the log, and matched by more than one row."""

    priced: int = 0
    not_found: int = 0
    ambiguous: int = 0


@dataclass
class CostSweep:
    """Once a day per process, under the call-log lease: costs from the previous day's call log for the calls
    a callback completed (the report has no charges), where exactly one log row is that conversation."""

    log: CallLogReader
    zone: ZoneInfo
    swept: date | None = None
    retry_at: datetime | None = None

    def day_due(self, now: datetime) -> date | None:
        """The provider's day to sweep now (yesterday, there, once its log has settled), or None."""
        local = (now - SWEEP_AFTER).astimezone(self.zone)
        day = local.date() - timedelta(days=1)
        if self.swept is not None and day <= self.swept:
            return None
        if self.retry_at is not None and now < self.retry_at:
            return None
        return day

    async def run(self, conn: Conn, now: datetime) -> CostTally | None:
        """Sweep the due day if one is due and this process gets the lease; None when nothing ran."""
        day = self.day_due(now)
        if day is None or not await reconcile_q.take_lease(conn):
            return None
        try:
            tally = await self._sweep(conn, day, now)
        finally:
            await reconcile_q.give_lease(conn)
        if tally is not None:
            self.swept = day
            log.info("costs_swept", day=day.isoformat(), **msgspec.structs.asdict(tally))
        return tally

    async def _sweep(self, conn: Conn, day: date, now: datetime) -> CostTally | None:
        since = datetime.combine(day, dt_time(), self.zone)
        until = datetime.combine(day + timedelta(days=1), dt_time(), self.zone)
        tally = CostTally()
        batch = await q.unpriced_calls(conn, since, until, None, SWEEP_BATCH)
        if not batch:
            return tally  # nothing left to price (another process swept it): no call-log read
        try:
            rows = await self.log.rows(since, since)
        except CallLogError as exc:
            log.warning("call_log_unavailable", error=str(exc), job="costs")
            self.retry_at = now + SWEEP_RETRY
            return None
        by_start: dict[tuple[str, str, str, datetime], list[LogRow]] = {}
        for row in rows:
            if row.started_at is not None and row.charges is not None:
                by_start.setdefault((*row.route, row.started_at), []).append(row)
        while batch:
            priced: list[tuple[UUID, LogRow]] = []
            for call in batch:
                found = [
                    row
                    for row in by_start.get((call.bridge, call.from_number, call.to_number, call.started_at), [])
                    if call.ended_at is None or row.ended_at is None or row.ended_at == call.ended_at
                ]
                if len(found) == 1:
                    priced.append((call.id, found[0]))
                elif found:
                    tally.ambiguous += 1
                    log.warning("call_log_ambiguous", call_id=str(call.id), rows=len(found), job="costs")
                else:
                    tally.not_found += 1
            if priced:
                tally.priced += await q.fill_costs(
                    conn,
                    [ident for ident, _ in priced],
                    [row.charges or "" for _, row in priced],
                    [row.pulse_seconds for _, row in priced],
                )
            if len(batch) < SWEEP_BATCH:
                break
            batch = await q.unpriced_calls(conn, since, until, (batch[-1].created_at, batch[-1].id), SWEEP_BATCH)
        return tally
