"""HTTP route for erasure (scope ops): a number destroyed in the tenant's ended sessions, calls, reports and events."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import JSONBody

from service.api.audit import key_context
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker import erasure as broker


class ErasureController(Controller):
    """Erase a number (the right to be forgotten)."""

    path = "/v1/erasures"
    tags = ["erasures"]
    opt = {"scope": "ops"}

    @post(
        "/",
        status_code=200,
        summary="Destroy a number in your ended sessions, calls, reports and events (active sessions are listed)",
        responses=API_RESPONSES,
    )
    async def erase(
        self, request: MaskingRequest, data: JSONBody[broker.ErasureRequest], conn: Db
    ) -> broker.ErasureResult:
        return await broker.erase(conn, key_context(request), data, request.runtime.clock())
