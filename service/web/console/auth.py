"""Console sign-in and sign-out, and the `signed_in` guard every other console page sits behind."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Redirect

from service.api.audit import console_context
from service.api.deps import Db, MaskingRequest, Runtime
from service.broker import console, links
from service.broker.audit import Actor, Context
from service.broker.errors import DomainError, RateLimited
from service.web.console.common import Form
from service.web.pages import address_of, error_page, page, status_of
from service.web.security import ROTATE

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
    A refused key is on record (console.sign_in_failed, from its address); a throttled attempt is not.
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
        async with request.runtime.db.acquire() as conn:
            await _unidentified(request).record(conn, "console.sign_in_failed", None, request.runtime.clock(), exc.code)
        return page("console/sign_in.html", status_of(exc.code), error=exc.detail)
    async with request.runtime.db.acquire() as conn:
        await console_context(request, principal).record(conn, "console.sign_in", None, request.runtime.clock())
    request.scope.setdefault("state", {})[ROTATE] = True
    request.set_session({"key": key_hash, "tenant": principal.tenant})
    return Redirect("/console/pools", status_code=303)


def _unidentified(request: MaskingRequest) -> Context:
    """The audit context of a sign-in with a key that opened nothing: no tenant, and nothing of the key (a key
    tried is no identity), only where it came from."""
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    actor = Actor.unidentified("console")
    return Context(tenant_id=None, actor=actor, client_address=address_of(request), request_id=request_id)


@post("/sign-out", guards=[signed_in], include_in_schema=False, status_code=303)
async def sign_out(request: MaskingRequest, conn: Db) -> Any:
    """End the console session (one whose key was revoked has already ended: the guard signed it out)."""
    await console_context(request).record(conn, "console.sign_out", None, request.runtime.clock())
    request.clear_session()
    return Redirect("/console/sign-in", status_code=303)
