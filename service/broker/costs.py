"""Costs: per pool the calls, talk minutes and known cost of the last 24 hours and 30 days."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from service.db import Conn
from service.db import costs as q

DAY = timedelta(hours=24)
MONTH = timedelta(days=30)


class CallUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Calls placed in a window: how many, their billed minutes, the cost of those whose cost is known
    (a decimal string), and how many those are (calls - priced_calls have no known cost yet)."""

    calls: int
    minutes: float
    cost: str
    priced_calls: int


NO_CALLS = CallUsage(calls=0, minutes=0.0, cost="0", priced_calls=0)


def _usage(calls: int, billing_seconds: int, priced: int, cost: str) -> CallUsage:
    return CallUsage(calls=calls, minutes=round(billing_seconds / 60, 2), cost=cost, priced_calls=priced)


async def pool_usage(conn: Conn, tenant_id: int, now: datetime) -> dict[str, tuple[CallUsage, CallUsage]]:
    """Per pool with calls: (last 24 hours, last 30 days), by the calls' creation time."""
    return {
        r.pool: (
            _usage(r.calls_day, r.billing_seconds_day, r.priced_calls_day, r.cost_day),
            _usage(r.calls_month, r.billing_seconds_month, r.priced_calls_month, r.cost_month),
        )
        for r in await q.pool_calls(conn, tenant_id, now - DAY, now - MONTH, now)
    }
