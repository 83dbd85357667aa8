"""HTTP routes the provider calls: the callback report and inbound routing, guarded by a path token."""

from __future__ import annotations

import hmac

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery

from service.api.deps import Db, MaskingRequest
from service.api.problems import PUBLIC_RESPONSES
from service.broker import reports, routing
from service.broker.errors import NotFound


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
    async def callback(self, token: FromPath[str], request: MaskingRequest) -> Received:
        _check(token, request)
        # No `conn: Db` dependency: the body is read first, so a slow body holds no pooled connection.
        body = await request.body()
        runtime = request.runtime
        async with runtime.db.acquire(timeout=runtime.settings.db_acquire_timeout_seconds) as conn:
            await reports.ingest(conn, body, runtime.report_matching, runtime.clock())
        return Received(True)

    @get(
        "/route/{token:str}",
        summary="Where to connect a call arriving on a DID from a caller (or the pool's fallback)",
        description=(
            "200 `Route` when the caller is a party of an active session on the DID; else, when the DID's pool has "
            "a fallback, 200 `FallbackRoute` (`session_id` null, `connect_to` or `flow`, `reason` `no_session` or "
            "`session_ended`: the caller's session on that DID ended within the pool's cool-off); else 404 "
            "`no_session` (with the same `reason`)."
        ),
        responses=PUBLIC_RESPONSES,
        security=[{}],
    )
    async def route(
        self,
        request: MaskingRequest,
        token: FromPath[str],
        did: FromQuery[str],
        caller: FromQuery[str],
        conn: Db,
    ) -> routing.Route | routing.FallbackRoute:
        _check(token, request)
        runtime = request.runtime
        return await routing.route(conn, did, caller, runtime.clock(), runtime.rules.cooloff_seconds)
