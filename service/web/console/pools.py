"""The console's home and pools page: per pool DIDs, sessions, headroom and refusals, and sessions per hour."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.response import Redirect

from service.api.deps import Db, MaskingRequest
from service.broker import console
from service.broker.pools import pool_stats
from service.web.console.auth import signed_in
from service.web.console.common import view

# Pools with refusals but no DIDs, listed under the pools table (the busiest first).
UNKNOWN_POOLS_SHOWN = 20


@get("/", include_in_schema=False)
async def home() -> Redirect:
    """The console opens on its pools."""
    return Redirect("/console/pools", status_code=303)


@get("/pools", guards=[signed_in], include_in_schema=False)
async def pools(request: MaskingRequest, conn: Db) -> Any:
    """Per pool: DIDs, active sessions, headroom, refusals in the last hour; sessions per hour over the last day."""
    now = request.runtime.clock()
    tenant_id = request.principal.tenant_id
    stats = await pool_stats(conn, tenant_id, now)
    refused = await console.refusals_last_hour(conn, tenant_id, now)
    # Refusals for a pool with no DIDs (a misspelt pool name in a backend, say) are listed on their own.
    known = {p.pool for p in stats}
    unknown = sorted(((n, pool) for pool, n in refused.items() if pool not in known), reverse=True)
    hours = await console.sessions_by_hour(conn, tenant_id, now)
    return view(
        request,
        "console/pools.html",
        pools=stats,
        refused=refused,
        unknown=unknown[:UNKNOWN_POOLS_SHOWN],
        chart=_chart(hours),
    )


def _chart(hours: list[console.HourCount]) -> dict[str, Any]:
    """Bars of an inline SVG that scales to its card: 24 hours, a y axis from 0 to the busiest hour, hour labels."""
    top = max((h.sessions for h in hours), default=0)
    scale = top or 1
    left, width, gap, height, bottom = 36, 20, 3, 120, 18
    bars = [
        {
            "x": left + i * (width + gap),
            "y": height - round(h.sessions * height / scale),
            "h": round(h.sessions * height / scale),
            "n": h.sessions,
            "at": h.at.strftime("%H:00"),
        }
        for i, h in enumerate(hours)
    ]
    ticks = sorted({0, (scale + 1) // 2, scale})
    return {
        "bars": bars,
        "left": left,
        "width": left + len(hours) * (width + gap),
        "height": height,
        "full_height": height + bottom,
        "bar": width,
        "ticks": [{"n": t, "y": height - round(t * height / scale)} for t in ticks],
        "total": sum(h.sessions for h in hours),
        "top": top,
    }
