"""What keeps the web pages safe: headers, CSRF, and console sessions kept server-side in the database."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.stores.base import Store
from litestar.types import Empty, Message, Scope, ScopeSession

from service.db import console as q

WEB_PREFIXES = ("/c/", "/console", "/static/web/")
CONSOLE_COOKIE = "masking_console"
CSRF_COOKIE = "masking_csrf"
CONSOLE_IDLE_SECONDS = 8 * 3600
# No inline script or style anywhere: scripts and styles are files this service serves.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]


async def security_headers(message: Message, scope: Scope) -> None:
    """Before-send hook: strict headers on every web page and asset; pages (not assets) are never cached."""
    if message["type"] != "http.response.start" or not scope["path"].startswith(WEB_PREFIXES):
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in _HEADERS:
        headers[name.decode()] = value.decode()
    if not scope["path"].startswith("/static/"):
        headers["cache-control"] = "no-store"


def csrf_config(secure: bool) -> CSRFConfig:
    """Double-submit CSRF tokens signed with a secret the lifespan sets (shared by every process via the DB)."""
    return CSRFConfig(
        secret="unset-until-the-lifespan-reads-the-shared-secret",  # noqa: S106
        cookie_name=CSRF_COOKIE,
        cookie_secure=secure,
        cookie_httponly=True,
        cookie_samesite="strict",
        header_name="x-csrf-token",
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class DbStore(Store):
    """Litestar's Store over the console_sessions table, so every service process shares console sign-ins.

    Ids are stored only as SHA-256 hashes. The pool is handed over by the lifespan.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.db: asyncpg.Pool | None = None

    def _pool(self) -> asyncpg.Pool:
        assert self.db is not None, "the lifespan sets the store's pool"
        return self.db

    def _until(self, seconds: int | timedelta | None) -> datetime | None:
        if seconds is None:
            return None
        return self.clock() + (seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds))

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        """Write a session's data."""
        data = value.encode() if isinstance(value, str) else value
        async with self._pool().acquire() as conn:
            await q.store_set(conn, _digest(key), data, self._until(expires_in))

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        """A live session's data, its life renewed when asked."""
        async with self._pool().acquire() as conn:
            data = await q.store_get(conn, _digest(key), self.clock(), self._until(renew_for))
        return None if data is None else bytes(data)

    async def delete(self, key: str) -> None:
        """Forget a session."""
        async with self._pool().acquire() as conn:
            await q.store_delete(conn, _digest(key))

    async def delete_all(self) -> None:
        """Forget every session."""
        async with self._pool().acquire() as conn:
            await q.store_delete_all(conn)

    async def exists(self, key: str) -> bool:
        """Whether a live session has this id."""
        return await self.get(key) is not None

    async def expires_in(self, key: str) -> int | None:
        """Seconds until a session ends."""
        async with self._pool().acquire() as conn:
            at = await q.store_expires_at(conn, _digest(key))
        return None if at is None else int((at - self.clock()).total_seconds())


ROTATE = "console_rotate_session"


class ConsoleSessionBackend(ServerSideSessionBackend):
    """Server-side sessions that write nothing for visitors who never signed in, and take a new id at sign-in."""

    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """The cookie's id, or a new one (always a new one right after sign-in: no session fixation)."""
        state = connection.scope.setdefault("state", {})
        if state.get(ROTATE):
            fresh: str = state.setdefault("console_new_session_id", self.generate_session_id())
            return fresh
        return super().get_session_id(connection)

    async def store_in_message(
        self, scope_session: ScopeSession, message: Message, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> None:
        """Store a signed-in session; a visitor without one gets no row and no cookie."""
        state = connection.scope.get("state", {})
        old = connection.cookies.get(self.config.key)
        if state.get(ROTATE) and old:
            await self.delete(old, store=self.config.get_store_from_app(connection.scope["app"]))
        if not scope_session:
            if not old:
                return
            scope_session = Empty  # an emptied or stale session: drop its row and its cookie
        await super().store_in_message(scope_session, message, connection)


class ConsoleSessionConfig(ServerSideSessionConfig):
    """Server-side session settings of the console, with its backend."""

    _backend_class = ConsoleSessionBackend


def console_session_config(secure: bool) -> ConsoleSessionConfig:
    """HttpOnly, SameSite=Strict session cookies (Secure when the public URL is https), idle-limited."""
    return ConsoleSessionConfig(
        key=CONSOLE_COOKIE,
        max_age=CONSOLE_IDLE_SECONDS,
        renew_on_access=True,
        path="/console",
        secure=secure,
        httponly=True,
        samesite="strict",
        store="console_sessions",
    )
