"""Shared page plumbing: the template set, content negotiation, error pages and the CSRF wrapper."""

from __future__ import annotations

import re
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from litestar import Request, Response
from litestar.config.csrf import CSRFConfig
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.middleware.csrf import CSRFMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Receive, Scope, Send

from service.api.addresses import client_address
from service.api.deps import MaskingRequest
from service.api.problems import STATUS, problem
from service.logging import mask_number
from service.models import Call

HERE = Path(str(resources.files("service.web")))
STATIC_PATH = "/static/web"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z")


# The provider's call statuses in words: (the call as a whole, one leg). Other tokens are shown only when they are
# plain words (letters, spaces and underscores), so nothing the provider sends can put a number on a page.
_STATUS_WORDS = {
    "COMPLETED": ("Completed", "answered"),
    "ANSWER": ("Answered", "answered"),
    "ANSWERED": ("Answered", "answered"),
    "RECEIVED": ("Answered", "answered"),
    "NOANSWER": ("No answer", "did not answer"),
    "NO ANSWER": ("No answer", "did not answer"),
    "BUSY": ("Busy", "was busy"),
    "CANCEL": ("Cancelled", "hung up first"),
    "CANCELLED": ("Cancelled", "hung up first"),
    "FAILED": ("Failed", "could not be reached"),
    "CONGESTION": ("Network busy", "could not be reached"),
    "CHANUNAVAIL": ("Unreachable", "could not be reached"),
}
_PLAIN_WORD = re.compile(r"[A-Za-z_ ]{1,24}")
_NO_REPORT = {
    "initiated": "Waiting for the provider's report",
    "failed": "Refused by the provider, or it could not be reached",
    "unknown": "No word from the provider",
}


def _words(token: str | None, leg: bool) -> str | None:
    if not token or not token.strip():
        return None
    token = token.strip().upper()
    if token in _STATUS_WORDS:
        return _STATUS_WORDS[token][leg]
    return token.replace("_", " ").lower() if _PLAIN_WORD.fullmatch(token) else "other"


def provider_outcome(call: Call) -> str:
    """What the provider reported about a call, in words: "No answer (agent answered, customer did not answer)".

    Built from its status, status1 (the party rung first) and status2 (the other); never its free-text message.
    """
    p = call.provider
    headline = _words(p.status, leg=False)
    if headline is None:
        return _NO_REPORT.get(call.status, "")
    other = "customer" if call.first == "agent" else "agent"
    legs = [
        f"{party} {said}"
        for party, said in ((call.first, _words(p.status1, leg=True)), (other, _words(p.status2, leg=True)))
        if said is not None
    ]
    return f"{headline[0].upper()}{headline[1:]} ({', '.join(legs)})" if legs else headline


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _setup(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["iso"] = _iso
    engine.engine.filters["masked"] = mask_number
    engine.engine.filters["outcome"] = provider_outcome
    engine.engine.filters["when"] = _when
    engine.engine.globals["static"] = lambda name: f"{STATIC_PATH}/{name}"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja templates shipped inside the package (autoescaped), with the `masked` and `when` filters."""
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_setup)


def static_files() -> Any:
    """The vendored CSS and JavaScript, served by the service itself (no CDN)."""
    return create_static_files_router(
        path=STATIC_PATH, directories=[HERE / "static"], name="web_static", include_in_schema=False
    )


def wants_json(request: Request[Any, Any, Any]) -> bool:
    """Whether the client asked for JSON rather than a page."""
    return request.accept.best_match(["text/html", "application/json"], default="text/html") == "application/json"


def page(name: str, status: int = 200, **context: Any) -> Template:
    """A rendered page."""
    return Template(template_name=name, context=context, status_code=status, media_type="text/html")


def status_of(code: str) -> int:
    """The HTTP status of a domain error code."""
    return STATUS.get(code, 400)


def error_page(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **context: Any
) -> Response[Any]:
    """A plain page that says what went wrong and what to do."""
    shown = page("error.html", status, title=title, detail=detail, **context)
    if headers:
        shown.headers.update(headers)
    return shown


def address_of(request: MaskingRequest) -> str:
    """The client's address, for per-address limits: the peer, or what MASKING_TRUSTED_PROXIES say it is."""
    peer = request.client.host if request.client else "unknown"
    return client_address(peer, request.headers.get("x-forwarded-for"), request.runtime.settings.trusted_networks)


def not_found(request: Request[Any, Any, Any], exc: NotFoundException) -> Response[Any]:
    """App-wide 404: a plain HTML page under /console (and /c/, unless JSON is asked for), problem+json elsewhere.

    Paths no route matches never reach a router's own handlers, so this is registered on the app.
    """
    path = request.url.path
    if path.startswith("/console"):
        return error_page(404, "Not found", "There is no such console page.", console=True)
    if path.startswith("/c/") and not wants_json(request):
        return error_page(404, "No such page", "Check the link you were sent.", agent=True)
    return problem(404, "not_found", "Not found", "No such resource: check the path and the id.").to_response(request)


class CsrfUnlessJson:
    """Litestar's CSRF middleware for forms; a JSON body passes without a token.

    A browser sends `Content-Type: application/json` cross-site only after a CORS preflight, which this
    service never grants, so a JSON request cannot be forged by another site.
    """

    def __init__(self, app: ASGIApp, config: CSRFConfig) -> None:
        self.app = app
        self.csrf = CSRFMiddleware(app, config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["type"] == ScopeType.HTTP and scope.get("method") == "POST" and content_type == b"application/json":
            await self.app(scope, receive, send)
        else:
            await self.csrf(scope, receive, send)
