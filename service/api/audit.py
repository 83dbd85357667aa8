"""HTTP route for the audit log (scope ops), and where an audited request's client address and request id come from."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import FromQuery, QueryParameter

from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker import audit as broker
from service.web.security import client_address


def request_origin(request: Request[Any, Any, Any]) -> tuple[str | None, str | None]:
    """(client address, request id) of a request, for broker.audit.record: the address as behind trusted proxies."""
    peer = request.client.host if request.client else None
    address = None
    if peer:
        address = client_address(
            peer, request.headers.get("x-forwarded-for"), request.app.state.runtime.settings.trusted_networks
        )
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return address, request_id


class AuditController(Controller):
    """The tenant's audit log: every ops action with who, when, what and why, oldest first after a cursor."""

    path = "/v1/audit"
    tags = ["audit"]
    opt = {"scope": "ops"}

    @get("/", summary="Your ops actions, oldest first after a cursor", responses=API_RESPONSES)
    async def list(
        self,
        request: MaskingRequest,
        conn: Db,
        after: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        actor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=broker.MAX_LIMIT)] = 50,
    ) -> broker.AuditPage:
        return await broker.page(conn, request.principal.tenant_id, after, action, actor, limit)
