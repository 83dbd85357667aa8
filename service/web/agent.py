"""The agent's call-link page: GET /c/{token} shows it, POST places the call, /status says how it went."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.config.csrf import CSRFConfig
from litestar.exceptions import HTTPException
from litestar.middleware.base import DefineMiddleware
from litestar.params import FromPath
from litestar.response import Redirect

from service.api.deps import MaskingRequest
from service.api.problems import problem, problem_response
from service.broker import links
from service.broker.errors import DomainError
from service.web.pages import CsrfUnlessJson, address_of, error_page, page, status_of, wants_json


class LinkState(msgspec.Struct, frozen=True):
    """What the page polls: the last call (numbers masked) and the words the page shows for it."""

    state: str
    label: str
    uses_left: int
    call: links.LinkCall | None


def describe(call: links.LinkCall | None) -> tuple[str, str]:
    """The state of a call and a short phrase for the agent: ringing, talked 2 min, missed."""
    if call is None:
        return "none", "No call yet"
    if call.status == "initiated":
        return "ringing", "Ringing… pick up your phone"
    if call.status == "completed":
        talked = call.billing_seconds or 0
        return "completed", f"Completed: talked {talked // 60} min" if talked >= 60 else f"Completed: talked {talked} s"
    if call.status == "missed":
        return "missed", "Missed: nobody answered"
    if call.status == "failed":
        return "failed", "Failed: the call could not be placed; try again"
    return "unknown", "Unknown: no word on this call yet"


def _limit_address(request: MaskingRequest) -> None:
    request.app.state.link_limits.addresses.take(address_of(request), "requests from your address")


def _gone_or_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    if wants_json(request):
        return problem_response(request, exc)
    if exc.code == "link_expired":
        return error_page(410, "This link has expired", exc.detail, agent=True)
    if exc.code == "not_found":
        return error_page(404, "No such link", exc.detail, agent=True)
    return error_page(status_of(exc.code), exc.title, exc.detail, agent=True)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 403:
        code, title = "forbidden", "Please reload the page"
        detail = "This form has expired or did not come from this page. Reload the page and press the button again."
    elif exc.status_code == 429:
        code, title, detail = "rate_limited", "Too many requests", "Too many requests; wait a minute and try again."
    else:
        code, title, detail = "not_found", "No such page", "Check the link you were sent."
    if wants_json(request):
        return problem(exc.status_code, code, title, detail).to_response(request)
    return error_page(exc.status_code, title, detail, agent=True)


@get("/{token:str}", include_in_schema=False)
async def show(request: MaskingRequest, token: FromPath[str]) -> Any:
    """The page: order, the button, the last call's state. A used-up link answers 410 with the same page, its
    button disabled because no calls are left, so the agent still sees the order and how the last call went."""
    _limit_address(request)
    async with request.runtime.db.acquire() as conn:
        view = await links.view_link(conn, token, request.runtime.clock(), used_up_ok=True)
    state, label = describe(view.last_call)
    return page("agent.html", 200 if view.uses_left else 410, view=view, state=state, label=label, token=token)


@get("/{token:str}/status", include_in_schema=False)
async def status(request: MaskingRequest, token: FromPath[str]) -> LinkState:
    """The last call's state, for the page's script."""
    _limit_address(request)
    async with request.runtime.db.acquire() as conn:
        view = await links.view_link(conn, token, request.runtime.clock(), used_up_ok=True)
    state, label = describe(view.last_call)
    return LinkState(state=state, label=label, uses_left=view.uses_left, call=view.last_call)


@post("/{token:str}", include_in_schema=False)
async def press(request: MaskingRequest, token: FromPath[str]) -> Any:
    """Place the call; a page (after a redirect, so a reload never rings twice) or the call as JSON."""
    _limit_address(request)
    runtime = request.runtime
    try:
        call = await links.press(
            runtime.db, runtime.provider, token, runtime.clock, runtime.call_limits, request.app.state.link_limits
        )
    except DomainError as exc:
        if wants_json(request) or exc.code in ("link_expired", "not_found"):
            raise
        async with runtime.db.acquire() as conn:
            view = await links.view_link(conn, token, runtime.clock(), used_up_ok=True)
        state, label = describe(view.last_call)
        return page(
            "agent.html", status_of(exc.code), view=view, state=state, label=label, token=token, error=exc.detail
        )
    if wants_json(request):
        return Response(call, status_code=202)
    return Redirect(f"/c/{token}", status_code=303)


def agent_router(csrf: CSRFConfig) -> Router:
    """The /c routes, CSRF-checked (forms) and rendering their own errors."""
    return Router(
        path="/c",
        route_handlers=[show, status, press],
        middleware=[DefineMiddleware(CsrfUnlessJson, config=csrf)],
        exception_handlers={DomainError: _gone_or_error, HTTPException: _http_error},
        include_in_schema=False,
    )
