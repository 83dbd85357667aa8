"""HTTP routes for the DID pool (scope ops)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Response, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from service.api.audit import key_context
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker import dids as broker
from service.broker.audit import DID_STATUS_ACTIONS, Target
from service.broker.bodies import AddDid, AddDids, ChangeDid
from service.models import Did, DidStatus

BULK_MAX_BODY = 1024 * 1024


class BulkResult(msgspec.Struct, frozen=True):
    """What a bulk add did."""

    created: int
    existing: int


class DidController(Controller):
    """Add, list and change the tenant's DIDs."""

    path = "/v1/dids"
    tags = ["dids"]
    opt = {"scope": "ops"}

    @post(
        "/",
        status_code=201,
        summary="Add a DID (200 unchanged when already yours)",
        responses=API_RESPONSES,
    )
    async def add(
        self,
        request: MaskingRequest,
        data: JSONBody[AddDid],
        conn: Db,
    ) -> Response[Did]:
        now = request.runtime.clock()
        async with conn.transaction():
            did, created = await broker.add_did(
                conn, request.principal.tenant_id, data, now, request.runtime.settings.max_pools_per_tenant
            )
            await key_context(request).record(conn, "did.add", Target("did", did.number), now)
        return Response(did, status_code=201 if created else 200)

    @post(
        "/bulk",
        status_code=200,
        request_max_body_size=BULK_MAX_BODY,
        summary="Add up to 10,000 DIDs",
        responses=API_RESPONSES,
    )
    async def bulk(self, request: MaskingRequest, data: JSONBody[AddDids], conn: Db) -> BulkResult:
        async with conn.transaction():
            created, existing = await broker.add_dids(
                conn, request.principal.tenant_id, data.dids, max_pools=request.runtime.settings.max_pools_per_tenant
            )
            # One row per request: its target counts the DIDs it added (not those already in the pool).
            await key_context(request).record(conn, "did.add", Target("dids", str(created)), request.runtime.clock())
        return BulkResult(created=created, existing=existing)

    @get("/", summary="List DIDs with their active sessions, a page at a time", responses=API_RESPONSES)
    async def list(
        self,
        request: MaskingRequest,
        conn: Db,
        pool: FromQuery[str | None] = None,
        status: FromQuery[DidStatus | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: FromQuery[str | None] = None,
    ) -> broker.DidPage:
        return await broker.list_dids(
            conn, request.principal.tenant_id, request.runtime.clock(), pool, status, limit, cursor
        )

    @patch(
        "/{number:str}",
        summary="Drain, retire or re-activate a DID, or move it to another pool",
        responses=API_RESPONSES,
    )
    async def change(
        self,
        request: MaskingRequest,
        number: FromPath[str],
        data: JSONBody[ChangeDid],
        conn: Db,
    ) -> Did:
        now = request.runtime.clock()
        async with conn.transaction():
            did = await broker.change_did(
                conn,
                request.principal.tenant_id,
                number,
                data.status,
                data.pool,
                now,
                request.runtime.settings.max_pools_per_tenant,
            )
            if (action := DID_STATUS_ACTIONS.get(data.status or "")) is not None:
                await key_context(request).record(conn, action, Target("did", did.number), now)
        return did
