"""The ops console: sign-in with an ops key, then pools, DIDs, sessions, calls, reports and webhooks of that tenant.

Every change goes through the broker functions the API uses; every page needs a live console session
whose key still has the `ops` scope (checked on each request, so a revoked key signs the console out).
This module builds the router from the page modules beside it and turns errors into console pages.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router
from litestar.config.csrf import CSRFConfig
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.response import Redirect

from service.broker import links
from service.broker.errors import DomainError
from service.web.console import audit, auth, calls, dids, pools, sessions, webhooks
from service.web.console.auth import SIGN_INS_PER_MINUTE, signed_in
from service.web.console.common import NAV
from service.web.pages import error_page, status_of
from service.web.security import ConsoleSessionConfig

__all__ = ["NAV", "SIGN_INS_PER_MINUTE", "console_router", "signed_in"]


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
            auth.sign_in_form,
            auth.sign_in,
            auth.sign_out,
            pools.home,
            pools.pools,
            dids.did_list,
            dids.did_change,
            sessions.session_search,
            sessions.session_search_form,
            sessions.session_page,
            sessions.session_reveal,
            sessions.session_close,
            sessions.expire_confirm,
            sessions.expire_order,
            calls.attention,
            calls.unmatched,
            webhooks.webhook_list,
            webhooks.webhook_test,
            webhooks.webhook_redeliver,
            audit.audit_log,
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
