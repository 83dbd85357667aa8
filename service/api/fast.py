"""The hot routes (get-session, report ingest, create-session) answered below Litestar; the rest goes to Litestar.

On these paths Litestar's request pipeline (routing, guard, dependency injection, response building) cost
more than the database round trip (docs/performance.md), so their plain case is served here with the same
broker calls and the same answers. Anything else — no or a bad key, a body that is not
JSON of the right shape or too large — is handed to Litestar before anything is written, with the body read
so far, so that every refusal keeps its one rendering. Domain errors and a database that is away are
rendered here by the same mapping (api/problems.py).
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from service.api.deadline import too_slow
from service.api.deps import Runtime
from service.api.idempotency import run_once
from service.api.problems import internal_error, problem_message, unstorable
from service.api.sessions import produce_session
from service.broker import reports
from service.broker import sessions as broker
from service.broker.bodies import CreateSession
from service.broker.errors import DatabaseUnavailable, DomainError
from service.broker.tenants import Principal

log = structlog.get_logger("service.api.fast")

_SESSION = re.compile(r"/v1/sessions/([^/]+)")
_SESSIONS = "/v1/sessions"
_CALLBACK = re.compile(r"/v1/provider/thundersms/callback/([^/]+)")
_JSON = [(b"content-type", b"application/json")]
_RECEIVED = b'{"received":true}'
_CREATE = msgspec.json.Decoder(CreateSession)


class _Handover(Exception):
    """The request is not the plain case: Litestar answers it (nothing has been written)."""


def hot_routes(
    app: ASGIApp,
    runtime: Callable[[], Runtime],
    max_body: int,
    db_down: tuple[type[BaseException], ...],
    bad_text: tuple[type[BaseException], ...],
) -> ASGIApp:
    """ASGI wrapper: serve the plain case of the three hot routes, pass every other request to `app`."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        handler: Callable[[Runtime, Scope, _Body, str], Awaitable[tuple[int, bytes]]]
        if method == "GET" and (m := _SESSION.fullmatch(path)):
            handler, arg = _get, m.group(1)
        elif method == "POST" and (m := _CALLBACK.fullmatch(path)):
            handler, arg = _ingest, m.group(1)
        elif method == "POST" and path == _SESSIONS:
            handler, arg = _create, ""
        else:
            await app(scope, receive, send)
            return
        body = _Body(receive, max_body)
        rt = runtime()
        try:
            status, answer = await handler(rt, scope, body, arg)
            headers = _JSON
        except _Handover:
            await app(scope, body.replay, send)
            return
        except DomainError as exc:
            status, headers, answer = problem_message(exc)
        except bad_text:  # a value PostgreSQL refuses outright (a NUL): 422, as Litestar's handler answers
            status, headers, answer = problem_message(unstorable())
        except db_down as exc:
            log.warning("database_unavailable", error=type(exc).__name__, message=str(exc)[:200])
            down = DatabaseUnavailable("The database is unavailable right now; retry in a few seconds.", retry_after=2)
            status, headers, answer = problem_message(down)
        except _Disconnected:
            return
        except Exception as exc:  # a bug: logged with the request id, answered without internals
            status, headers, answer = internal_error(scope, exc)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(answer)).encode())],
        }
        await send(start)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": answer, "more_body": False}
        await send(end)

    return route


class _Disconnected(Exception):
    """The client went away while sending its body: there is no one to answer."""


class _Body:
    """A request's body, read whole within the deadline and the size limit, and replayable for Litestar."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive, self._limit = receive, limit
        self._chunks: list[bytes] = []
        self._more = True
        self._replayed = False

    async def read(self, seconds: float) -> bytes:
        """The whole body; _Handover when it is larger than the limit; 408 when it is slower than `seconds`."""
        size = 0
        try:
            async with asyncio.timeout(seconds):
                while self._more:
                    message = await self._receive()
                    if message["type"] != "http.request":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    self._chunks.append(chunk)
                    self._more = message.get("more_body", False)
                    size += len(chunk)
                    if size > self._limit:
                        raise _Handover
        except TimeoutError:
            raise too_slow(seconds) from None
        return b"".join(self._chunks)

    async def replay(self) -> ReceiveMessage:
        """Litestar's receive: what was read so far as one message, then the rest from the client."""
        if self._replayed or not self._chunks:
            return await self._receive()
        self._replayed = True
        message: HTTPRequestEvent = {"type": "http.request", "body": b"".join(self._chunks), "more_body": self._more}
        return message


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _principal(rt: Runtime, scope: Scope) -> Principal:
    """The key's principal when it is live and has the `sessions` scope; otherwise Litestar's guard answers."""
    scheme, _, key = (_header(scope, b"authorization") or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _Handover
    principal = await rt.keys.authenticate(rt.db, key)
    if principal is None or not principal.allows("sessions"):
        raise _Handover
    return principal


async def _get(rt: Runtime, scope: Scope, body: _Body, arg: str) -> tuple[int, bytes]:
    principal = await _principal(rt, scope)
    async with rt.hot.acquire(timeout=rt.settings.db_acquire_timeout_seconds) as conn:
        session = await broker.get_session(conn, principal.tenant_id, arg, rt.clock())
    return 200, msgspec.json.encode(session)


async def _ingest(rt: Runtime, scope: Scope, body: _Body, arg: str) -> tuple[int, bytes]:
    if not hmac.compare_digest(arg.encode(), rt.callback_token.encode()):
        raise _Handover
    # The body first: a slow body holds no pooled connection.
    raw = await body.read(rt.settings.body_timeout_seconds)
    async with rt.hot.acquire(timeout=rt.settings.db_acquire_timeout_seconds) as conn:
        await reports.ingest(conn, raw, rt.report_matching, rt.clock())
    return 200, _RECEIVED


async def _create(rt: Runtime, scope: Scope, body: _Body, arg: str) -> tuple[int, bytes]:
    key = _header(scope, b"idempotency-key")
    principal = await _principal(rt, scope)
    raw = await body.read(rt.settings.body_timeout_seconds)
    try:
        data = _CREATE.decode(raw)
    except msgspec.DecodeError:  # Litestar names the field in its 400/422
        raise _Handover from None
    rt.session_buckets.take(principal.tenant_id, "sessions")
    async with rt.hot.acquire(timeout=rt.settings.db_acquire_timeout_seconds) as conn:

        async def produce() -> tuple[int, bytes]:
            return await produce_session(rt, conn, principal.tenant_id, data)

        if key is None:
            return await produce()
        return await run_once(conn, principal.tenant_id, key, raw, rt.clock(), produce)
