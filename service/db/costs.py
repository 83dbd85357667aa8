"""SQL for costs: calls, talk time and cost per pool over the last day and month, and a date range's calls in pages."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.db import Conn, sealed
from service.db.calls import open_numbers


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


class CallRow(msgspec.Struct, frozen=True, array_like=True):
    """A call as the CSV export shows it: no party numbers (the bridge is the tenant's own DID)."""

    id: UUID
    session_id: UUID
    order_id: str
    created_at: datetime
    status: str
    duration_seconds: int | None
    billing_seconds: int | None
    cost: str | None
    billing_pulse_seconds: int | None
    bridge: str


# A page of the tenant's calls created in [$2, $3) after the keyset ($4, $5), through calls_by_tenant
# (tenant_id, created_at); the id breaks ties of created_at so no row is skipped or repeated between pages.
CALLS_PAGE = """
SELECT c.id, c.session_id, s.order_id, c.created_at, c.status, c.duration_seconds, c.billing_seconds,
       c.cost::text AS cost, c.billing_pulse_seconds, c.bridge
FROM calls c JOIN sessions s ON s.id = c.session_id
WHERE c.tenant_id = $1 AND c.created_at >= $2 AND c.created_at < $3
  AND ($4::timestamptz IS NULL OR (c.created_at, c.id) > ($4, $5::uuid))
ORDER BY c.created_at, c.id
LIMIT $6
"""


async def calls_page(
    conn: Conn,
    tenant_id: int,
    since: datetime,
    until: datetime,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[CallRow]:
    """At most limit of the tenant's calls created in [since, until), oldest first, after the keyset `after`."""
    at, ident = after if after is not None else (None, None)
    rows = await conn.fetch(CALLS_PAGE, tenant_id, since, until, at, ident, limit)
    return [msgspec.convert(tuple(r), CallRow) for r in rows]


class UnpricedCall(msgspec.Struct, frozen=True):
    """A call completed by a callback report, its conversation's times known, with no cost yet."""

    id: UUID
    created_at: datetime
    bridge: str
    from_number: str
    to_number: str
    started_at: datetime
    ended_at: datetime | None


# Calls are reached per tenant through calls_by_tenant (tenant_id, created_at): created from a day before
# the window (a report comes at most the report timeout after its call), ended in it, keyset (created_at, id).
UNPRICED = f"""
SELECT c.id, c.created_at, c.bridge, c.tenant_id, c.first,
       {sealed.sealed_text("c.from_ct", "c.from_mask")} AS from_number,
       {sealed.sealed_text("c.to_ct", "c.to_mask")} AS to_number, c.started_at, c.ended_at
FROM tenants t JOIN calls c ON c.tenant_id = t.id
WHERE c.created_at >= $1::timestamptz - interval '1 day' AND c.created_at < $2
  AND c.report_id IS NOT NULL AND coalesce(c.source, 'report') = 'report' AND c.cost IS NULL
  AND c.started_at IS NOT NULL AND coalesce(c.ended_at, c.started_at) >= $1
  AND coalesce(c.ended_at, c.started_at) < $2
  AND ($3::timestamptz IS NULL OR (c.created_at, c.id) > ($3, $4::uuid))
ORDER BY c.created_at, c.id
LIMIT $5
"""


async def unpriced_calls(
    conn: Conn, since: datetime, until: datetime, after: tuple[datetime, UUID] | None, limit: int
) -> list[UnpricedCall]:
    """A batch of calls completed by a report whose conversation ended in [since, until) and has no cost."""
    at, ident = after if after is not None else (None, None)
    found = []
    for r in await conn.fetch(UNPRICED, since, until, at, ident, limit):
        values = dict(r)
        values["from_number"], values["to_number"] = open_numbers(
            values.pop("tenant_id"), values.pop("first"), values["from_number"], values["to_number"]
        )
        found.append(msgspec.convert(values, UnpricedCall))
    return found


async def fill_costs(conn: Conn, ids: list[UUID], costs: list[str], pulses: list[int | None]) -> int:
    """Set the cost and billing pulse of calls that still have no cost; how many were set."""
    done = await conn.fetch(
        """
        UPDATE calls c SET cost = d.cost::numeric, billing_pulse_seconds = d.pulse
        FROM unnest($1::uuid[], $2::text[], $3::int[]) AS d(id, cost, pulse)
        WHERE c.id = d.id AND c.cost IS NULL
        RETURNING c.id
        """,
        ids,
        costs,
        pulses,
    )
    return len(done)
