"""What every handler needs: the runtime, a pooled connection, and the authenticated tenant."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import msgspec
from asyncpg.pool import PoolConnectionProxy
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from service.broker.calls import Dialler
from service.broker.errors import Forbidden, Unauthorized
from service.broker.limits import CallLimits, TokenBuckets
from service.broker.pools import SettingsCache, StatsCache
from service.broker.reports import Matching
from service.broker.sessions import Rules
from service.broker.tenants import KeyCache, Principal
from service.settings import Settings


class Runtime(msgspec.Struct, kw_only=True, frozen=True):
    """The services the lifespan builds once (pool, HTTP client, provider) and every handler shares."""

    settings: Settings
    clock: Callable[[], datetime]
    rules: Rules
    db: asyncpg.Pool
    hot: asyncpg.Pool  # the hot routes' pool: generic plans, planned once per connection (api/fast.py)
    http: httpx.AsyncClient
    provider: Dialler
    callback_token: str
    keys: KeyCache
    call_limits: CallLimits
    session_buckets: TokenBuckets
    pools: SettingsCache = msgspec.field(default_factory=SettingsCache)
    stats: StatsCache = msgspec.field(default_factory=StatsCache)

    @property
    def report_matching(self) -> Matching:
        """The rules for matching provider reports (zone, report timeout, clock tolerance)."""
        return Matching.from_settings(self.settings)


# A pooled connection for the request, injected by name (the `conn` dependency of create_app).
Db = NamedDependency[PoolConnectionProxy]


class MaskingRequest(Request[Any, Any, Any]):
    """A request that knows the app's runtime and, on guarded routes, the authenticated principal.

    Handlers read these as properties rather than as injected dependencies: Litestar resolves
    sibling dependencies in an anyio task group, which costs more than the handler itself.
    """

    @property
    def runtime(self) -> Runtime:
        """The app's runtime."""
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def principal(self) -> Principal:
        """The principal the auth guard found for this request."""
        principal: Principal = self.state.principal
        return principal


async def provide_conn(state: State) -> AsyncGenerator[PoolConnectionProxy, None]:
    """A pooled connection for the request (taken after its body is read); transactions are the domain's to open."""
    runtime: Runtime = state.runtime
    # Bounded: a request that cannot get a connection answers 503 database_unavailable, never hangs.
    async with runtime.db.acquire(timeout=runtime.settings.db_acquire_timeout_seconds) as conn:
        yield conn


async def require_key(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: a live API key whose scopes include the route's (`opt={"scope": ...}`, default sessions)."""
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Send your API key as `Authorization: Bearer <key>`.")
    runtime: Runtime = connection.app.state.runtime
    principal = await runtime.keys.authenticate(runtime.db, key.strip())
    if principal is None:
        raise Unauthorized("This API key is unknown or revoked; check it or create a new one.")
    scope = handler.opt.get("scope", "sessions")
    if not principal.allows(scope):
        raise Forbidden(f"This API key lacks the `{scope}` scope this route needs.")
    connection.state.principal = principal
