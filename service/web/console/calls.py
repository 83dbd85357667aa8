"""The console's call pages: calls needing attention and provider reports that matched no call."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from litestar import get
from litestar.params import FromQuery

from service.api.deps import Db, MaskingRequest
from service.broker import calls, console, reports
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


# How a call's last lookup in the provider's call log went, in words (calls.lookup_outcome).
LOOKUP_OUTCOMES = {
    None: "not looked up yet",
    "not_found": "not found in the call log yet",
    "ambiguous": "ambiguous: more than one log row could be this call, so none is taken",
    "log_unavailable": "the call log could not be read",
}


@get("/calls", guards=[signed_in], include_in_schema=False)
async def attention(request: MaskingRequest, conn: Db) -> Any:
    """Calls of the last 24 hours that ended unknown or failed, and calls still waiting on the provider's call log."""
    runtime, tenant_id = request.runtime, request.principal.tenant_id
    found = await console.calls_needing_attention(conn, tenant_id, runtime.clock())
    waiting = await calls.calls_awaiting_log(conn, tenant_id, runtime.clock(), runtime.settings.reconcile_after_seconds)
    return view(request, "console/calls.html", calls=found, waiting=waiting, outcomes=LOOKUP_OUTCOMES)


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
