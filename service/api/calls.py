"""HTTP routes for click-to-call and reading calls."""

from __future__ import annotations

from typing import Annotated

import msgspec
from asyncpg.pool import PoolConnectionProxy
from litestar import Controller, get, post
from litestar.params import Parameter

from service.api.deps import MaskingRequest
from service.broker import calls as broker
from service.broker.models import Call
from service.errors import API_RESPONSES, problem_responses


class CallList(msgspec.Struct, frozen=True):
    """A session's calls, oldest first."""

    items: list[Call]


class CallController(Controller):
    """Start a call in a session and follow it."""

    path = "/v1"
    tags = ["calls"]

    @post(
        "/sessions/{session_id:str}/calls",
        status_code=202,
        summary="Call: ring `first`, then bridge the other party through the session's DID",
        responses={**API_RESPONSES, **problem_responses(502, 504)},
    )
    async def start(self, request: MaskingRequest, session_id: str, data: broker.StartCall | None = None) -> Call:
        runtime = request.runtime
        return await broker.place_call(
            runtime.db,
            runtime.provider,
            request.principal.tenant_id,
            session_id,
            data or broker.StartCall(),
            runtime.clock,
            runtime.call_limits,
        )

    @get("/sessions/{session_id:str}/calls", summary="A session's calls", responses=API_RESPONSES)
    async def of_session(
        self,
        request: MaskingRequest,
        session_id: str,
        conn: PoolConnectionProxy,
    ) -> CallList:
        return CallList(await broker.list_calls(conn, request.principal.tenant_id, session_id, request.runtime.clock()))

    @get("/calls/{call_id:str}", summary="One call", responses=API_RESPONSES)
    async def read(self, request: MaskingRequest, call_id: str, conn: PoolConnectionProxy) -> Call:
        return await broker.get_call(conn, request.principal.tenant_id, call_id)


class ReportController(Controller):
    """The provider's reports on the tenant's DIDs (scope ops): above all, those that matched no call."""

    path = "/v1/reports"
    tags = ["ops"]
    opt = {"scope": "ops"}

    @get("/", summary="Reports whose bridge is one of your DIDs, newest first", responses=API_RESPONSES)
    async def list(
        self,
        request: MaskingRequest,
        conn: PoolConnectionProxy,
        matched: bool = False,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        cursor: str | None = None,
    ) -> broker.ReportPage:
        return await broker.list_reports(conn, request.principal.tenant_id, matched, cursor, limit)
