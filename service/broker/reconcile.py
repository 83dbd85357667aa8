"""Reconciliation: calls whose report never came are looked up in the provider's call log and completed from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import msgspec
import structlog

from service import metrics
from service.broker.reports import Matching, apply_log_row
from service.db import Conn
from service.db import reconcile as q
from service.provider.calllog import CallLogError, LogRow

log = structlog.get_logger("service.reconcile")

BATCH = 200
# The longest wait between two lookups of one call (the backoff doubles from MASKING_RECONCILE_AFTER_SECONDS).
MAX_BACKOFF = timedelta(hours=1)


class CallLogReader(Protocol):
    """What reconciliation needs of the provider: the call-log rows of calls that ended between two days."""

    async def rows(self, since: datetime, until: datetime) -> list[LogRow]: ...


class Tally(msgspec.Struct, kw_only=True):
    """What one round did: calls completed from the log, not found in it, found more than once."""

    reconciled: int = 0
    not_found: int = 0
    ambiguous: int = 0


@dataclass(frozen=True)
class Reconciler:
    """The reconciliation rules: when a call is first looked up, and the report rules it completes by."""

    log: CallLogReader
    matching: Matching
    after: timedelta

    def backoff(self, lookups: int) -> timedelta:
        """The wait before the next lookup of a call already looked up `lookups` times (doubling, capped)."""
        wait: timedelta = self.after * 2 ** min(lookups, 16)
        return min(wait, MAX_BACKOFF)

    def candidates(self, call: q.DueCall, rows: Sequence[LogRow], placed: set[q.Conversation]) -> list[LogRow]:
        """The rows that could be this call: its bridge and numbers, begun in its window, not another call's."""
        route = (call.bridge, call.from_number, call.to_number)
        first = call.created_at - self.matching.tolerance
        last = call.created_at + timedelta(seconds=self.matching.timeout_seconds)
        return [
            row
            for row in rows
            if row.route == route
            and row.started_at is not None
            and first <= row.started_at <= last
            and row.conversation not in placed
        ]

    async def run(self, conn: Conn, now: datetime) -> Tally:
        """One round, if this process gets the lease: every due call, batch by batch, each settled or deferred."""
        tally = Tally()
        if not await q.take_lease(conn):
            return tally
        try:
            horizon = now - timedelta(seconds=self.matching.timeout_seconds)
            while True:
                due = await q.select_due(conn, now - self.after, horizon, now, BATCH)
                if not due:
                    break
                await self._batch(conn, due, now, tally)
                if len(due) < BATCH:
                    break
        finally:
            await q.give_lease(conn)
        if tally.reconciled or tally.not_found or tally.ambiguous:
            log.info("reconciled", **msgspec.structs.asdict(tally))
        return tally

    async def _batch(self, conn: Conn, due: list[q.DueCall], now: datetime, tally: Tally) -> None:
        oldest = min(call.created_at for call in due) - self.matching.tolerance
        try:
            rows = await self.log.rows(oldest, now)
        except CallLogError as exc:
            log.warning("call_log_unavailable", error=str(exc), calls=len(due))
            await q.defer(
                conn, [c.id for c in due], [now + self.backoff(c.lookups) for c in due], ["log_unavailable"] * len(due)
            )
            return
        routes = list({(c.bridge, c.from_number, c.to_number) for c in due})
        placed = await q.placed_conversations(conn, routes, oldest - timedelta(days=1))
        waiting: list[tuple[q.DueCall, str]] = []
        for call in due:
            found = self.candidates(call, rows, placed)
            if len(found) == 1:
                done = await apply_log_row(conn, call.id, found[0], self.matching, now)
                if done is not None:
                    tally.reconciled += 1
                    metrics.RECONCILED.labels("reconciled").inc()
                    placed.add(found[0].conversation)
                continue
            outcome = "ambiguous" if found else "not_found"
            setattr(tally, outcome, getattr(tally, outcome) + 1)
            metrics.RECONCILED.labels(outcome).inc()
            if found:
                log.warning("call_log_ambiguous", call_id=str(call.id), rows=len(found))
            waiting.append((call, outcome))
        if waiting:
            await q.defer(
                conn,
                [c.id for c, _ in waiting],
                [now + self.backoff(c.lookups) for c, _ in waiting],
                [outcome for _, outcome in waiting],
            )
