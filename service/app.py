"""create_app(settings, ...): the Litestar app with its lifespan (pool, HTTP client, sweepers), routes and errors."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import structlog
from litestar import Litestar, Request, Response, Router, asgi
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, RedocRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import crypto, loopwatch, metrics
from service.api.audit import AuditController
from service.api.calls import CallController, ReportController
from service.api.deadline import body_deadline
from service.api.deps import MaskingRequest, Runtime, provide_conn, require_key
from service.api.dids import DidController
from service.api.erasures import ErasureController
from service.api.events import EventController
from service.api.fast import hot_routes
from service.api.links import CallLinkController
from service.api.ops import MetricsController, StatsController, healthz, readyz
from service.api.pools import PoolController
from service.api.problems import (
    internal_error_handler,
    problem_details_plugin,
    problem_response,
    too_deep_handler,
    unstorable,
)
from service.api.provider import ProviderController
from service.api.recordings import RecordingController, play_link
from service.api.sessions import SessionController
from service.api.webhooks import WebhookController
from service.broker.errors import DatabaseUnavailable
from service.broker.limits import CallLimits, TokenBuckets
from service.broker.links import LinkLimits
from service.broker.sessions import Rules
from service.broker.sweeps import Sweeper
from service.broker.tenants import KeyCache, callback_token
from service.broker.webhooks.delivery import Deliverer
from service.db.pool import FAILOVER_ERRORS, create_pool
from service.db.recordings import server_settings
from service.db.tenants import get_or_create_secret as secret
from service.provider.simulator import Simulator, simulator_app
from service.provider.thundersms import ThunderSMS
from service.settings import Settings
from service.web import agent, console, pages, security

log = structlog.get_logger("service.app")

MAX_BODY = 64 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A failover's window (the server gone, shutting down, starting, a standby now, a connection cut
# mid-operation: issue 12 saw 3 such 500s in 10,547), a timeout, or no connection slot left.
_DB_DOWN = (*FAILOVER_ERRORS, TimeoutError, asyncpg.TooManyConnectionsError)


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


def request_context(litestar: Litestar) -> ASGIApp:
    """The app as served: the hot routes below Litestar (api/fast.py), and around every request a request id on
    each of its log lines and one access line at its end.

    It wraps the whole app rather than being Litestar middleware, which never sees unrouted requests.
    """
    app = hot_routes(litestar, lambda: litestar.state.runtime, MAX_BODY, _DB_DOWN, (asyncpg.DataError,))

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(16)
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope.get("method"),
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware


async def _sweep_forever(runtime: Runtime, interval: float) -> None:
    sweeper = Sweeper(runtime.settings, runtime.provider)
    while True:
        try:
            async with runtime.db.acquire() as conn:
                await sweeper.sweep_once(conn, runtime.clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep_failed")
        await asyncio.sleep(interval)


def create_app(
    settings: Settings,
    *,
    dsn: str,
    clock: Callable[[], datetime] = utc_now,
    background: bool = True,
    sweep_interval: float | None = None,
    simulator: Simulator | None = None,
) -> Litestar:
    """Build the app for these settings and database; background=False leaves sweeping to the caller.

    With a simulator, its routes are mounted at /_simulator and its reports come back to this app.
    """

    crypto.ensure(settings)  # party numbers are sealed under these keys (service/db/sealed.py)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The pool's connections know the public URL: the Call resource names its recording by it.
        db = await create_pool(dsn, settings.db_pool_size, server_settings=server_settings(settings.public_base))
        # The hot routes' own pool (api/fast.py): its connections plan each statement once and keep the plan
        # (a create's statement costs more to plan than to run); elsewhere optional filters want custom plans.
        hot = await create_pool(
            dsn,
            settings.db_pool_size,
            server_settings={**server_settings(settings.public_base), "plan_cache_mode": "force_generic_plan"},
        )
        db.share_failovers(hot)
        metrics.cap_pool_labels(settings.metrics_pool_series)
        http = httpx.AsyncClient(timeout=settings.provider_timeout_seconds)
        token = await callback_token(db, settings.callback_token)
        provider_url, provider_token = settings.thundersms_url, settings.thundersms_token or ""
        if simulator is not None:
            here = f"http://{_reachable(settings.host)}:{settings.port}"
            provider_url, provider_token = here + "/_simulator/api/v2/", "simulator"
            simulator.callback_url = f"{here}/v1/provider/thundersms/callback/{token}"
            simulator.base_url = f"{here}/_simulator"
            simulator.http = http
        runtime = Runtime(
            settings=settings,
            clock=clock,
            rules=Rules(default_ttl_seconds=settings.default_ttl_seconds, cooloff_seconds=settings.cooloff_seconds),
            db=db,
            hot=hot,
            http=http,
            provider=ThunderSMS(
                http, provider_url, provider_token, settings.thundersms_webhook_id, settings.provider_timeout_seconds
            ),
            callback_token=token,
            keys=KeyCache(),
            call_limits=CallLimits(
                per_tenant_per_minute=settings.calls_per_minute,
                per_session=settings.session_calls_per_window,
                session_window_seconds=settings.session_call_window_seconds,
            ),
            session_buckets=TokenBuckets(settings.sessions_per_minute),
        )
        app.state.runtime = runtime
        # Web pages: the CSRF signing secret is one for all processes; console sessions live in the database.
        csrf.secret = await secret(db, "web_csrf_secret", secrets.token_hex(32))
        console_store.db = db
        app.state.link_limits = LinkLimits(settings.link_presses_per_minute, settings.link_requests_per_minute)
        interval = sweep_interval or settings.sweep_interval_seconds
        tasks = [asyncio.create_task(_sweep_forever(runtime, interval))] if background else []
        # Webhook delivery runs in every process (claims are SKIP LOCKED); the test route uses it too.
        # It has a small pool of its own: API load never starves it, and it never takes the API's connections.
        webhook_db = await create_pool(dsn, 2)
        app.state.webhooks = deliverer = Deliverer(webhook_db, settings, clock)
        if background:
            tasks.append(asyncio.create_task(deliverer.run()))
        # Every process, background or not: what blocks this loop stretches every request it serves.
        tasks.append(asyncio.create_task(loopwatch.watch(metrics.EVENT_LOOP_LAG.observe)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.stats.close()
            await deliverer.close()
            await webhook_db.close()
            if simulator is not None:
                await simulator.close()
            await http.aclose()
            await hot.close()
            await db.close()

    secure = settings.public_base.startswith("https://")
    csrf = security.csrf_config(secure)
    console_store = security.DbStore(clock)
    v1 = Router(
        path="/",
        route_handlers=[
            SessionController,
            DidController,
            StatsController,
            CallController,
            ReportController,
            CallLinkController,
            EventController,
            WebhookController,
            PoolController,
            AuditController,
            ErasureController,
            RecordingController,
        ],
        guards=[require_key],
    )
    handlers: list[Any] = [healthz, readyz, MetricsController, ProviderController, play_link, v1]
    handlers += [
        agent.agent_router(csrf),
        console.console_router(csrf, security.console_session_config(secure)),
        pages.static_files(),
    ]
    if simulator is not None:
        handlers.append(_mount_simulator(simulator))
    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        dependencies={"conn": Provide(provide_conn)},
        request_class=MaskingRequest,
        plugins=[problem_details_plugin()],
        exception_handlers={
            Exception: internal_error_handler,
            RecursionError: too_deep_handler,
            NotFoundException: pages.not_found,  # HTML under /console and /c/
            asyncpg.DataError: _bad_text,
            **dict.fromkeys(_DB_DOWN, _database_down),
        },
        request_max_body_size=MAX_BODY,
        middleware=[body_deadline(settings.body_timeout_seconds)],
        template_config=pages.template_config(),
        stores={"console_sessions": console_store},
        before_send=[security.security_headers],
        openapi_config=OpenAPIConfig(
            title="Number masking",
            version="1",
            path="/schema",
            render_plugins=_openapi_viewers(),
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer", description="API key")}
            ),
            security=[{"apiKey": []}],
        ),
        logging_config=None,
    )
    return app


def _openapi_viewers() -> list[OpenAPIRenderPlugin]:
    """/schema: Redoc from the package's own static files (no CDN, no web fonts), and the JSON document."""
    no_favicon = "<link rel='icon' href='data:,'>"  # Litestar's default favicon comes from a CDN
    return [
        RedocRenderPlugin(
            js_url=f"{pages.STATIC_PATH}/openapi/redoc.standalone.js",
            google_fonts=False,
            path=["/", "/redoc"],
            favicon=no_favicon,
        ),
        JsonRenderPlugin(favicon=no_favicon),
    ]


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def _mount_simulator(simulator: Simulator) -> Any:
    inner = simulator_app(simulator)

    # copy_scope: the simulator's own app changes the scope it gets; it must not change ours (and Litestar warns).
    @asgi("/_simulator", is_mount=True, include_in_schema=False, copy_scope=True)
    async def simulator_mount(scope: Scope, receive: Receive, send: Send) -> None:
        await inner(scope, receive, send)

    return simulator_mount


def _bad_text(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # PostgreSQL refuses some text outright (a NUL character, say): the input is at fault, not the service.
    return problem_response(request, unstorable())


def _database_down(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database_unavailable", error=type(exc).__name__, message=str(exc)[:200])
    return problem_response(
        request,
        DatabaseUnavailable("The database is unavailable right now; retry in a few seconds.", retry_after=2),
    )


def app_from_env() -> ASGIApp:
    """The app for one of several worker processes of `masking serve`: settings and DSN from the environment."""
    from service.logging import configure_logging
    from service.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_renderer, settings.log_level)
    assert settings.database_url, "masking serve passes the database to its workers"
    simulator = Simulator(timezone=settings.provider_timezone) if settings.provider_kind == "simulator" else None
    return request_context(create_app(settings, dsn=settings.database_url, simulator=simulator))
