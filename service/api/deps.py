"""What every handler needs: the runtime, a pooled connection, and the authenticated tenant."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import msgspec
from asyncpg.pool import PoolConnectionProxy
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler

from service.broker.sessions import Rules
from service.broker.tenants import Principal, authenticate
from service.errors import Forbidden, Unauthorized
from service.provider.thundersms import ThunderSMS
from service.settings import Settings


class Runtime(msgspec.Struct, kw_only=True):
    """The per-app resources opened by the lifespan, reached by handlers through dependencies."""

    settings: Settings
    clock: Callable[[], datetime]
    rules: Rules
    pool: asyncpg.Pool | None = None
    http: httpx.AsyncClient | None = None
    thundersms: ThunderSMS | None = None
    callback_token: str = ""

    @property
    def db(self) -> asyncpg.Pool:
        """The connection pool (open while the app runs)."""
        assert self.pool is not None, "the app's lifespan has not opened the pool"
        return self.pool

    @property
    def provider(self) -> ThunderSMS:
        """The provider client (open while the app runs)."""
        assert self.thundersms is not None, "the app's lifespan has not opened the provider client"
        return self.thundersms


def provide_runtime(state: State) -> Runtime:
    """The app's runtime."""
    runtime: Runtime = state.runtime
    return runtime


async def provide_conn(state: State) -> AsyncGenerator[PoolConnectionProxy, None]:
    """A pooled connection for the request; transactions are the domain's to open."""
    runtime: Runtime = state.runtime
    async with runtime.db.acquire(timeout=5) as conn:
        yield conn


def provide_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The principal that the auth guard put on the request."""
    principal: Principal = request.state.principal
    return principal


async def require_key(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: a live API key whose scopes include the route's (`opt={"scope": ...}`, default sessions)."""
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Send your API key as `Authorization: Bearer <key>`.")
    runtime: Runtime = connection.app.state.runtime
    principal = await authenticate(runtime.db, key.strip())
    if principal is None:
        raise Unauthorized("This API key is unknown or revoked; check it or create a new one.")
    scope = handler.opt.get("scope", "sessions")
    if not principal.allows(scope):
        raise Forbidden(f"This API key lacks the `{scope}` scope this route needs.")
    connection.state.principal = principal
