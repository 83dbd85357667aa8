"""HTTP route that mints call links (the agent pages themselves are in service/web/)."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import FromPath, JSONBody

from service.api.audit import key_context
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker import links as broker
from service.broker.audit import Target
from service.broker.bodies import CreateLink


class CallLinkController(Controller):
    """Mint a link that lets one party of a session place its calls from a web page."""

    path = "/v1/sessions"
    tags = ["calls"]

    @post(
        "/{session_id:str}/call-links",
        status_code=201,
        summary="A call link for one party: a page with one button that calls the other party",
        responses=API_RESPONSES,
    )
    async def create(
        self,
        request: MaskingRequest,
        session_id: FromPath[str],
        conn: Db,
        data: JSONBody[CreateLink | None] = None,
    ) -> broker.NewLink:
        runtime, now = request.runtime, request.runtime.clock()
        async with conn.transaction():
            link = await broker.create_link(
                conn,
                request.principal.tenant_id,
                session_id,
                data or CreateLink(),
                now,
                runtime.settings.public_base,
            )
            await key_context(request).record(conn, "call_link.create", Target("session", session_id), now)
        return link
