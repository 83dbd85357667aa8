"""Click-to-call: record the call, ask the provider once, and read calls back."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg
import structlog

from service import metrics
from service.broker import events
from service.broker.bodies import StartCall
from service.broker.errors import (
    CallInProgress,
    InvalidRequest,
    NotFound,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RecordingNotAllowed,
    SessionNotActive,
    parse_id,
)
from service.broker.limits import CallLimits, check_call_caps
from service.broker.phones import provider_digits
from service.db import Conn
from service.db import calls as q
from service.db import sessions as sessions_q
from service.models import Call
from service.provider.thundersms import Answer, ClickToCall

log = structlog.get_logger("service.calls")

Clock = Callable[[], datetime]


class Dialler(Protocol):
    """What the broker needs of a provider: place one click-to-call and say how it went."""

    async def click_to_call(self, call: ClickToCall) -> Answer: ...


async def place_call(
    db: asyncpg.Pool,
    provider: Dialler,
    tenant_id: int,
    session_id: str,
    body: StartCall,
    clock: Clock,
    limits: CallLimits,
    party_number: str | None = None,
) -> Call:
    """Record the call, then ask the provider; the call's status says what the provider answered.

    party_number (a call link's press): the number `first` must still have, else no call is recorded.
    """
    if body.variables and body.flow is None:
        raise InvalidRequest("`variables` are only sent with a `flow`.", field="variables")
    sid = parse_id(session_id, "session")
    call_id = uuid.uuid4()
    async with db.acquire() as conn:
        await check_call_caps(conn, tenant_id, sid, limits, clock())
        if body.record and not await q.recording_allowed(conn, tenant_id, sid):
            raise RecordingNotAllowed(
                "This session's pool does not allow recording; place the call without `record: true`.",
                field="record",
            )
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
                party_number=party_number,
            )
        except asyncpg.UniqueViolationError:
            raise CallInProgress(
                "This session's previous call has no report yet; wait for it to end before calling again."
            ) from None
        if row is None:
            session = await sessions_q.select_session(conn, tenant_id, sid)
            if session is None:
                raise NotFound("No session with that id.")
            if session.status == "active" and session.expires_at > clock():
                raise CallInProgress(
                    "This session's DID is carrying its maximum of concurrent calls; try again when one ends."
                )
            raise SessionNotActive("The session is no longer active; create a new one to call.")
    # No transaction is open from here on: the provider may take seconds.
    answer = await provider.click_to_call(
        ClickToCall(
            bridge=provider_digits(row.bridge),
            from_=provider_digits(row.from_number),
            to=row.to_number if body.flow else provider_digits(row.to_number),
            record=row.record,
            mid=str(call_id),
            duration_minutes=row.max_call_minutes,
            variables=body.variables,
        )
    )
    status, in_flight = {
        "accepted": ("initiated", True),
        "rejected": ("failed", False),
        "unavailable": ("failed", False),
        "timeout": ("unknown", True),
    }[answer.verdict]
    async with db.acquire() as conn, conn.transaction():
        call = await q.record_answer(conn, call_id, status, in_flight, answer.message)
        if call.status == status:  # not already finished by a report that came first (that emitted its own)
            await events.emit_call(conn, tenant_id, call, clock())
    metrics.CALLS.labels(status).inc()
    if answer.verdict == "rejected":
        # Its free text stays off the problem, which an agent's call link shows; the call keeps it (masked).
        raise ProviderRejected(
            "The provider refused the call; its message is the call's provider.message.", call_id=str(call.id)
        )
    if answer.verdict == "unavailable":
        raise ProviderUnavailable(
            "The provider could not be reached; the call was not placed and is safe to retry.", call_id=str(call.id)
        )
    if answer.verdict == "timeout":
        raise ProviderTimeout(
            "The provider did not answer in time; the call may still ring. Follow it by its id; do not retry blindly.",
            call_id=str(call.id),
        )
    return call


async def get_call(conn: Conn, tenant_id: int, call_id: str) -> Call:
    """One of the tenant's calls."""
    call = await q.select_call(conn, tenant_id, parse_id(call_id, "call"))
    if call is None:
        raise NotFound("No call with that id.")
    return call


async def list_calls(conn: Conn, tenant_id: int, session_id: str) -> list[Call]:
    """A session's calls, oldest first."""
    sid = parse_id(session_id, "session")
    if await sessions_q.select_session(conn, tenant_id, sid) is None:
        raise NotFound("No session with that id.")
    return await q.select_session_calls(conn, tenant_id, sid)


# Calls waiting on the call log listed by the console, at most.
AWAITING_SHOWN = 100


async def calls_awaiting_log(conn: Conn, tenant_id: int, now: datetime, after_seconds: int) -> list[q.AwaitingLog]:
    """Calls still waiting for their report past MASKING_RECONCILE_AFTER_SECONDS (so looked up in the provider's
    call log), oldest first, with how their lookups went: not found yet, ambiguous, or the log unavailable."""
    return await q.select_awaiting_log(conn, tenant_id, now - timedelta(seconds=after_seconds), AWAITING_SHOWN)
