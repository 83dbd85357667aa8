"""The console's sessions pages: search, one session in full, close a session and expire an order."""

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
from service.web.console.auth import signed_in
from service.web.console.common import Form, view

SESSION_EVENTS = 50


@get("/sessions", guards=[signed_in], include_in_schema=False)
async def session_search(
    request: MaskingRequest, conn: Db, q: FromQuery[str] = "", expired: FromQuery[int] = -1
) -> Any:
    """The newest sessions, or those of an order id (or its beginning), a party's or the masked number; the
    parties masked; "Expire order" offered for each order found live."""
    found = await console.find_sessions(conn, request.principal.tenant_id, q[:128], request.runtime.clock())
    orders = console.orders_to_expire(found)
    return view(request, "console/sessions.html", q=q, sessions=found, orders=orders, expired=expired)


@get("/sessions/{session_id:str}", guards=[signed_in], include_in_schema=False)
async def session_page(request: MaskingRequest, conn: Db, session_id: FromPath[str]) -> Any:
    """One session in full, with its calls and its newest events."""
    tenant_id = request.principal.tenant_id
    session = await sessions.get_session(conn, tenant_id, session_id, request.runtime.clock())
    found = await calls.list_calls(conn, tenant_id, session_id)
    about = await events.of_session(conn, tenant_id, session.id, SESSION_EVENTS)
    return view(
        request,
        "console/session.html",
        session=session,
        calls=list(reversed(found)),
        events=about,
        events_shown=SESSION_EVENTS,
    )


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
