"""A deadline on reading a request's body, so a slow client ties up only its own request, never for long."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from service.broker.errors import RequestTimeout


def too_slow(seconds: float) -> RequestTimeout:
    """The 408 of a body that did not arrive within the deadline."""
    return RequestTimeout(f"The request body did not arrive within {seconds:g} seconds; send it at once and retry.")


def body_deadline(seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware: the whole body must arrive within `seconds` of the first read, else 408 request_timeout.

    Handlers read the body before they take a pooled connection (Litestar parses `data` before it
    resolves dependencies), so while a body trickles in nothing but this request waits.
    """

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            deadline: float | None = None
            done = False

            async def timed_receive() -> ReceiveMessage:
                nonlocal deadline, done
                if done:
                    return await receive()
                if deadline is None:
                    deadline = time.monotonic() + seconds
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
                except TimeoutError:
                    raise too_slow(seconds) from None
                if message["type"] != "http.request" or not message.get("more_body", False):
                    done = True
                return message

            await app(scope, timed_receive, send)

        return guarded

    return middleware
