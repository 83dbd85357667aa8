"""The console's sessions pages: search, one session (numbers masked, or revealed on record), close, expire an order.

Party numbers are masked here, before any template sees them, so no page can show one by forgetting a filter;
only Reveal (a POST with a reason, written to the audit log first) renders a session with its numbers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import msgspec
from litestar import get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from service.api.audit import console_context
from service.api.deps import Db, MaskingRequest
from service.broker import calls, console, events, sessions
from service.broker.audit import Target
from service.broker.errors import InvalidRequest
from service.db import Conn
from service.logging import mask_number
from service.models import Call, Session
from service.web.console.auth import signed_in
from service.web.console.common import Form, view

SESSION_EVENTS = 50


def masked(session: Session) -> Session:
    """The session with both parties' numbers masked (+91******3210); its DID stays in clear."""
    return msgspec.structs.replace(session, customer=mask_number(session.customer), agent=mask_number(session.agent))


def masked_call(call: Call) -> Call:
    """The call with both numbers masked; its bridge (a DID) stays in clear."""
    return msgspec.structs.replace(call, from_=mask_number(call.from_), to=mask_number(call.to))


def _echo(q: str, found: list[Session]) -> str:
    """The search text as the page repeats it: a DID of a session found in clear, any other number masked."""
    dids = {s.masked_number.lstrip("+") for s in found}
    return q if q.strip().lstrip("+") in dids else mask_number(q)


@get("/sessions", guards=[signed_in], include_in_schema=False)
async def session_search(
    request: MaskingRequest, conn: Db, q: FromQuery[str] = "", expired: FromQuery[int] = -1
) -> Any:
    """The newest sessions, or those of an order id (or its beginning), a party's or the masked number; the
    parties masked, and a party's number searched for repeated masked; "Expire order" offered for each order
    found live."""
    found = await console.find_sessions(conn, request.principal.tenant_id, q[:128], request.runtime.clock())
    orders = console.orders_to_expire(found)
    echo = _echo(q, found)
    return view(
        request,
        "console/sessions.html",
        q=echo,
        field=q if echo == q else "",
        sessions=[masked(s) for s in found],
        orders=orders,
        expired=expired,
    )


async def _session_view(
    request: MaskingRequest,
    conn: Conn,
    session: Session,
    revealed: bool = False,
    status: int = 200,
    reveal_error: str | None = None,
) -> Any:
    """A session's page with its calls and newest events; their numbers masked unless revealed."""
    tenant_id = request.principal.tenant_id
    found = list(reversed(await calls.list_calls(conn, tenant_id, str(session.id))))
    about = await events.of_session(conn, tenant_id, session.id, SESSION_EVENTS)
    if not revealed:
        session, found = masked(session), [masked_call(c) for c in found]
    shown = {"session": session, "calls": found, "events": about, "events_shown": SESSION_EVENTS}
    return view(request, "console/session.html", status, **shown, revealed=revealed, reveal_error=reveal_error)


@get("/sessions/{session_id:str}", guards=[signed_in], include_in_schema=False)
async def session_page(request: MaskingRequest, conn: Db, session_id: FromPath[str]) -> Any:
    """One session with its calls and its newest events; party numbers masked (Reveal shows them)."""
    session = await sessions.get_session(conn, request.principal.tenant_id, session_id, request.runtime.clock())
    return await _session_view(request, conn, session)


class Reveal(msgspec.Struct, kw_only=True):
    """Why an ops user needs a session's numbers (kept in the audit log)."""

    reason: str = ""


@post("/sessions/{session_id:str}/reveal", guards=[signed_in], include_in_schema=False, status_code=200)
async def session_reveal(
    request: MaskingRequest, conn: Db, session_id: FromPath[str], data: Annotated[Reveal, Form]
) -> Any:
    """The session's page with its numbers in clear, for this answer only; the look is written to the audit log
    (session.reveal, with the reason) in the transaction that reads them, committed before the page is rendered.

    Without a reason (or one over 500 characters) the page comes back masked, saying what is missing.
    """
    now, tenant_id, audit = request.runtime.clock(), request.principal.tenant_id, console_context(request)
    try:
        async with conn.transaction():
            session = await sessions.get_session(conn, tenant_id, session_id, now)
            await audit.record(conn, "session.reveal", Target("session", str(session.id)), now, data.reason)
    except InvalidRequest as exc:
        session = await sessions.get_session(conn, tenant_id, session_id, now)
        return await _session_view(request, conn, session, status=422, reveal_error=exc.detail)
    return await _session_view(request, conn, session, revealed=True)


@post("/sessions/{session_id:str}/close", guards=[signed_in], include_in_schema=False, status_code=303)
async def session_close(request: MaskingRequest, conn: Db, session_id: FromPath[str]) -> Any:
    """Close a session (POST /v1/sessions/{id}/close)."""
    now, tenant_id = request.runtime.clock(), request.principal.tenant_id
    session = await sessions.close_session(conn, tenant_id, session_id, now, audit=console_context(request))
    return Redirect(f"/console/sessions/{session.id}", status_code=303)


@get("/expire", guards=[signed_in], include_in_schema=False)
async def expire_confirm(request: MaskingRequest, conn: Db, order_id: FromQuery[str]) -> Any:
    """The confirmation step of expiring an order: how many live sessions it would end."""
    count = await console.live_sessions_of_order(conn, request.principal.tenant_id, order_id, request.runtime.clock())
    return view(request, "console/expire.html", order_id=order_id, count=count)


class ExpireOrder(msgspec.Struct, kw_only=True):
    """The confirmed expiry of an order."""

    order_id: str
    confirm: Literal["yes"]


@post("/expire", guards=[signed_in], include_in_schema=False, status_code=303)
async def expire_order(request: MaskingRequest, conn: Db, data: Annotated[ExpireOrder, Form]) -> Any:
    """Expire every live session of an order (POST /v1/sessions/expire)."""
    now, wanted = request.runtime.clock(), sessions.ExpireFilter(order_id=data.order_id)
    audit = console_context(request)
    count = await sessions.expire_sessions(conn, request.principal.tenant_id, wanted, now, audit=audit)
    query = urlencode({"q": data.order_id, "expired": count})
    return Redirect(f"/console/sessions?{query}", status_code=303)
