"""HTTP routes for the events feed and redelivery."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from service.api.audit import key_context
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.api.webhooks import read_ignored_body
from service.broker import events as broker
from service.broker import webhooks
from service.broker.audit import Target


class EventController(Controller):
    """The tenant's events, oldest first after a cursor; and queueing one again for its webhooks."""

    path = "/v1/events"
    tags = ["events"]

    @get("/", summary="Your events, oldest first after a cursor (catch up here)", responses=API_RESPONSES)
    async def list(
        self,
        request: MaskingRequest,
        conn: Db,
        type: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> broker.EventPage:
        return await broker.feed(conn, request.principal.tenant_id, type, after, limit)

    @post(
        "/{event_id:str}/redeliver",
        status_code=202,
        before_request=read_ignored_body,
        opt={"scope": "ops"},
        summary="Queue an event again for every endpoint that wants it",
        responses=API_RESPONSES,
    )
    async def redeliver(self, request: MaskingRequest, event_id: FromPath[str], conn: Db) -> webhooks.Redelivered:
        now = request.runtime.clock()
        async with conn.transaction():
            done = await webhooks.redeliver(conn, request.principal.tenant_id, event_id, now)
            await key_context(request).record(conn, "event.redeliver", Target("event", event_id), now)
        return done
