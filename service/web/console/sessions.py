"""The console's sessions pages: search, one session (numbers masked, or revealed on record), close, expire an order.

The search form is posted, so a number an operator searches for is in no URL (which proxy logs and browser
history keep); an order id may still be given in the address.

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


class Search(msgspec.Struct, kw_only=True):
    """What the sessions search form posts: an order id (or its beginning), a party's or the masked number."""

    q: str = ""


async def _results(request: MaskingRequest, conn: Conn, q: str, expired: int = -1, number_in_url: bool = False) -> Any:
    """The sessions page for a search: the parties masked, a party's number searched for repeated masked (and
    left out of the search box); "Expire order" offered for each order found live."""
    found = await console.find_sessions(conn, request.principal.tenant_id, q[:128], request.runtime.clock())
    echo = _echo(q, found)
    return view(
        request,
        "console/sessions.html",
        q=echo,
        field=q if echo == q else "",
        sessions=[masked(s) for s in found],
        orders=console.orders_to_expire(found),
        expired=expired,
        number_in_url=number_in_url,
    )


@get("/sessions", guards=[signed_in], include_in_schema=False)
async def session_search(
    request: MaskingRequest,
    conn: Db,
    q: FromQuery[str] = "",
    expired: FromQuery[int] = -1,
    number_in_url: FromQuery[bool] = False,
) -> Any:
    """The newest sessions, or those of an order id given in the address (bookmarks, "back to the order" links).

    A phone number in the address (an old bookmark, a typed URL) is not searched: the answer is a redirect to
    this page without it, saying to use the form, so that the address bar, the history entry and the next
    link carry no number. The test is the log masker's, so what the server log would mask never stays in a URL.
    """
    if mask_number(q) != q:
        return Redirect("/console/sessions?number_in_url=1", status_code=303)
    return await _results(request, conn, q, expired, number_in_url)


@post("/sessions", guards=[signed_in], include_in_schema=False, status_code=200)
async def session_search_form(request: MaskingRequest, conn: Db, data: Annotated[Search, Form]) -> Any:
    """The search form's answer, rendered as the POST's page: the text searched for (a party's number, say)
    travels in the body, with the form's CSRF token, and never in a URL a proxy log or the browser keeps."""
    return await _results(request, conn, data.q)


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
