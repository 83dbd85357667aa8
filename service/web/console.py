"""The ops console: sign-in with an ops key, then pools, DIDs, sessions, calls, reports and webhooks of that tenant.

Every change goes through the broker functions the API uses; every page needs a live console session
whose key still has the `ops` scope (checked on each request, so a revoked key signs the console out).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect

from service.api.audit import console_context
from service.api.deps import Db, MaskingRequest, Runtime
from service.broker import audit, calls, console, dids, events, links, reports, sessions, webhooks
from service.broker.audit import DID_STATUS_ACTIONS, Target
from service.broker.errors import DidInUse, DomainError, RateLimited
from service.broker.pools import pool_stats
from service.models import DidStatus
from service.provider.reports import parse_report
from service.web.pages import address_of, error_page, page, status_of
from service.web.security import ROTATE, ConsoleSessionConfig

# The console's sections, in the order of its navigation bar: (path, label). A new section is one entry.
NAV = [
    ("/console/pools", "Pools"),
    ("/console/dids", "DIDs"),
    ("/console/sessions", "Sessions"),
    ("/console/calls", "Calls needing attention"),
    ("/console/reports", "Unmatched reports"),
    ("/console/webhooks", "Webhooks"),
    ("/console/audit", "Audit"),
]
# The DIDs a search shows at most (the search itself reaches every DID: it is a predicate in SQL).
DIDS_SHOWN = 500
DID_STATUSES = ("active", "draining", "retired")
SESSION_EVENTS = 50
AUDIT_SHOWN = 50
# Pools with refusals but no DIDs, listed under the pools table (the busiest first).
UNKNOWN_POOLS_SHOWN = 20
Form = Body(media_type=RequestEncodingType.URL_ENCODED)
# Why a report matched no call, in words (the code is shown beside them; see provider_reports.reason).
REPORT_REASONS = {
    "no_call": "no call in flight on that DID between those numbers",
    "before_call": "it ended before the call was placed",
    "times_in_future": "its times are in the future",
    "matching_failed": "it could not be matched (see the logs)",
    "same_report": "the same report again",
    "call_already_reported": "its call already had a report",
}
# Sign-in attempts (right or wrong key) a client address may make a minute, per service process; the burst is
# the same size. Enough for a person who mistypes; 300 guesses take half an hour per process.
SIGN_INS_PER_MINUTE = 10


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: a console session whose key is live and has the route's scope (ops by default)."""
    key_hash = connection.session.get("key") if connection.scope.get("session") else None
    if not key_hash:
        raise NotAuthorizedException("sign in")
    runtime: Runtime = connection.app.state.runtime
    async with runtime.db.acquire() as conn:
        principal = await console.principal_of(conn, key_hash)
    if principal is None or not principal.allows(handler.opt.get("scope", "ops")):
        connection.clear_session()
        raise NotAuthorizedException("sign in")
    connection.state.principal = principal


def _ctx(request: MaskingRequest, **context: Any) -> dict[str, Any]:
    return {"nav": NAV, "here": request.url.path, "tenant": request.principal.tenant, **context}


def _view(request: MaskingRequest, name: str, **context: Any) -> Any:
    return page(name, 200, **_ctx(request, **context))


# Sign-in and sign-out.


class SignIn(msgspec.Struct, kw_only=True):
    """The sign-in form."""

    key: str = ""


@get("/sign-in", include_in_schema=False)
async def sign_in_form() -> Any:
    """The sign-in page."""
    return page("console/sign_in.html")


@post("/sign-in", include_in_schema=False, status_code=303)
async def sign_in(request: MaskingRequest, data: Annotated[SignIn, Form]) -> Any:
    """Exchange an ops key for a console session; the key itself is never stored, shown or logged.

    Attempts are limited per client address (a plain 429 page with Retry-After), so keys cannot be guessed fast.
    """
    buckets: links.Buckets = request.route_handler.opt["sign_in_limit"]
    try:
        buckets.take(address_of(request), "sign-in attempts from your address")
    except RateLimited as exc:
        wait = str(exc.extra["retry_after"])
        return error_page(429, "Too many sign-in attempts", exc.detail, {"Retry-After": wait}, console=True)
    try:
        principal, key_hash = await console.sign_in(request.runtime.db, data.key[:256])
    except DomainError as exc:
        return page("console/sign_in.html", status_of(exc.code), error=exc.detail)
    async with request.runtime.db.acquire() as conn:
        await console_context(request, principal).record(conn, "console.sign_in", None, request.runtime.clock())
    request.scope.setdefault("state", {})[ROTATE] = True
    request.set_session({"key": key_hash, "tenant": principal.tenant})
    return Redirect("/console/pools", status_code=303)


@post("/sign-out", guards=[signed_in], include_in_schema=False, status_code=303)
async def sign_out(request: MaskingRequest, conn: Db) -> Any:
    """End the console session (one whose key was revoked has already ended: the guard signed it out)."""
    await console_context(request).record(conn, "console.sign_out", None, request.runtime.clock())
    request.clear_session()
    return Redirect("/console/sign-in", status_code=303)


# Pages.


@get("/", include_in_schema=False)
async def home() -> Redirect:
    """The console opens on its pools."""
    return Redirect("/console/pools", status_code=303)


@get("/pools", guards=[signed_in], include_in_schema=False)
async def pools(request: MaskingRequest, conn: Db) -> Any:
    """Per pool: DIDs, active sessions, headroom, refusals in the last hour; sessions per hour over the last day."""
    now = request.runtime.clock()
    tenant_id = request.principal.tenant_id
    stats = await pool_stats(conn, tenant_id, now)
    refused = await console.refusals_last_hour(conn, tenant_id, now)
    # Refusals for a pool with no DIDs (a misspelt pool name in a backend, say) are listed on their own.
    known = {p.pool for p in stats}
    unknown = sorted(((n, pool) for pool, n in refused.items() if pool not in known), reverse=True)
    hours = await console.sessions_by_hour(conn, tenant_id, now)
    return _view(
        request,
        "console/pools.html",
        pools=stats,
        refused=refused,
        unknown=unknown[:UNKNOWN_POOLS_SHOWN],
        chart=_chart(hours),
    )


def _chart(hours: list[console.HourCount]) -> dict[str, Any]:
    """Bars of an inline SVG that scales to its card: 24 hours, a y axis from 0 to the busiest hour, hour labels."""
    top = max((h.sessions for h in hours), default=0)
    scale = top or 1
    left, width, gap, height, bottom = 36, 20, 3, 120, 18
    bars = [
        {
            "x": left + i * (width + gap),
            "y": height - round(h.sessions * height / scale),
            "h": round(h.sessions * height / scale),
            "n": h.sessions,
            "at": h.at.strftime("%H:00"),
        }
        for i, h in enumerate(hours)
    ]
    ticks = sorted({0, (scale + 1) // 2, scale})
    return {
        "bars": bars,
        "left": left,
        "width": left + len(hours) * (width + gap),
        "height": height,
        "full_height": height + bottom,
        "bar": width,
        "ticks": [{"n": t, "y": height - round(t * height / scale)} for t in ticks],
        "total": sum(h.sessions for h in hours),
        "top": top,
    }


@get("/dids", guards=[signed_in], include_in_schema=False)
async def did_list(
    request: MaskingRequest,
    conn: Db,
    q: FromQuery[str] = "",
    pool: FromQuery[str] = "",
    status: FromQuery[str] = "",
    done: FromQuery[str] = "",
) -> Any:
    """The tenant's DIDs, searchable by number, pool and status; drain, retire or re-activate each."""
    return await _dids_page(request, conn, q, pool, status, done=done)


async def _dids_page(
    request: MaskingRequest,
    conn: Db,
    q: str,
    pool: str,
    status: str,
    *,
    done: str = "",
    error: str = "",
    code: int = 200,
) -> Any:
    """The DIDs page: a search (in SQL, over every DID of the tenant) and what was just done or refused."""
    wanted = status if status in DID_STATUSES else None
    found = await console.search_dids(
        conn, request.principal.tenant_id, q[:64], pool[:64] or None, wanted, request.runtime.clock(), DIDS_SHOWN
    )
    return page(
        "console/dids.html",
        code,
        **_ctx(
            request,
            dids=found.items,
            more=found.more,
            shown=DIDS_SHOWN,
            q=q,
            pool=pool,
            status_filter=status,
            done=done if done in DID_STATUSES else "",
            error=error,
        ),
    )


class DidChange(msgspec.Struct, kw_only=True):
    """A DID's new status, from its row's form; retiring is done only once confirmed."""

    status: DidStatus
    confirm: str = ""


@post("/dids/{number:str}", guards=[signed_in], include_in_schema=False, status_code=303)
async def did_change(request: MaskingRequest, conn: Db, number: FromPath[str], data: Annotated[DidChange, Form]) -> Any:
    """Drain, retire or re-activate a DID (PATCH /v1/dids/{number}'s rules); a refusal is said on the DIDs page.

    Retire first answers a confirmation page (a form, so it works without JavaScript); its Yes retires.
    """
    if data.status == "retired" and data.confirm != "yes":
        return _view(request, "console/retire.html", number=number)
    now = request.runtime.clock()
    try:
        async with conn.transaction():
            did = await dids.change_did(conn, request.principal.tenant_id, number, data.status, None, now)
            if (action := DID_STATUS_ACTIONS.get(data.status)) is not None:
                await console_context(request).record(conn, action, Target("did", did.number), now)
    except DidInUse as exc:
        return await _dids_page(request, conn, number.lstrip("+"), "", "", error=exc.detail, code=409)
    return Redirect(f"/console/dids?q={did.number.lstrip('+')}&done={did.status}", status_code=303)


@get("/sessions", guards=[signed_in], include_in_schema=False)
async def session_search(
    request: MaskingRequest, conn: Db, q: FromQuery[str] = "", expired: FromQuery[int] = -1
) -> Any:
    """The newest sessions, or those of an order id (or its beginning), a party's or the masked number; the
    parties masked; "Expire order" offered for each order found live."""
    found = await console.find_sessions(conn, request.principal.tenant_id, q[:128], request.runtime.clock())
    orders = console.orders_to_expire(found)
    return _view(request, "console/sessions.html", q=q, sessions=found, orders=orders, expired=expired)


@get("/sessions/{session_id:str}", guards=[signed_in], include_in_schema=False)
async def session_page(request: MaskingRequest, conn: Db, session_id: FromPath[str]) -> Any:
    """One session in full, with its calls and its newest events."""
    tenant_id = request.principal.tenant_id
    session = await sessions.get_session(conn, tenant_id, session_id, request.runtime.clock())
    found = await calls.list_calls(conn, tenant_id, session_id)
    about = await events.of_session(conn, tenant_id, session.id, SESSION_EVENTS)
    return _view(
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
    now = request.runtime.clock()
    async with conn.transaction():
        session = await sessions.close_session(conn, request.principal.tenant_id, session_id, now)
        await console_context(request).record(conn, "session.close", Target("session", str(session.id)), now)
    return Redirect(f"/console/sessions/{session.id}", status_code=303)


@get("/expire", guards=[signed_in], include_in_schema=False)
async def expire_confirm(request: MaskingRequest, conn: Db, order_id: FromQuery[str]) -> Any:
    """The confirmation step of expiring an order: how many live sessions it would end."""
    count = await console.live_sessions_of_order(conn, request.principal.tenant_id, order_id, request.runtime.clock())
    return _view(request, "console/expire.html", order_id=order_id, count=count)


class ExpireOrder(msgspec.Struct, kw_only=True):
    """The confirmed expiry of an order."""

    order_id: str
    confirm: Literal["yes"]


@post("/expire", guards=[signed_in], include_in_schema=False, status_code=303)
async def expire_order(request: MaskingRequest, conn: Db, data: Annotated[ExpireOrder, Form]) -> Any:
    """Expire every live session of an order (POST /v1/sessions/expire)."""
    now, wanted = request.runtime.clock(), sessions.ExpireFilter(order_id=data.order_id)
    async with conn.transaction():
        count = await sessions.expire_sessions(conn, request.principal.tenant_id, wanted, now)
        await console_context(request).record(conn, "sessions.expire", Target("order", data.order_id), now)
    query = urlencode({"q": data.order_id, "expired": count})
    return Redirect(f"/console/sessions?{query}", status_code=303)


@get("/calls", guards=[signed_in], include_in_schema=False)
async def attention(request: MaskingRequest, conn: Db) -> Any:
    """Calls of the last 24 hours that ended unknown or failed."""
    found = await console.calls_needing_attention(conn, request.principal.tenant_id, request.runtime.clock())
    return _view(request, "console/calls.html", calls=found)


@get("/reports", guards=[signed_in], include_in_schema=False)
async def unmatched(request: MaskingRequest, conn: Db, cursor: FromQuery[str | None] = None) -> Any:
    """Provider reports on the tenant's DIDs that matched no call; numbers masked."""
    found = await reports.list_reports(conn, request.principal.tenant_id, False, cursor, 50)
    zone = request.runtime.settings.provider_timezone
    rows = []
    for r in found.items:
        parsed = parse_report(r.body.encode(), ZoneInfo(zone))
        rows.append({"report": r, "parsed": parsed})
    return _view(request, "console/reports.html", rows=rows, next_cursor=found.next_cursor, reasons=REPORT_REASONS)


@get("/webhooks", guards=[signed_in], include_in_schema=False)
async def webhook_list(
    request: MaskingRequest,
    conn: Db,
    queued: FromQuery[str] = "",
    endpoints: FromQuery[int] = -1,
    tested: FromQuery[str] = "",
    outcome: FromQuery[str] = "",
    code: FromQuery[int] = 0,
) -> Any:
    """The tenant's webhook endpoints, each with its failing events as they stand now and a Test button (no secret
    is ever shown)."""
    tenant_id = request.principal.tenant_id
    found = await webhooks.list_endpoints(conn, tenant_id)
    rows = [{"endpoint": e, "failing": await console.failing_events(conn, tenant_id, e.id)} for e in found]
    done = queued if queued.startswith("evt_") and queued[4:].isdigit() and endpoints >= 0 else ""
    tested_endpoint = next((e for e in found if str(e.id) == tested), None)
    test = None
    if tested_endpoint is not None and outcome in ("delivered", "retrying", "failed"):
        test = {"endpoint": tested_endpoint, "outcome": outcome, "code": code}
    return _view(
        request,
        "console/webhooks.html",
        rows=rows,
        queued=done,
        endpoints=endpoints,
        test=test,
        now=request.runtime.clock(),
    )


@post("/webhooks/{endpoint_id:str}/test", guards=[signed_in], include_in_schema=False, status_code=303)
async def webhook_test(request: MaskingRequest, endpoint_id: FromPath[str]) -> Any:
    """Send a webhook.test event to one endpoint now (POST /v1/webhooks/{id}/test) and say how it went.

    No pooled connection is held while the endpoint answers: send_test takes its own, before and after.
    """
    runtime = request.runtime
    deliverer: webhooks.Deliverer = request.app.state.webhooks
    attempt = await webhooks.send_test(runtime.db, deliverer, request.principal.tenant_id, endpoint_id, runtime.clock())
    query = urlencode({"tested": endpoint_id, "outcome": attempt.status, "code": attempt.status_code or 0})
    return Redirect(f"/console/webhooks?{query}", status_code=303)


class Redeliver(msgspec.Struct, kw_only=True):
    """The event to queue again, from a failing attempt's row."""

    event_id: str


@post("/webhooks/redeliver", guards=[signed_in], include_in_schema=False, status_code=303)
async def webhook_redeliver(request: MaskingRequest, conn: Db, data: Annotated[Redeliver, Form]) -> Any:
    """Queue an event again for every endpoint that wants it (POST /v1/events/{id}/redeliver)."""
    now = request.runtime.clock()
    async with conn.transaction():
        done = await webhooks.redeliver(conn, request.principal.tenant_id, data.event_id, now)
        await console_context(request).record(conn, "event.redeliver", Target("event", data.event_id), now)
    query = urlencode({"queued": data.event_id, "endpoints": done.queued})
    return Redirect(f"/console/webhooks?{query}", status_code=303)


@get("/audit", guards=[signed_in], include_in_schema=False)
async def audit_log(
    request: MaskingRequest, conn: Db, action: FromQuery[str] = "", before: FromQuery[str | None] = None
) -> Any:
    """The tenant's audit log, newest first, a page at a time, optionally of one action; numbers masked."""
    wanted = action if action in audit.ACTIONS else None
    found = await audit.newest(conn, request.principal.tenant_id, wanted, before, AUDIT_SHOWN)
    older = urlencode({"action": wanted or "", "before": found.next_cursor}) if found.next_cursor else ""
    return _view(request, "console/audit.html", entries=found.items, actions=audit.ACTIONS, action=wanted, older=older)


# Errors.


def _signed_out(request: Request[Any, Any, Any], exc: NotAuthorizedException) -> Response[Any]:
    return Redirect("/console/sign-in", status_code=303)


def _domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    return error_page(status_of(exc.code), exc.title, exc.detail, console=True)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 403:
        detail = "This form has expired or did not come from the console. Go back, reload the page and try again."
        return error_page(403, "Form refused", detail, console=True)
    if exc.status_code in (400, 422):
        return error_page(exc.status_code, "Invalid form", "A field of the form is missing or wrong.", console=True)
    if exc.status_code == 405:
        return error_page(405, "Not allowed", "This page does not take that method.", console=True)
    return error_page(exc.status_code, "Not found", "There is no such console page.", console=True)


def console_router(csrf: CSRFConfig, sessions_config: ConsoleSessionConfig) -> Router:
    """The /console routes: server-side sessions, CSRF on every form, HTML errors."""
    return Router(
        path="/console",
        route_handlers=[
            sign_in_form,
            sign_in,
            sign_out,
            home,
            pools,
            did_list,
            did_change,
            session_search,
            session_page,
            session_close,
            expire_confirm,
            expire_order,
            attention,
            unmatched,
            webhook_list,
            webhook_test,
            webhook_redeliver,
            audit_log,
        ],
        middleware=[sessions_config.middleware, DefineMiddleware(CSRFMiddleware, config=csrf)],
        opt={"sign_in_limit": links.Buckets(SIGN_INS_PER_MINUTE)},
        exception_handlers={
            NotAuthorizedException: _signed_out,
            DomainError: _domain_error,
            HTTPException: _http_error,
        },
        include_in_schema=False,
    )
