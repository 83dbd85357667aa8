"""The provider's reports: stored before they are answered, matched to exactly one call, applied once."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import structlog

from service import metrics
from service.broker.errors import InvalidRequest
from service.db import Conn
from service.db import calls as calls_q
from service.db import reports as q
from service.db import sessions as sessions_q
from service.provider.reports import ParsedReport, parse_report

log = structlog.get_logger("service.reports")

# A report is left to its own request this long before the sweeper matches it instead.
PENDING_GRACE = timedelta(seconds=30)
REMATCH_BATCH = 500


async def store_report(conn: Conn, body: bytes, now: datetime) -> int:
    """Commit the raw body of a report; nothing else may happen before this."""
    return await q.insert_report(conn, body, now)


async def match_report(conn: Conn, report_id: int, zone: ZoneInfo, now: datetime, timeout_seconds: int) -> str:
    """Match a stored report to its call and apply it once; return the outcome."""
    async with conn.transaction():
        body = await q.lock_report(conn, report_id)
        if body is None:
            return "busy"
        report = parse_report(bytes(body), zone)
        if report is None:
            outcome = "unparseable"
            await q.settle_report(conn, report_id, outcome, None, None, None)
        else:
            outcome = await _apply(conn, report_id, report, now, timeout_seconds)
    metrics.REPORTS.labels(outcome).inc()
    log.info("report", report_id=report_id, outcome=outcome)
    return outcome


async def _apply(conn: Conn, report_id: int, report: ParsedReport, now: datetime, timeout_seconds: int) -> str:
    call = await calls_q.find_call_for_report(conn, report.mid, report.bridge, report.from_, report.to)
    if call is None or call.report_id is not None or call.status not in ("initiated", "unknown"):
        since = calls_q.report_window(now, timeout_seconds)
        duplicate = call is not None or await calls_q.finished_call_exists(
            conn, report.bridge, report.from_, report.to, since
        )
        outcome = "duplicate" if duplicate else "unmatched"
        await q.settle_report(conn, report_id, outcome, report.bridge, None, None)
        return outcome
    status = "completed" if (report.billing_seconds or 0) > 0 else "missed"
    await calls_q.complete_call(
        conn,
        call.id,
        report_id,
        calls_q.Outcome(
            status=status,
            started_at=report.started_at,
            ended_at=report.ended_at,
            duration_seconds=report.duration_seconds,
            billing_seconds=report.billing_seconds,
            recording_url=report.recording_url,
            hangup_by=report.hangup_by,
            provider_status=report.status,
            provider_status1=report.status1,
            provider_status2=report.status2,
        ),
    )
    metrics.CALLS.labels(status).inc()
    if status == "completed":
        await sessions_q.close_if_max_calls(conn, call.session_id, now)
    await q.settle_report(conn, report_id, "matched", report.bridge, call.id, call.tenant_id)
    return "matched"


async def rematch_pending(conn: Conn, zone: ZoneInfo, now: datetime, timeout_seconds: int) -> int:
    """Match reports that were stored but never matched (their process died in between)."""
    ids = await q.select_pending_reports(conn, now - PENDING_GRACE, REMATCH_BATCH)
    for report_id in ids:
        await match_report(conn, report_id, zone, now, timeout_seconds)
    return len(ids)


class Report(msgspec.Struct, frozen=True):
    """A stored provider report, raw as the provider sent it, with what it turned out to be."""

    id: int
    received_at: datetime
    bridge: str | None
    outcome: str
    call_id: UUID | None
    body: str


class ReportPage(msgspec.Struct, frozen=True):
    """A page of reports, newest first."""

    items: list[Report]
    next_cursor: str | None


async def list_reports(conn: Conn, tenant_id: int | None, matched: bool, cursor: str | None, limit: int) -> ReportPage:
    """Reports that matched a call (or, matched=False, matched none): a tenant's, or for None, on no known DID."""
    try:
        after = int(cursor) if cursor else None
    except ValueError:
        raise InvalidRequest("`cursor` is not one this service gave out.", field="cursor") from None
    outcomes = ["matched", "duplicate"] if matched else ["unmatched", "unparseable"]
    rows = await q.select_reports(conn, tenant_id, outcomes, after, limit + 1)
    items = [
        Report(
            id=r.id,
            received_at=r.received_at,
            bridge=r.bridge,
            outcome=r.outcome,
            call_id=r.call_id,
            body=r.body.decode("utf-8", "replace"),
        )
        for r in rows[:limit]
    ]
    return ReportPage(items, str(rows[limit - 1].id) if len(rows) > limit else None)
