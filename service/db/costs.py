"""SQL for costs: calls, talk time and cost per pool over the last day and month, and a date range's calls in pages."""

from __future__ import annotations

from datetime import datetime

import msgspec

from service.db import Conn


class PoolCalls(msgspec.Struct, frozen=True, kw_only=True):
    """Per pool, the calls placed since day_start (_day) and since month_start (_month): how many, their
    billed seconds, how many have a known cost, and that cost summed as numeric (its text)."""

    pool: str
    calls_day: int
    billing_seconds_day: int
    priced_calls_day: int
    cost_day: str
    calls_month: int
    billing_seconds_month: int
    priced_calls_month: int
    cost_month: str


# One pass over the tenant's calls of the month through calls_by_tenant (tenant_id, created_at), joined to
# their session for the pool. Costs are summed as numeric (no float on the way); a call without a known
# cost adds nothing to the sum but is counted as a call.
POOL_CALLS = """
SELECT s.pool,
       count(*) FILTER (WHERE c.created_at >= $2)::int AS calls_day,
       coalesce(sum(c.billing_seconds) FILTER (WHERE c.created_at >= $2), 0)::int AS billing_seconds_day,
       count(c.cost) FILTER (WHERE c.created_at >= $2)::int AS priced_calls_day,
       coalesce(sum(c.cost) FILTER (WHERE c.created_at >= $2), 0)::text AS cost_day,
       count(*)::int AS calls_month,
       coalesce(sum(c.billing_seconds), 0)::int AS billing_seconds_month,
       count(c.cost)::int AS priced_calls_month,
       coalesce(sum(c.cost), 0)::text AS cost_month
FROM calls c JOIN sessions s ON s.id = c.session_id
WHERE c.tenant_id = $1 AND c.created_at >= $3 AND c.created_at <= $4
GROUP BY s.pool
"""


async def pool_calls(
    conn: Conn, tenant_id: int, day_start: datetime, month_start: datetime, now: datetime
) -> list[PoolCalls]:
    """Per pool of the tenant: the calls placed since day_start and since month_start (up to now)."""
    rows = await conn.fetch(POOL_CALLS, tenant_id, day_start, month_start, now)
    return [msgspec.convert(r, PoolCalls) for r in rows]
