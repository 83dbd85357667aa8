"""HTTP routes for webhook endpoints (scope ops): register, change, rotate the secret, test, and follow deliveries."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from service.api.audit import key_context
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker import webhooks as broker
from service.broker.audit import Target
from service.broker.bodies import ChangeEndpoint, CreateEndpoint


async def read_ignored_body(request: Request[Any, Any, Any]) -> None:
    """Read and drop a body sent to a route that takes none, before its pooled connection is taken.

    Left unread, a body past what the server buffers unasked made it close the keep-alive connection under
    the client's next request ("Server disconnected"). Past the service's body limit it is a 413 as anywhere.
    """
    await request.body()


class EndpointList(msgspec.Struct, frozen=True):
    """The tenant's webhook endpoints."""

    items: list[broker.WebhookEndpoint]


class WebhookController(Controller):
    """Webhook endpoints and their deliveries."""

    path = "/v1/webhooks"
    tags = ["webhooks"]
    opt = {"scope": "ops"}

    @post("/", status_code=201, summary="Register an endpoint; its secret is shown only here", responses=API_RESPONSES)
    async def create(self, request: MaskingRequest, data: JSONBody[CreateEndpoint], conn: Db) -> broker.WebhookEndpoint:
        runtime, now = request.runtime, request.runtime.clock()
        async with conn.transaction():
            made = await broker.create_endpoint(conn, runtime.settings, request.principal.tenant_id, data, now)
            await key_context(request).record(conn, "webhook.create", Target("webhook", str(made.id)), now)
        return made

    @get("/", summary="Your webhook endpoints", responses=API_RESPONSES)
    async def list(self, request: MaskingRequest, conn: Db) -> EndpointList:
        return EndpointList(await broker.list_endpoints(conn, request.principal.tenant_id))

    @get("/{webhook_id:str}", summary="One endpoint", responses=API_RESPONSES)
    async def read(self, request: MaskingRequest, webhook_id: FromPath[str], conn: Db) -> broker.WebhookEndpoint:
        return await broker.get_endpoint(conn, request.principal.tenant_id, webhook_id)

    @patch("/{webhook_id:str}", summary="Change url, events, description or status", responses=API_RESPONSES)
    async def change(
        self, request: MaskingRequest, webhook_id: FromPath[str], data: JSONBody[ChangeEndpoint], conn: Db
    ) -> broker.WebhookEndpoint:
        runtime, now = request.runtime, request.runtime.clock()
        async with conn.transaction():
            changed = await broker.change_endpoint(
                conn, runtime.settings, request.principal.tenant_id, webhook_id, data, now
            )
            await key_context(request).record(conn, "webhook.update", Target("webhook", str(changed.id)), now)
        return changed

    @delete("/{webhook_id:str}", status_code=204, summary="Delete an endpoint", responses=API_RESPONSES)
    async def remove(self, request: MaskingRequest, webhook_id: FromPath[str], conn: Db) -> None:
        now = request.runtime.clock()
        async with conn.transaction():
            await broker.delete_endpoint(conn, request.principal.tenant_id, webhook_id, now)
            await key_context(request).record(conn, "webhook.delete", Target("webhook", webhook_id), now)

    @post(
        "/{webhook_id:str}/rotate-secret",
        status_code=200,
        before_request=read_ignored_body,
        summary="A new secret (shown once); the old one also signs for 24 hours",
        responses=API_RESPONSES,
    )
    async def rotate(self, request: MaskingRequest, webhook_id: FromPath[str], conn: Db) -> broker.WebhookEndpoint:
        now = request.runtime.clock()
        async with conn.transaction():
            rotated = await broker.rotate_secret(conn, request.principal.tenant_id, webhook_id, now)
            await key_context(request).record(conn, "webhook.rotate_secret", Target("webhook", str(rotated.id)), now)
        return rotated

    @post(
        "/{webhook_id:str}/test",
        status_code=200,
        before_request=read_ignored_body,
        summary="Send a webhook.test event now; the attempt",
        responses=API_RESPONSES,
    )
    async def test(self, request: MaskingRequest, webhook_id: FromPath[str]) -> broker.Attempt:
        # No `conn: Db`: no pooled connection is held while the endpoint answers (up to its timeout).
        runtime = request.runtime
        deliverer: broker.Deliverer = request.app.state.webhooks
        return await broker.send_test(
            runtime.db, deliverer, request.principal.tenant_id, webhook_id, runtime.clock(), key_context(request)
        )

    @get("/{webhook_id:str}/deliveries", summary="Delivery attempts, newest first", responses=API_RESPONSES)
    async def deliveries(
        self,
        request: MaskingRequest,
        webhook_id: FromPath[str],
        conn: Db,
        status: FromQuery[Literal["delivered", "retrying", "failed"] | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> broker.AttemptPage:
        return await broker.list_attempts(conn, request.principal.tenant_id, webhook_id, status, cursor, limit)
