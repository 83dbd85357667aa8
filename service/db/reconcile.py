"""SQL for reconciliation: the lease, the calls due a call-log lookup, their backoff, conversations already placed."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.db import Conn, sealed
from service.db.calls import open_numbers
from service.db.dids import tenant_of_did

# The advisory lock that makes one process at a time ask the provider's call log (any number may try).
LEASE_KEY = 0x6D61736B_72656331  # "maskrec1"


class DueCall(msgspec.Struct, frozen=True):
    """A call still waiting for its report, due a lookup in the call log."""

    id: UUID
    bridge: str
    from_number: str
    to_number: str
    created_at: datetime
    lookups: int


async def take_lease(conn: Conn) -> bool:
    """Take the reconciliation lease on this connection; False when another process holds it."""
    taken: bool = await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEASE_KEY)
    return taken


async def give_lease(conn: Conn) -> None:
    """Give the lease back (it is also given back when the connection closes)."""
    await conn.execute("SELECT pg_advisory_unlock($1)", LEASE_KEY)


async def select_due(
    conn: Conn, placed_before: datetime, placed_after: datetime, now: datetime, limit: int
) -> list[DueCall]:
    """One batch of calls in flight placed between the two times, no lookup pending later, oldest first.

    A call into a flow (`to` is `flow:<id>`) is not looked up: the log shows no number to match it by.
    """
    rows = await conn.fetch(
        f"""
        SELECT id, bridge, tenant_id, first, {sealed.sealed_text("from_ct", "from_mask")} AS from_number,
               {sealed.sealed_text("to_ct", "to_mask")} AS to_number, created_at, lookups FROM calls
        WHERE in_flight AND created_at <= $1 AND created_at > $2 AND flow IS NULL
          AND (lookup_at IS NULL OR lookup_at <= $3)
        ORDER BY created_at LIMIT $4
        """,
        placed_before,
        placed_after,
        now,
        limit,
    )
    due = []
    for r in rows:
        from_, to = open_numbers(r["tenant_id"], r["first"], r["from_number"], r["to_number"])
        due.append(DueCall(r["id"], r["bridge"], from_ or "", to or "", r["created_at"], r["lookups"]))
    return due


async def defer(conn: Conn, call_ids: list[UUID], next_at: list[datetime], outcomes: list[str]) -> None:
    """Count one more lookup of these calls, how each went (not_found, ambiguous, log_unavailable), and when each
    is next due."""
    await conn.execute(
        """
        UPDATE calls c SET lookups = c.lookups + 1, lookup_at = d.next_at, lookup_outcome = d.outcome
        FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS d(id, next_at, outcome)
        WHERE c.id = d.id AND c.in_flight
        """,
        call_ids,
        next_at,
        outcomes,
    )


Conversation = tuple[str, str, str, datetime | None, datetime | None]


async def placed_conversations(conn: Conn, routes: list[tuple[str, str, str]], since: datetime) -> set[Conversation]:
    """The route, start and end of every conversation already given to a call on these routes since then."""
    # each route by its numbers' blind indexes under its DID's tenant
    tenants = [await tenant_of_did(conn, r[0]) for r in routes]
    rows = await conn.fetch(
        """
        SELECT r.i, c.started_at, c.ended_at
        FROM unnest($1::text[], $2::bytea[], $3::bytea[]) WITH ORDINALITY AS r(bridge, from_ix, to_ix, i)
        JOIN calls c ON c.bridge = r.bridge AND c.from_ix = r.from_ix AND c.to_ix = r.to_ix
        WHERE c.report_id IS NOT NULL AND c.created_at > $4 AND c.started_at IS NOT NULL
        """,
        [r[0] for r in routes],
        [sealed.probe(t, r[1]) for t, r in zip(tenants, routes, strict=True)],
        [sealed.probe(t, r[2]) for t, r in zip(tenants, routes, strict=True)],
        since,
    )
    return {(*routes[r["i"] - 1], r["started_at"], r["ended_at"]) for r in rows}
