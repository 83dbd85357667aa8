"""Background tidying: expire sessions, time out calls, match stranded reports, redact and delete old rows.

Time-partitioned tables (events, webhook deliveries and attempts) get their day partitions created ahead
and dropped once past the event retention.

Every job works in batches of rows locked with SKIP LOCKED, one transaction per batch, so any number
of service processes can run it at once and none holds a lock for long.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from service import metrics
from service.broker import events, pools, recordings
from service.broker.costs import CostSweep
from service.broker.horizon import HorizonWatch
from service.broker.reconcile import Reconciler
from service.broker.reports import Matching, rematch_pending
from service.db import Conn
from service.db import audit as audit_q
from service.db import calls as calls_q
from service.db import console as console_q
from service.db import idempotency as idempotency_q
from service.db import links as links_q
from service.db import partitions as partitions_q
from service.db import pools as pools_q
from service.db import retention as retention_q
from service.db import sessions as sessions_q
from service.db import turns as turns_q
from service.provider.calllog import CallLog
from service.provider.thundersms import ThunderSMS
from service.settings import Settings

log = structlog.get_logger("service.sweeps")

BATCH = 500


async def _in_batches(conn: Conn, job: str, step: Callable[[], Awaitable[Sequence[object] | int]]) -> int:
    """Run step (one batch, in its own transaction) until a batch comes back short; count and log the rows."""
    total = 0
    while True:
        async with conn.transaction():
            done = await step()
        count = done if isinstance(done, int) else len(done)
        total += count
        if count < BATCH:
            break
    if total:
        metrics.SWEPT.labels(job).inc(total)
        log.info(job, count=total)
    return total


async def sweep_expired(conn: Conn, now: datetime) -> int:
    """Mark every session past its expiry as expired (ttl)."""

    async def step() -> list[object]:
        expired = await sessions_q.sweep_expired(conn, now, BATCH)
        await events.sessions_closed(conn, expired, now)
        return list(expired)

    return await _in_batches(conn, "sessions_expired", step)


async def time_out_calls(conn: Conn, now: datetime, timeout_seconds: int) -> int:
    """Calls with no report after the timeout become unknown, which frees their sessions for a next call."""
    before = now - timedelta(seconds=timeout_seconds)

    async def step() -> list[object]:
        timed_out = await calls_q.time_out_calls(conn, before, BATCH)
        # A call already unknown (its click got no answer) changes no status: no second call.unknown.
        newly = [call for call, already in timed_out if not already]
        await events.calls_unknown(conn, newly, now)
        metrics.CALLS.labels("unknown").inc(len(newly))
        return list(timed_out)

    return await _in_batches(conn, "calls_timed_out", step)


async def end_recording_retention(conn: Conn, now: datetime) -> int:
    """Destroy the recording references of calls older than their pool's recording_retention_days."""
    return await _in_batches(conn, "recordings_deleted", lambda: recordings.end_retention(conn, now, BATCH))


async def redact_old_sessions(conn: Conn, now: datetime, days: int) -> int:
    """Mask the numbers of sessions ended more than `days` ago (MASKING_RETENTION_DAYS)."""
    cutoff = now - timedelta(days=days)
    return await _in_batches(conn, "sessions_redacted", lambda: retention_q.redact_batch(conn, cutoff, BATCH, now))


# The deletions find their rows without an index of their own (a scan of a table bounded by them), so
# each process runs them at most this often rather than on every sweep.
TIDY_EVERY = timedelta(minutes=5)
REFUSALS_KEPT = timedelta(days=1)
# Day partitions are created this many days ahead, checked this often per process: a sweeper stopped for
# less than the days ahead never lets a day's rows fall into a default partition.
PARTITION_DAYS_AHEAD = 3
PARTITIONS_EVERY = timedelta(hours=1)
# pool.low_headroom is checked at most this often, by one process of the service at a time (db/turns.py). The
# check counts every live binding (about 5 s of a core at 1.3M sessions: docs/performance.md), so the next one
# waits at least HEADROOM_COST_FACTOR times as long as the last took: at most 1/20 of a core goes to it,
# however big the pools. A process that dies while checking holds the turn for HEADROOM_HOLD.
HEADROOM_EVERY = timedelta(minutes=1)
HEADROOM_COST_FACTOR = 20
HEADROOM_HOLD = timedelta(minutes=10)


async def tidy(conn: Conn, settings: Settings, now: datetime) -> dict[str, int]:
    """Delete what no rule needs any more, so that every table stays bounded in steady state.

    Idempotency keys past their 24-hour window; bindings ended longer ago than both the cool-off and
    the sticky memory; provider reports with a final outcome, and report identities, older than the report
    retention; events, webhook deliveries and attempts older than the event retention
    (MASKING_EVENT_RETENTION_DAYS): each day partition once its whole day is past it, by a drop, and rows in
    the default partitions by DELETE; per-minute refusal counts older than a day; audit rows older than
    MASKING_AUDIT_RETENTION_DAYS; recording references older than their pool's recording_retention_days.
    """
    keys_before = now - idempotency_q.REPLAY_WINDOW
    # A pool may set a longer cool-off than the service's: ended bindings are kept for the longest of all.
    longest_cooloff = max(settings.cooloff_seconds, await pools_q.max_cooloff_seconds(conn))
    bindings_before = now - timedelta(seconds=max(longest_cooloff, settings.sticky_memory_seconds))
    reports_before = now - timedelta(days=settings.report_retention_days)
    events_before = now - timedelta(days=settings.event_retention_days)
    return {
        "idempotency_keys_deleted": await _in_batches(
            conn,
            "idempotency_keys_deleted",
            lambda: retention_q.delete_idempotency_keys(conn, keys_before, BATCH),
        ),
        "bindings_deleted": await _in_batches(
            conn, "bindings_deleted", lambda: retention_q.delete_ended_bindings(conn, bindings_before, BATCH)
        ),
        "reports_deleted": await _in_batches(
            conn, "reports_deleted", lambda: retention_q.delete_settled_reports(conn, reports_before, BATCH)
        ),
        "report_keys_deleted": await _in_batches(
            conn, "report_keys_deleted", lambda: retention_q.delete_report_keys(conn, reports_before, BATCH)
        ),
        "partitions_dropped": await drop_old_partitions(
            conn,
            partitions_q.retention_cutoffs(
                events_before, reports_before, now - timedelta(days=settings.audit_retention_days)
            ),
        ),
        "events_deleted": await _in_batches(
            conn,
            "events_deleted",
            lambda: partitions_q.delete_from_default(conn, "events", events_before, BATCH),
        ),
        "webhook_deliveries_deleted": await _in_batches(
            conn,
            "webhook_deliveries_deleted",
            lambda: partitions_q.delete_from_default(conn, "webhook_deliveries", events_before, BATCH),
        ),
        "webhook_attempts_deleted": await _in_batches(
            conn,
            "webhook_attempts_deleted",
            lambda: partitions_q.delete_from_default(conn, "webhook_attempts", events_before, BATCH),
        ),
        "refusal_counts_deleted": await _in_batches(
            conn, "refusal_counts_deleted", lambda: retention_q.delete_old_refusals(conn, now - REFUSALS_KEPT, BATCH)
        ),
        "audit_rows_purged": await purge_audit(conn, now, settings.audit_retention_days),
        "recordings_deleted": await end_recording_retention(conn, now),
    }


async def purge_audit(conn: Conn, now: datetime, retention_days: int) -> int:
    """Delete audit rows older than the retention (the only DELETE the audit log's trigger lets through)."""
    before = now - timedelta(days=retention_days)
    return await _in_batches(conn, "audit_rows_purged", lambda: audit_q.purge_batch(conn, before, BATCH))


async def create_partitions(conn: Conn, now: datetime) -> int:
    """Create the day partitions of today and the next PARTITION_DAYS_AHEAD days that are missing."""
    created = await partitions_q.create_ahead(conn, now.astimezone(UTC).date(), PARTITION_DAYS_AHEAD)
    if created:
        metrics.SWEPT.labels("partitions_created").inc(len(created))
        log.info("partitions_created", names=created)
    return len(created)


async def drop_old_partitions(conn: Conn, before: Mapping[str, datetime]) -> int:
    """Drop the day partitions whose whole day is older than their table's time in `before`."""
    dropped = await partitions_q.drop_before(conn, before)
    if dropped:
        metrics.SWEPT.labels("partitions_dropped").inc(len(dropped))
        log.info("partitions_dropped", names=dropped)
    return len(dropped)


@dataclass
class Every:
    """A job one sweeper runs at most once per period (a clock that went back makes it due at once)."""

    period: timedelta
    last: datetime | None = None

    def due(self, now: datetime) -> bool:
        """Whether the job runs now; when it does, the period starts again from now."""
        if self.last is not None and self.last <= now < self.last + self.period:
            return False
        self.last = now
        return True


@dataclass
class Sweeper:
    """The background runner's sweeps: every job each round, the costly ones on their own schedule."""

    settings: Settings
    # The provider's client: its call log completes calls whose report was lost (None: no reconciliation).
    provider: object = None
    headroom: Every = field(default_factory=lambda: Every(HEADROOM_EVERY))
    tidying: Every = field(default_factory=lambda: Every(TIDY_EVERY))
    partitioning: Every = field(default_factory=lambda: Every(PARTITIONS_EVERY))
    feed_horizon: HorizonWatch = field(default_factory=HorizonWatch)
    reconciler: Reconciler | None = None
    costs: CostSweep | None = None

    def __post_init__(self) -> None:
        if isinstance(self.provider, ThunderSMS):
            s = self.settings
            log = CallLog(
                self.provider.http,
                self.provider.base_url,
                self.provider.token,
                ZoneInfo(s.provider_timezone),
                s.provider_timeout_seconds,
                s.reconcile_requests_per_second,
            )
            after = timedelta(seconds=s.reconcile_after_seconds)
            self.reconciler = Reconciler(log, Matching.from_settings(s), after)
            self.costs = CostSweep(log, ZoneInfo(s.provider_timezone))

    async def sweep_once(self, conn: Conn, now: datetime) -> None:
        """One round of every job."""
        await self.feed_horizon.observe(conn, now)  # first: a job stuck behind the holder's locks must not hide it
        await sweep_expired(conn, now)
        await time_out_calls(conn, now, self.settings.call_report_timeout_seconds)
        await rematch_pending(conn, Matching.from_settings(self.settings), now)
        if self.reconciler is not None:
            await self.reconciler.run(conn, now)
        if self.costs is not None:
            await self.costs.run(conn, now)
        if self.headroom.due(now):
            await headroom_turn(conn, now)
        if self.settings.retention_days:
            await redact_old_sessions(conn, now, self.settings.retention_days)
        if self.partitioning.due(now):
            await create_partitions(conn, now)
        if self.tidying.due(now):
            await tidy(conn, self.settings, now)
        await tidy_web(conn, now)


async def headroom_turn(conn: Conn, now: datetime) -> bool:
    """Check every pool's headroom (pool.low_headroom) if it is due and this process takes the turn; whether it did."""
    if not await turns_q.take_turn(conn, "pool_headroom", now, now + HEADROOM_HOLD):
        return False
    started = time.monotonic()
    await pools.check_headroom(conn, now)
    took = time.monotonic() - started
    wait = max(HEADROOM_EVERY, HEADROOM_COST_FACTOR * timedelta(seconds=took))
    await turns_q.set_due(conn, "pool_headroom", now + wait)
    log.info("pool_headroom_checked", seconds=round(took, 3))
    return True


async def tidy_web(conn: Conn, now: datetime) -> int:
    """Forget ended console sessions, and call links a day after they ended."""
    signed_out = await _in_batches(
        conn, "console_sessions_ended", lambda: console_q.store_delete_expired(conn, now, BATCH)
    )
    links = await _in_batches(
        conn, "call_links_ended", lambda: links_q.delete_old_links(conn, now - timedelta(days=1), BATCH)
    )
    return signed_out + links
