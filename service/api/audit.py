"""HTTP route for the audit log (scope ops), and the audit context (who, from where) of an API request."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter

from service.api.addresses import client_address
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker import audit as broker
from service.broker.tenants import Principal


def audit_context(request: MaskingRequest, actor: broker.Actor, tenant_id: int | None = None) -> broker.Context:
    """The audit context of a request: its tenant (the principal's unless given), this actor, client address and
    request id.

    The address is the peer's, or behind MASKING_TRUSTED_PROXIES the nearest X-Forwarded-For hop they did
    not add (the same rule as the agent pages' limits).
    """
    peer = request.client.host if request.client else None
    address = None
    if peer:
        trusted = request.runtime.settings.trusted_networks
        address = client_address(peer, request.headers.get("x-forwarded-for"), trusted)
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    if tenant_id is None:
        tenant_id = request.principal.tenant_id
    return broker.Context(tenant_id=tenant_id, actor=actor, client_address=address, request_id=request_id)


def key_context(request: MaskingRequest) -> broker.Context:
    """The audit context of a request made with an API key: the actor is that key (id and shown prefix)."""
    principal = request.principal
    return audit_context(request, broker.Actor.api_key(str(principal.key_id), principal.key_prefix))


def console_context(request: MaskingRequest, principal: Principal | None = None) -> broker.Context:
    """The audit context of a console page: the actor is the console session of the key signed in with."""
    principal = principal or request.principal
    return audit_context(request, broker.Actor.console(str(principal.key_id)), principal.tenant_id)


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
