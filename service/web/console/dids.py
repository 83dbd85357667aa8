"""The console's DIDs page: search the tenant's DIDs and drain, retire or re-activate each."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from service.api.audit import console_context
from service.api.deps import Db, MaskingRequest
from service.broker import console, dids
from service.broker.audit import DID_STATUS_ACTIONS, Target
from service.broker.errors import DidInUse
from service.models import DidStatus
from service.web.console.auth import signed_in
from service.web.console.common import Form, ctx, view
from service.web.pages import page

# The DIDs a search shows at most (the search itself reaches every DID: it is a predicate in SQL).
DIDS_SHOWN = 500
DID_STATUSES = ("active", "draining", "retired")


@get("/dids", guards=[signed_in], include_in_schema=False)
async def did_list(
    request: MaskingRequest,
    conn: Db,
    q: FromQuery[str] = "",
    pool: FromQuery[str] = "",
    status: FromQuery[str] = "",
    done: FromQuery[str] = "",
) -> Any:
    """The tenant's DIDs, searchable by number, pool and status; drain, retire or re-activate each."""
    return await _dids_page(request, conn, q, pool, status, done=done)


async def _dids_page(
    request: MaskingRequest,
    conn: Db,
    q: str,
    pool: str,
    status: str,
    *,
    done: str = "",
    error: str = "",
    code: int = 200,
) -> Any:
    """The DIDs page: a search (in SQL, over every DID of the tenant) and what was just done or refused."""
    wanted = status if status in DID_STATUSES else None
    found = await console.search_dids(
        conn, request.principal.tenant_id, q[:64], pool[:64] or None, wanted, request.runtime.clock(), DIDS_SHOWN
    )
    return page(
        "console/dids.html",
        code,
        **ctx(
            request,
            dids=found.items,
            more=found.more,
            shown=DIDS_SHOWN,
            q=q,
            pool=pool,
            status_filter=status,
            done=done if done in DID_STATUSES else "",
            error=error,
        ),
    )


class DidChange(msgspec.Struct, kw_only=True):
    """A DID's new status, from its row's form; retiring is done only once confirmed."""

    status: DidStatus
    confirm: str = ""


@post("/dids/{number:str}", guards=[signed_in], include_in_schema=False, status_code=303)
async def did_change(request: MaskingRequest, conn: Db, number: FromPath[str], data: Annotated[DidChange, Form]) -> Any:
    """Drain, retire or re-activate a DID (PATCH /v1/dids/{number}'s rules); a refusal is said on the DIDs page.

    Retire first answers a confirmation page (a form, so it works without JavaScript); its Yes retires.
    """
    if data.status == "retired" and data.confirm != "yes":
        return view(request, "console/retire.html", number=number)
    now = request.runtime.clock()
    try:
        async with conn.transaction():
            did = await dids.change_did(conn, request.principal.tenant_id, number, data.status, None, now)
            if (action := DID_STATUS_ACTIONS.get(data.status)) is not None:
                await console_context(request).record(conn, action, Target("did", did.number), now)
    except DidInUse as exc:
        return await _dids_page(request, conn, number.lstrip("+"), "", "", error=exc.detail, code=409)
    return Redirect(f"/console/dids?q={did.number.lstrip('+')}&done={did.status}", status_code=303)
