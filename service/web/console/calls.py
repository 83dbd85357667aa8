"""The console's call pages: calls needing attention and provider reports that matched no call."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from litestar import get
from litestar.params import FromQuery

from service.api.deps import Db, MaskingRequest
from service.broker import console, reports
from service.provider.reports import parse_report
from service.web.console.auth import signed_in
from service.web.console.common import view

# Why a report matched no call, in words (the code is shown beside them; see provider_reports.reason).
REPORT_REASONS = {
    "no_call": "no call in flight on that DID between those numbers",
    "before_call": "it ended before the call was placed",
    "times_in_future": "its times are in the future",
    "matching_failed": "it could not be matched (see the logs)",
    "same_report": "the same report again",
    "call_already_reported": "its call already had a report",
}


@get("/calls", guards=[signed_in], include_in_schema=False)
async def attention(request: MaskingRequest, conn: Db) -> Any:
    """Calls of the last 24 hours that ended unknown or failed."""
    found = await console.calls_needing_attention(conn, request.principal.tenant_id, request.runtime.clock())
    return view(request, "console/calls.html", calls=found)


@get("/reports", guards=[signed_in], include_in_schema=False)
async def unmatched(request: MaskingRequest, conn: Db, cursor: FromQuery[str | None] = None) -> Any:
    """Provider reports on the tenant's DIDs that matched no call; numbers masked."""
    found = await reports.list_reports(conn, request.principal.tenant_id, False, cursor, 50)
    zone = request.runtime.settings.provider_timezone
    rows = []
    for r in found.items:
        parsed = parse_report(r.body.encode(), ZoneInfo(zone))
        rows.append({"report": r, "parsed": parsed})
    return view(request, "console/reports.html", rows=rows, next_cursor=found.next_cursor, reasons=REPORT_REASONS)
