"""The console's webhooks page: endpoints with their failing events, a test send and redelivery of an event."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from service.api.audit import console_context
from service.api.deps import Db, MaskingRequest
from service.broker import console, webhooks
from service.broker.audit import Target
from service.web.console.auth import signed_in
from service.web.console.common import Form, view


@get("/webhooks", guards=[signed_in], include_in_schema=False)
async def webhook_list(
    request: MaskingRequest,
    conn: Db,
    queued: FromQuery[str] = "",
    endpoints: FromQuery[int] = -1,
    tested: FromQuery[str] = "",
    outcome: FromQuery[str] = "",
    code: FromQuery[int] = 0,
) -> Any:
    """The tenant's webhook endpoints, each with its failing events as they stand now and a Test button (no secret
    is ever shown)."""
    tenant_id = request.principal.tenant_id
    found = await webhooks.list_endpoints(conn, tenant_id)
    rows = [{"endpoint": e, "failing": await console.failing_events(conn, tenant_id, e.id)} for e in found]
    done = queued if queued.startswith("evt_") and queued[4:].isdigit() and endpoints >= 0 else ""
    tested_endpoint = next((e for e in found if str(e.id) == tested), None)
    test = None
    if tested_endpoint is not None and outcome in ("delivered", "retrying", "failed"):
        test = {"endpoint": tested_endpoint, "outcome": outcome, "code": code}
    return view(
        request,
        "console/webhooks.html",
        rows=rows,
        queued=done,
        endpoints=endpoints,
        test=test,
        now=request.runtime.clock(),
    )


@post("/webhooks/{endpoint_id:str}/test", guards=[signed_in], include_in_schema=False, status_code=303)
async def webhook_test(request: MaskingRequest, endpoint_id: FromPath[str]) -> Any:
    """Send a webhook.test event to one endpoint now (POST /v1/webhooks/{id}/test, on record) and say how it went.

    No pooled connection is held while the endpoint answers: send_test takes its own, before and after.
    """
    runtime = request.runtime
    deliverer: webhooks.Deliverer = request.app.state.webhooks
    attempt = await webhooks.send_test(
        runtime.db, deliverer, request.principal.tenant_id, endpoint_id, runtime.clock(), console_context(request)
    )
    query = urlencode({"tested": endpoint_id, "outcome": attempt.status, "code": attempt.status_code or 0})
    return Redirect(f"/console/webhooks?{query}", status_code=303)


class Redeliver(msgspec.Struct, kw_only=True):
    """The event to queue again, from a failing attempt's row."""

    event_id: str


@post("/webhooks/redeliver", guards=[signed_in], include_in_schema=False, status_code=303)
async def webhook_redeliver(request: MaskingRequest, conn: Db, data: Annotated[Redeliver, Form]) -> Any:
    """Queue an event again for every endpoint that wants it (POST /v1/events/{id}/redeliver)."""
    now = request.runtime.clock()
    async with conn.transaction():
        done = await webhooks.redeliver(conn, request.principal.tenant_id, data.event_id, now)
        await console_context(request).record(conn, "event.redeliver", Target("event", data.event_id), now)
    query = urlencode({"queued": data.event_id, "endpoints": done.queued})
    return Redirect(f"/console/webhooks?{query}", status_code=303)
