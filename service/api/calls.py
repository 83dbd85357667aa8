"""HTTP routes for click-to-call and reading calls."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES, problem_responses
from service.broker import calls as broker
from service.broker import costs, reports
from service.broker.bodies import StartCall
from service.models import Call


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
    async def start(
        self, request: MaskingRequest, session_id: FromPath[str], data: JSONBody[StartCall | None] = None
    ) -> Call:
        runtime = request.runtime
        return await broker.place_call(
            runtime.db,
            runtime.provider,
            request.principal.tenant_id,
            session_id,
            data or StartCall(),
            runtime.clock,
            runtime.call_limits,
        )

    @get("/sessions/{session_id:str}/calls", summary="A session's calls", responses=API_RESPONSES)
    async def of_session(
        self,
        request: MaskingRequest,
        session_id: FromPath[str],
        conn: Db,
    ) -> CallList:
        return CallList(await broker.list_calls(conn, request.principal.tenant_id, session_id))

    @get(
        "/calls.csv",
        summary="The calls created in [from, to) with their costs, as CSV (no party numbers); at most 31 days",
        opt={"scope": "ops"},
        media_type="text/csv; charset=utf-8",
        responses=API_RESPONSES,
    )
    async def export(
        self,
        request: MaskingRequest,
        from_: Annotated[str | None, QueryParameter(name="from", required=False)] = None,
        to: FromQuery[str | None] = None,
    ) -> Stream:
        start, end = costs.export_range(from_, to)
        name = f"calls-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.csv"
        return Stream(
            costs.export_calls(request.runtime.db, request.principal.tenant_id, start, end),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        )

    @get("/calls/{call_id:str}", summary="One call", responses=API_RESPONSES)
    async def read(self, request: MaskingRequest, call_id: FromPath[str], conn: Db) -> Call:
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
        conn: Db,
        matched: FromQuery[bool] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> reports.ReportPage:
        return await reports.list_reports(conn, request.principal.tenant_id, matched, cursor, limit)
