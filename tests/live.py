"""The service and the provider simulator as real HTTP servers on loopback, in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from service.app import create_app, request_context
from service.provider.simulator import Simulator, simulator_app
from tests.helpers import make_settings
from tests.processes import free_port

CALLBACK_TOKEN = "cb-token-0123456789abcdef"


@asynccontextmanager
async def _serve_granian(app: Any, port: int) -> AsyncIterator[str]:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    server = Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_enabled=False)
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as probe:
        while True:
            if task.done():
                task.result()
            with contextlib.suppress(httpx.HTTPError):
                await probe.get(url + "/", timeout=0.5)
                break
            await asyncio.sleep(0.02)
    try:
        yield url
    finally:
        server.stop()
        await task


@asynccontextmanager
async def serve(app: Any, server: str = "uvicorn") -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn (or granian) on a free loopback port until the block ends."""
    port = free_port()
    if server == "granian":
        async with _serve_granian(app, port) as url:
            yield url
        return
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=1,
            proxy_headers=False,  # as `masking serve`: the service reads X-Forwarded-For itself
        )
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # leave pytest's signals be
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Live:
    """A running service wired to a running simulator."""

    def __init__(self, url: str, sim: Simulator, http: httpx.AsyncClient, sim_url: str) -> None:
        self.url, self.sim, self.http, self.sim_url = url, sim, http, sim_url

    @property
    def callback(self) -> str:
        return f"/v1/provider/thundersms/callback/{CALLBACK_TOKEN}"


@asynccontextmanager
async def live_service(
    dsn: str, provider_url: str | None = None, background: bool = False, **settings: Any
) -> AsyncIterator[Live]:
    """The service on loopback, its provider the simulator (or provider_url), reports flowing back.

    background=True also runs the sweeper and the webhook delivery worker in it.
    """
    sim = Simulator(delay=0.05)
    async with serve(simulator_app(sim)) as sim_url:
        config = make_settings(
            dsn,
            provider="thundersms",
            thundersms_token="provider-token-xyz",
            thundersms_url=(provider_url or sim_url) + "/api/v2/",
            thundersms_webhook_id="77",
            callback_token=CALLBACK_TOKEN,
            provider_timeout_seconds=1.0,
            **settings,
        )
        # The service under the server MASKING_SERVER names (the simulator always under uvicorn).
        service = request_context(create_app(config, dsn=dsn, background=background))
        async with serve(service, os.environ.get("MASKING_SERVER", "uvicorn")) as url:
            sim.callback_url = url + f"/v1/provider/thundersms/callback/{CALLBACK_TOKEN}"
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                yield Live(url, sim, http, sim_url)
