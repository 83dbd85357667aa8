"""Calls: click-to-call through the session's DID, the provider's reports, timeouts and inbound routing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import structlog

from service import metrics
from service.broker.limits import CallLimits, check_call_caps
from service.broker.models import Call, ProviderOutcome, parse_id
from service.broker.phones import normalize, provider_digits
from service.db import Conn
from service.db import calls as q
from service.db import sessions as sessions_q
from service.errors import (
    CallInProgress,
    InvalidPhoneNumber,
    InvalidRequest,
    NoSession,
    NotFound,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    SessionNotActive,
)
from service.provider.thundersms import ClickToCall, ThunderSMS

log = structlog.get_logger("service.calls")

Clock = Callable[[], datetime]
VariableName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{1,64}$")]


class StartCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions/{id}/calls."""

    first: Literal["agent", "customer"] = "agent"
    record: bool | None = None
    max_call_minutes: Annotated[int, msgspec.Meta(ge=1, le=240)] | None = None
    flow: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    variables: dict[VariableName, Annotated[str, msgspec.Meta(max_length=512)]] = msgspec.field(default_factory=dict)


def call_of(row: asyncpg.Record) -> Call:
    """The resource for a call row."""
    return Call(
        id=str(row["id"]),
        session_id=str(row["session_id"]),
        first=row["first"],
        from_=row["from_number"],
        to=row["to_number"],
        bridge=row["bridge"],
        flow=row["flow"],
        status=row["status"],
        record=row["record"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        duration_seconds=row["duration_seconds"],
        billing_seconds=row["billing_seconds"],
        recording_url=row["recording_url"],
        hangup_by=row["hangup_by"],
        provider=ProviderOutcome(
            status=row["provider_status"],
            status1=row["provider_status1"],
            status2=row["provider_status2"],
            message=row["provider_message"],
        ),
    )


async def place_call(
    db: asyncpg.Pool,
    provider: ThunderSMS,
    tenant_id: int,
    session_id: str,
    body: StartCall,
    clock: Clock,
    limits: CallLimits,
) -> Call:
    """Record the call, then ask the provider; the call's status says what the provider answered."""
    if body.variables and body.flow is None:
        raise InvalidRequest("`variables` are only sent with a `flow`.", field="variables")
    sid = parse_id(session_id, "session")
    call_id = uuid.uuid4()
    async with db.acquire() as conn:
        await check_call_caps(conn, tenant_id, sid, limits, clock())
        try:
            row = await q.insert_call(
                conn,
                tenant_id=tenant_id,
                session_id=sid,
                call_id=call_id,
                first=body.first,
                flow=body.flow,
                record=body.record,
                max_call_minutes=body.max_call_minutes,
                now=clock(),
            )
        except asyncpg.UniqueViolationError:
            raise CallInProgress(
                "This session's previous call has no report yet; wait for it to end before calling again."
            ) from None
        if row is None:
            session = await sessions_q.select_session(conn, tenant_id, sid)
            if session is None:
                raise NotFound("No session with that id.")
            if session["status"] == "active" and session["expires_at"] > clock():
                raise CallInProgress(
                    "This session's DID is carrying its maximum of concurrent calls; try again when one ends."
                )
            raise SessionNotActive("The session is no longer active; create a new one to call.")
    # No transaction is open from here on: the provider may take seconds.
    answer = await provider.click_to_call(
        ClickToCall(
            bridge=provider_digits(row["bridge"]),
            from_=provider_digits(row["from_number"]),
            to=row["to_number"] if body.flow else provider_digits(row["to_number"]),
            record=row["record"],
            mid=str(call_id),
            duration_minutes=row["max_call_minutes"],
            variables=body.variables,
        )
    )
    status, in_flight = {
        "accepted": ("initiated", True),
        "rejected": ("failed", False),
        "unavailable": ("failed", False),
        "timeout": ("unknown", True),
    }[answer.verdict]
    async with db.acquire() as conn:
        row = await q.record_answer(conn, call_id, status, in_flight, answer.message)
    call = call_of(row)
    metrics.CALLS.labels(status).inc()
    if answer.verdict == "rejected":
        raise ProviderRejected(f"The provider refused the call: {answer.message}", call_id=call.id)
    if answer.verdict == "unavailable":
        raise ProviderUnavailable(
            "The provider could not be reached; the call was not placed and is safe to retry.", call_id=call.id
        )
    if answer.verdict == "timeout":
        raise ProviderTimeout(
            "The provider did not answer in time; the call may still ring. Follow it by its id; do not retry blindly.",
            call_id=call.id,
        )
    return call


async def get_call(conn: Conn, tenant_id: int, call_id: str) -> Call:
    """One of the tenant's calls."""
    row = await q.select_call(conn, tenant_id, parse_id(call_id, "call"))
    if row is None:
        raise NotFound("No call with that id.")
    return call_of(row)


async def list_calls(conn: Conn, tenant_id: int, session_id: str, now: datetime) -> list[Call]:
    """A session's calls, oldest first."""
    sid = parse_id(session_id, "session")
    if await sessions_q.select_session(conn, tenant_id, sid) is None:
        raise NotFound("No session with that id.")
    return [call_of(r) for r in await q.select_session_calls(conn, tenant_id, sid)]


class ParsedReport(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a provider report that the service uses, normalized."""

    bridge: str
    from_: str
    to: str
    mid: uuid.UUID | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billing_seconds: int | None
    status: str | None
    status1: str | None
    status2: str | None
    recording_url: str | None
    hangup_by: str | None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text[:512] or None


def _number(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if text.startswith("flow:"):
        return text
    digits = text.removeprefix("+")
    return "+" + digits if digits.isdigit() and 6 <= len(digits) <= 15 else None


def _int(value: Any) -> int | None:
    text = _text(value)
    try:
        return max(int(float(text)), 0) if text is not None else None
    except (ValueError, OverflowError):
        return None


def _time(value: Any, zone: ZoneInfo) -> datetime | None:
    text = _text(value)
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone) if text else None
    except ValueError:
        return None


def parse_report(body: bytes, zone: ZoneInfo) -> ParsedReport | None:
    """Read a report leniently (strings or numbers, empty fields); None when it names no call."""
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    bridge, from_, to = _number(data.get("bridge")), _number(data.get("from")), _number(data.get("to"))
    if bridge is None or from_ is None or to is None:
        return None
    try:
        mid = uuid.UUID(str(data["mid"])) if data.get("mid") else None
    except ValueError:
        mid = None
    return ParsedReport(
        bridge=bridge,
        from_=from_,
        to=to,
        mid=mid,
        started_at=_time(data.get("start_at"), zone),
        ended_at=_time(data.get("end_at"), zone),
        duration_seconds=_int(data.get("duration")),
        billing_seconds=_int(data.get("billing")),
        status=_text(data.get("status")),
        status1=_text(data.get("status1")),
        status2=_text(data.get("status2")),
        recording_url=_text(data.get("recording_url")),
        hangup_by=_text(data.get("hangup_by")),
    )


async def store_report(conn: Conn, body: bytes, now: datetime) -> int:
    """Commit the raw body of a report; nothing else may happen before this."""
    return await q.insert_report(conn, body, now)


async def match_report(conn: Conn, report_id: int, zone: ZoneInfo, now: datetime, timeout_seconds: int) -> str:
    """Match a stored report to its call and apply it once; return the outcome."""
    async with conn.transaction():
        stored = await q.lock_report(conn, report_id)
        if stored is None:
            return "busy"
        report = parse_report(bytes(stored["body"]), zone)
        if report is None:
            outcome = "unparseable"
            await q.settle_report(conn, report_id, outcome, None, None, None)
        else:
            outcome = await _apply(conn, report_id, report, now, timeout_seconds)
    metrics.REPORTS.labels(outcome).inc()
    log.info("report", report_id=report_id, outcome=outcome)
    return outcome


async def _apply(conn: Conn, report_id: int, report: ParsedReport, now: datetime, timeout_seconds: int) -> str:
    call = await q.find_call_for_report(conn, report.mid, report.bridge, report.from_, report.to)
    if call is None or call["report_id"] is not None or call["status"] not in ("initiated", "unknown"):
        since = q.report_window(now, timeout_seconds)
        duplicate = call is not None or await q.finished_call_exists(
            conn, report.bridge, report.from_, report.to, since
        )
        outcome = "duplicate" if duplicate else "unmatched"
        await q.settle_report(conn, report_id, outcome, report.bridge, None, None)
        return outcome
    status = "completed" if (report.billing_seconds or 0) > 0 else "missed"
    await q.complete_call(
        conn,
        call["id"],
        report_id,
        {
            "status": status,
            "started_at": report.started_at,
            "ended_at": report.ended_at,
            "duration_seconds": report.duration_seconds,
            "billing_seconds": report.billing_seconds,
            "recording_url": report.recording_url,
            "hangup_by": report.hangup_by,
            "provider_status": report.status,
            "provider_status1": report.status1,
            "provider_status2": report.status2,
        },
    )
    metrics.CALLS.labels(status).inc()
    if status == "completed":
        await q.close_if_max_calls(conn, call["session_id"], now)
    await q.settle_report(conn, report_id, "matched", report.bridge, call["id"], call["tenant_id"])
    return "matched"


async def rematch_pending(conn: Conn, zone: ZoneInfo, now: datetime, timeout_seconds: int) -> int:
    """Match reports that were stored but never matched (their process died in between)."""
    ids = await q.select_pending_reports(conn, now - timedelta(seconds=30), 500)
    for report_id in ids:
        await match_report(conn, report_id, zone, now, timeout_seconds)
    return len(ids)


async def time_out_calls(conn: Conn, now: datetime, timeout_seconds: int) -> int:
    """Calls with no report after the timeout become unknown, which frees their sessions for a next call."""
    total = 0
    while True:
        async with conn.transaction():
            ids = await q.time_out_calls(conn, now - timedelta(seconds=timeout_seconds), 500)
        total += len(ids)
        if len(ids) < 500:
            break
    if total:
        metrics.SWEPT.labels("calls_timed_out").inc(total)
        metrics.CALLS.labels("unknown").inc(total)
        log.info("calls_timed_out", count=total)
    return total


class Report(msgspec.Struct, frozen=True):
    """A stored provider report, raw as the provider sent it, with what it turned out to be."""

    id: int
    received_at: datetime
    bridge: str | None
    outcome: str
    call_id: str | None
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
            id=r["id"],
            received_at=r["received_at"],
            bridge=r["bridge"],
            outcome=r["outcome"],
            call_id=str(r["call_id"]) if r["call_id"] else None,
            body=bytes(r["body"]).decode("utf-8", "replace"),
        )
        for r in rows[:limit]
    ]
    return ReportPage(items, str(rows[limit - 1]["id"]) if len(rows) > limit else None)


class Route(msgspec.Struct, frozen=True):
    """Where to connect a call arriving on a DID: the other party, as digits."""

    session_id: str
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
    return Route(session_id=str(row["id"]), connect_to=provider_digits(row["other"]))
