"""HTTP routes the provider calls: the callback report and inbound routing, guarded by a path token."""

from __future__ import annotations

import hmac
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy
from litestar import Controller, Request, get, post

from service.api.deps import Runtime
from service.broker import calls as broker
from service.errors import NotFound, problem_responses

log = structlog.get_logger("service.provider_api")


class Received(msgspec.Struct, frozen=True):
    """The acknowledgement of a stored report."""

    received: bool


def _check(token: str, runtime: Runtime) -> None:
    if not hmac.compare_digest(token.encode(), runtime.callback_token.encode()):
        raise NotFound("No such resource: check the path and the id.")


class ProviderController(Controller):
    """thundersms posts reports here and asks where to route inbound calls."""

    path = "/v1/provider/thundersms"
    tags = ["provider"]

    @post(
        "/callback/{token:str}",
        status_code=200,
        summary="The provider's call report: stored first, then matched",
        responses=problem_responses(404, 413, 503),
    )
    async def callback(
        self, token: str, request: Request[Any, Any, Any], conn: PoolConnectionProxy, runtime: Runtime
    ) -> Received:
        _check(token, runtime)
        body = await request.body()
        report_id = await broker.store_report(conn, body, runtime.clock())
        try:
            await broker.match_report(
                conn,
                report_id,
                ZoneInfo(runtime.settings.provider_timezone),
                runtime.clock(),
                runtime.settings.call_report_timeout_seconds,
            )
        except Exception:
            # Stored is what the provider needs to hear about; matching is retried in the background.
            log.exception("report_matching_failed", report_id=report_id)
        return Received(True)

    @get(
        "/route/{token:str}",
        summary="Where to connect a call arriving on a DID from a caller",
        responses=problem_responses(404, 422),
    )
    async def route(
        self, token: str, did: str, caller: str, conn: PoolConnectionProxy, runtime: Runtime
    ) -> broker.Route:
        _check(token, runtime)
        return await broker.route(conn, did, caller, runtime.clock())
