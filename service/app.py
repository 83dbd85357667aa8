"""create_app(settings, ...): the Litestar app with its lifespan (pool, HTTP client, sweepers), routes and errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import structlog
from litestar import Litestar, Request, Response, Router
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import Runtime, provide_conn, provide_principal, provide_runtime, require_key
from service.api.dids import DidController
from service.api.ops import MetricsController, StatsController, healthz, readyz
from service.api.sessions import SessionController
from service.broker.sessions import Rules, sweep_expired
from service.broker.tenants import callback_token
from service.db.pool import create_pool
from service.errors import DatabaseUnavailable, internal_error_handler, problem_details_plugin, problem_response
from service.settings import Settings

log = structlog.get_logger("service.app")

MAX_BODY = 64 * 1024
SWEEP_INTERVAL_SECONDS = 15.0
_DB_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


def request_context(app: ASGIApp) -> ASGIApp:
    """ASGI wrapper: a request id on every log line of a request, and one access line at its end.

    It wraps the whole app rather than being Litestar middleware, which never sees unrouted requests.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
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
    while True:
        try:
            async with runtime.db.acquire() as conn:
                await sweep_expired(conn, runtime.clock())
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
    sweep_interval: float = SWEEP_INTERVAL_SECONDS,
) -> Litestar:
    """Build the app for these settings and database; background=False leaves sweeping to the caller."""
    runtime = Runtime(
        settings=settings,
        clock=clock,
        rules=Rules(default_ttl_seconds=settings.default_ttl_seconds, cooloff_seconds=settings.cooloff_seconds),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime.pool = await create_pool(dsn, settings.db_pool_size)
        runtime.http = httpx.AsyncClient(timeout=settings.provider_timeout_seconds)
        runtime.callback_token = await callback_token(runtime.pool, settings.callback_token)
        tasks = [asyncio.create_task(_sweep_forever(runtime, sweep_interval))] if background else []
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.http.aclose()
            await runtime.pool.close()

    v1 = Router(
        path="/",
        route_handlers=[SessionController, DidController, StatsController],
        guards=[require_key],
        dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
    )
    prometheus = PrometheusConfig(app_name="masking", group_path=True, exclude=["/metrics"])
    app = Litestar(
        route_handlers=[healthz, readyz, MetricsController, v1],
        lifespan=[lifespan],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "conn": Provide(provide_conn),
        },
        plugins=[problem_details_plugin()],
        exception_handlers={Exception: internal_error_handler, **dict.fromkeys(_DB_DOWN, _database_down)},
        middleware=[prometheus.middleware],
        request_max_body_size=MAX_BODY,
        openapi_config=OpenAPIConfig(
            title="Number masking",
            version="1",
            path="/schema",
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer", description="API key")}
            ),
            security=[{"apiKey": []}],
        ),
        logging_config=None,
    )
    app.state.runtime = runtime
    return app


def _database_down(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database_unavailable", error=type(exc).__name__)
    return problem_response(
        request, DatabaseUnavailable("The database is unavailable right now; retry in a few seconds.")
    )
