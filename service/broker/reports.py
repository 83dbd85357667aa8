"""The provider's reports: stored before they are answered, matched to exactly one call, applied once."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import structlog

from service import metrics
from service.broker.paging import Cursor
from service.db import Conn
from service.db import reports as q
from service.models import Call, Report
from service.provider.calllog import LogRow
from service.provider.reports import ParsedReport, parse_report, report_key
from service.settings import Settings

log = structlog.get_logger("service.reports")

# A pending report is left this long before the sweeper applies it (only a failed apply, or an older
# version's two-step ingest, leaves one pending).
PENDING_GRACE = timedelta(seconds=30)
REMATCH_BATCH = 500
# A report may reach us this long after its call timed out (the provider retries for up to a day).
REPORT_GRACE = timedelta(days=1)
# Reasons that point at the provider's clock or MASKING_PROVIDER_TIMEZONE rather than at a lost call.
TIME_REASONS = ("before_call", "times_in_future")
# Failures of applying a report that storing it raw (pending, for the sweeper) can survive; a lost
# database connection is not among them: then nothing is stored and the provider hears no 200.
_APPLY_FAILED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.TransactionRollbackError,
    asyncpg.ProgramLimitExceededError,
    ValueError,  # asyncpg's client-side "invalid input for query argument", UnicodeEncodeError
    OverflowError,
)


class Matching(msgspec.Struct, frozen=True, kw_only=True):
    """What matching needs besides the report: the provider's zone and the clock rules."""

    zone: ZoneInfo
    timeout_seconds: int
    tolerance_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Matching:
        """The matching rules the settings give."""
        return cls(
            zone=ZoneInfo(settings.provider_timezone),
            timeout_seconds=settings.call_report_timeout_seconds,
            tolerance_seconds=settings.report_clock_tolerance_seconds,
        )

    @property
    def tolerance(self) -> timedelta:
        """How far the provider's clock may differ from ours."""
        return timedelta(seconds=self.tolerance_seconds)


async def ingest(conn: Conn, body: bytes, matching: Matching, now: datetime) -> q.Ingested:
    """Store a report and apply it once, in one round trip: parse first, then one statement.

    Nothing is acknowledged unstored: on success the report is committed; if applying it fails for a
    reason other than the database being away, its raw body is stored pending for the sweeper.
    """
    report = parse_report(body, matching.zone)
    if report is None:
        report_id = await q.insert_unparseable(conn, body, now)
        return _settled(q.Ingested(report_id, "unparseable", None, None, None), None)
    try:
        return await _apply(conn, None, body, report, matching, now, now)
    except _APPLY_FAILED:
        log.exception("report_apply_failed")
        report_id = await q.insert_report(conn, body, now)
        return q.Ingested(report_id, "pending", None, None, None)


async def _apply(
    conn: Conn,
    report_id: int | None,
    body: bytes,
    report: ParsedReport,
    matching: Matching,
    received_at: datetime,
    now: datetime,
) -> q.Ingested:
    """Store and apply one parsed report (INGEST): DESIGN rule 5, the same report twice has one effect."""
    result = await q.ingest_report(conn, _stored(report_id, body, report, matching, received_at, now))
    if result.call is not None:
        _completed(result.call)
    return _settled(result, report)


def _stored(
    report_id: int | None,
    body: bytes,
    report: ParsedReport,
    matching: Matching,
    received_at: datetime,
    now: datetime,
    log_row: LogRow | None = None,
) -> q.Ingest:
    """INGEST's parameters for a report (or a call-log row put as a report: its source, cost and pulse)."""
    times = report.times()
    return q.Ingest(
        report_id=report_id,
        body=body,
        body_text=q.as_text(body),
        key=report_key(report),
        now=now,
        received_at=received_at,
        # An unnamed report matches only calls recent enough that the provider may still report them.
        since=now - timedelta(seconds=matching.timeout_seconds) - REPORT_GRACE,
        tolerance=matching.tolerance,
        bridge=report.bridge,
        from_=report.from_,
        to=report.to,
        mid=report.mid,
        earliest=min(times, default=None),
        future=any(t > received_at + matching.tolerance for t in times),
        status=report.call_status,
        started_at=report.started_at,
        ended_at=report.ended_at,
        duration_seconds=report.duration_seconds,
        billing_seconds=report.billing_seconds,
        recording_url=report.recording_url,
        hangup_by=report.hangup_by,
        provider_status=report.status,
        provider_status1=report.status1,
        provider_status2=report.status2,
        source="report" if log_row is None else "call_log",
        cost=None if log_row is None else log_row.charges,
        billing_pulse_seconds=None if log_row is None else log_row.pulse_seconds,
    )


async def apply_log_row(conn: Conn, call_id: uuid.UUID, row: LogRow, matching: Matching, now: datetime) -> Call | None:
    """Complete a call from its row in the provider's call log exactly as its report would (INGEST, named by
    the call's id); the row is stored as the call's report. None when the call no longer waits for one."""
    report = ParsedReport(
        bridge=row.bridge,
        from_=row.from_,
        to=row.to,
        mid=call_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration_seconds=row.duration_seconds,
        billing_seconds=row.billing_seconds,
        status=row.status,
        status1=None,
        status2=None,
        recording_url=row.audio,
        hangup_by=row.hangup_by,
    )
    body = msgspec.json.encode({"source": "call_log", "mid": str(call_id), "row": row})
    result = await q.ingest_report(conn, _stored(None, body, report, matching, now, now, row))
    log.info("call_log_applied", report_id=result.report_id, outcome=result.outcome, reason=result.reason)
    return None if result.call is None else _completed(result.call)


def _completed(call: Call) -> Call:
    """The one place a report finishes a call (completed or missed): the call as it now is."""
    metrics.CALLS.labels(call.status).inc()
    return call


def _settled(result: q.Ingested, report: ParsedReport | None) -> q.Ingested:
    """The one place a report reaches its outcome (matched, duplicate, unmatched, unparseable)."""
    metrics.REPORTS.labels(result.outcome).inc()
    log.info("report", report_id=result.report_id, outcome=result.outcome, reason=result.reason)
    if result.reason in TIME_REASONS and report is not None:
        metrics.REPORT_TIME_MISMATCH.labels(result.reason).inc()
        log.warning(
            "report_time_mismatch",
            report_id=result.report_id,
            reason=result.reason,
            started_at=report.started_at,
            ended_at=report.ended_at,
            hint="the report's times do not fit the call; check MASKING_PROVIDER_TIMEZONE and the provider's clock",
        )
    return result


async def match_pending(conn: Conn, report_id: int, matching: Matching, now: datetime) -> str:
    """Apply one pending report (stored, never applied); return its outcome ('busy' if another has it)."""
    async with conn.transaction():
        pending = await q.lock_report(conn, report_id)
        if pending is None:
            return "busy"
        report = parse_report(pending.body, matching.zone)
        if report is None:
            await q.settle_report(conn, report_id, "unparseable", None)
            return _settled(q.Ingested(report_id, "unparseable", None, None, None), None).outcome
        result = await _apply(conn, report_id, pending.body, report, matching, pending.received_at, now)
        return result.outcome


async def rematch_pending(conn: Conn, matching: Matching, now: datetime) -> int:
    """Apply reports that were stored but never applied; a report that cannot be is settled, never retried for ever."""
    ids = await q.select_pending_reports(conn, now - PENDING_GRACE, REMATCH_BATCH)
    for report_id in ids:
        try:
            await match_pending(conn, report_id, matching, now)
        except Exception:
            if conn.is_closed():
                raise
            log.exception("report_rematch_failed", report_id=report_id)
            await _give_up(conn, report_id, matching, now)
    return len(ids)


async def _give_up(conn: Conn, report_id: int, matching: Matching, now: datetime) -> None:
    """Settle a report that cannot be applied as unmatched (matching_failed); its DID's tenant gets report.unmatched."""
    async with conn.transaction():
        pending = await q.lock_report(conn, report_id)
        if pending is None:
            return
        report = parse_report(pending.body, matching.zone)
        bridge = report.bridge if report else None
        await q.give_up_report(conn, report_id, "matching_failed", bridge, pending.body, now)
    _settled(q.Ingested(report_id, "unmatched", "matching_failed", None, None), None)


# A reports page resumes below the id of its last report. Cursors given out before the paging codec were the id.
CURSOR = Cursor("cursor", legacy_sep=".")


class ReportPage(msgspec.Struct, frozen=True):
    """A page of reports, newest first."""

    items: list[Report]
    next_cursor: str | None


async def list_reports(conn: Conn, tenant_id: int | None, matched: bool, cursor: str | None, limit: int) -> ReportPage:
    """Reports that matched a call (or, matched=False, matched none): a tenant's, or for None, on no known DID."""
    after = CURSOR.numbers(cursor, 1)[0] if cursor else None
    outcomes = ["matched", "duplicate"] if matched else ["unmatched", "unparseable"]
    rows = await q.select_reports(conn, tenant_id, outcomes, after, limit + 1)
    items = [
        Report(
            id=r.id,
            received_at=r.received_at,
            bridge=r.bridge,
            outcome=r.outcome,
            reason=r.reason,
            call_id=r.call_id,
            body=r.body.decode("utf-8", "replace"),
        )
        for r in rows[:limit]
    ]
    return ReportPage(items, CURSOR.encode(rows[limit - 1].id) if len(rows) > limit else None)
