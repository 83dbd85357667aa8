"""The console's audit page: the tenant's audit log, newest first, a page at a time."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from litestar import get
from litestar.params import FromQuery

from service.api.deps import Db, MaskingRequest
from service.broker import audit
from service.web.console.auth import signed_in
from service.web.console.common import view

AUDIT_SHOWN = 50


@get("/audit", guards=[signed_in], include_in_schema=False)
async def audit_log(
    request: MaskingRequest, conn: Db, action: FromQuery[str] = "", before: FromQuery[str | None] = None
) -> Any:
    """The tenant's audit log, newest first, a page at a time, optionally of one action; numbers masked."""
    wanted = action if action in audit.ACTIONS else None
    found = await audit.newest(conn, request.principal.tenant_id, wanted, before, AUDIT_SHOWN)
    older = urlencode({"action": wanted or "", "before": found.next_cursor}) if found.next_cursor else ""
    return view(request, "console/audit.html", entries=found.items, actions=audit.ACTIONS, action=wanted, older=older)
