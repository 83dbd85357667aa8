"""The simulator as an ASGI app: the provider's routes, /_sim routes for faults and inspection, cut connections."""

from __future__ import annotations

from typing import Any

import httpx
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath, JSONBody
from litestar.types import Receive, Scope, Send

from service.provider.simulator.calllog import log_page
from service.provider.simulator.clicks import DROP_HEADER, handle_click
from service.provider.simulator.recordings import serve as serve_recording
from service.provider.simulator.state import Fault, SimSettings, Simulator


class _DropConnection(Exception):
    """Raised after the provider has acted, to make the server cut the connection without an answer."""


def simulator_app(sim: Simulator) -> Any:
    """The simulator as an ASGI app: the provider's route, plus /_sim routes for faults and inspection."""

    @post("/api/v2/voice/c2c", status_code=200)
    async def c2c(request: Request[Any, Any, Any]) -> Response[Any]:
        return await handle_click(sim, request)

    @get("/api/v2/voice/calls")
    async def calls(request: Request[Any, Any, Any]) -> Response[Any]:
        params = dict(request.query_params)
        bearer = request.headers.get("authorization", "").startswith("Bearer ")
        if not bearer and not params.get("access_token"):
            return Response({"status": 401, "message": "Unauthenticated"}, status_code=401)
        page = log_page(sim.call_log, params)
        page["data"]["data"] = [{k: v for k, v in row.items() if k != "mid"} for row in page["data"]["data"]]
        return Response(page)

    @get("/recordings/{name:str}")
    async def recording(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        return serve_recording(sim, name, dict(request.headers))

    @get("/_sim/call-log")
    async def truth() -> list[dict[str, Any]]:
        return sim.call_log

    @post("/_sim/faults", status_code=204)
    async def faults(data: JSONBody[Fault]) -> None:
        if data.lose_callbacks is not None:
            sim.lose_callbacks = data.lose_callbacks
        else:
            sim.inject(data)

    @post("/_sim/settings", status_code=204)
    async def settings(data: JSONBody[SimSettings]) -> None:
        sim.send_mid = data.send_mid

    @get("/_sim/requests")
    async def requests() -> list[dict[str, Any]]:
        return sim.requests

    async def lifespan_http(app: Litestar) -> Any:
        sim.http = httpx.AsyncClient()

    async def close_http(app: Litestar) -> None:
        await sim.close()
        if sim.http is not None:
            await sim.http.aclose()

    app = Litestar(
        [c2c, calls, recording, truth, faults, settings, requests],
        on_startup=[lifespan_http],
        on_shutdown=[close_http],
        openapi_config=None,
        logging_config=None,
    )

    async def dropping(scope: Scope, receive: Receive, send: Send) -> None:
        dropped = False

        async def cut(message: Any) -> None:
            # An answer marked for dropping is started but never completed: the client sees the
            # connection cut mid-response, after the provider has acted on the request.
            nonlocal dropped
            if message["type"] == "http.response.start" and (DROP_HEADER.encode(), b"1") in message["headers"]:
                dropped = True
                message = {**message, "headers": [(b"content-length", b"100")]}
            elif dropped:
                raise _DropConnection
            await send(message)

        try:
            await app(scope, receive, cut)
        except Exception:
            if not dropped:
                raise
            raise _DropConnection from None

    return dropping
