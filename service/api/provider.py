"""HTTP routes the provider calls: the callback report and inbound routing, guarded by a path token."""

from __future__ import annotations

import hmac
from zoneinfo import ZoneInfo

import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy
from litestar import Controller, get, post

from service.api.deps import MaskingRequest
from service.broker import calls as broker
from service.errors import PUBLIC_RESPONSES, NotFound

log = structlog.get_logger("service.provider_api")


class Received(msgspec.Struct, frozen=True):
    """The acknowledgement of a stored report."""

    received: bool


def _check(token: str, request: MaskingRequest) -> None:
    if not hmac.compare_digest(token.encode(), request.runtime.callback_token.encode()):
        raise NotFound("No such resource: check the path and the id.")


class ProviderController(Controller):
    """thundersms posts reports here and asks where to route inbound calls."""

    path = "/v1/provider/thundersms"
    tags = ["provider"]

    @post(
        "/callback/{token:str}",
        status_code=200,
        summary="The provider's call report: stored first, then matched",
        responses=PUBLIC_RESPONSES,
        security=[{}],
    )
    async def callback(
        self,
        token: str,
        request: MaskingRequest,
        conn: PoolConnectionProxy,
    ) -> Received:
        _check(token, request)
        body = await request.body()
        report_id = await broker.store_report(conn, body, request.runtime.clock())
        try:
            await broker.match_report(
                conn,
                report_id,
                ZoneInfo(request.runtime.settings.provider_timezone),
                request.runtime.clock(),
                request.runtime.settings.call_report_timeout_seconds,
            )
        except Exception:
            # Stored is what the provider needs to hear about; matching is retried in the background.
            log.exception("report_matching_failed", report_id=report_id)
        return Received(True)

    @get(
        "/route/{token:str}",
        summary="Where to connect a call arriving on a DID from a caller",
        responses=PUBLIC_RESPONSES,
        security=[{}],
    )
    async def route(
        self,
        request: MaskingRequest,
        token: str,
        did: str,
        caller: str,
        conn: PoolConnectionProxy,
    ) -> broker.Route:
        _check(token, request)
        return await broker.route(conn, did, caller, request.runtime.clock())
