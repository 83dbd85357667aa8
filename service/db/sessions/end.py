"""Ending sessions: the one rule "mark it ended and free its bindings", and every path that ends one."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from service.db import Conn, sealed
from service.db.sessions.row import FIELDS, as_json, columns, session, session_or_none
from service.models import CloseReason, Session

# The ended sessions' fields under the resource's names (and their tenant), to select from an end_sessions CTE.
ENDED = ", ".join(("tenant_id", *FIELDS))


def end_sessions(
    name: str,
    *,
    where: str,
    status: Literal["closed", "expired"],
    reason: CloseReason,
    closed_at: str,
    now: str,
    using: str = "",
    note: str = "NULL",
) -> str:
    """Two CTEs ending every active session `s` (FROM `using`) that matches `where`; every path that ends a
    session uses them (client close, ops expiry, the sweeper, a late repeat, max_calls in report ingest).

    `name` holds the ended sessions (tenant_id, the resource's fields, and `data`: their JSON for events);
    `name`_freed ends their live bindings at `now`, so their numbers are free on the DID at once (the
    cool-off runs from then). status and reason are constants; the other arguments are SQL expressions.
    """
    return f"""{name} AS (
    UPDATE sessions s SET status = '{status}', close_reason = '{reason}', closed_at = {closed_at}, close_note = {note}
    {using}
    WHERE s.status = 'active' AND ({where})
    RETURNING {columns("s")}, {as_json("s")} AS data),
{name}_freed AS (
    UPDATE bindings b SET ends_at = {now} FROM {name} e WHERE b.session_id = e.id AND b.ends_at > {now})"""


CLOSE = f"""
WITH {
    end_sessions(
        "ended",
        where="s.id = $1 AND s.tenant_id = $2 AND s.expires_at > $3",
        status="closed",
        reason="closed_by_client",
        closed_at="$3",
        now="$3",
        note="$4",
    )
}
SELECT {ENDED} FROM ended
"""


async def close_session(
    conn: Conn, tenant_id: int, session_id: UUID, now: datetime, note: str | None
) -> Session | None:
    """End a live session now (closed_by_client, with the client's note) and free its bindings; None when not live.

    Called in a transaction. The row lock comes first, in a statement of its own: a close that waited on a
    reassignment then frees the bindings that reassignment made (one statement's snapshot would miss them).
    """
    await conn.execute("SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2 FOR UPDATE", session_id, tenant_id)
    return session_or_none(await conn.fetchrow(CLOSE, session_id, tenant_id, now, note))


_EXPIRABLE = """($1::bigint IS NULL OR s.tenant_id = $1) AND s.status = 'active' AND s.expires_at > $2
    AND ($3::text IS NULL OR s.order_id = $3) AND ($4::bytea[] IS NULL OR s.customer_ix = ANY($4))
    AND ($5::bytea[] IS NULL OR s.agent_ix = ANY($5)) AND ($6::text IS NULL OR s.did = $6)"""

EXPIRE_MATCHING = f"""
WITH {end_sessions("ended", where=_EXPIRABLE, status="expired", reason="expired_by_ops", closed_at="$2", now="$2")}
SELECT {ENDED} FROM ended
"""


async def expire_matching(
    conn: Conn,
    tenant_id: int | None,
    now: datetime,
    *,
    order_id: str | None,
    customer: str | None,
    agent: str | None,
    masked_number: str | None,
) -> list[Session]:
    """Expire (by ops) every live session matching all given filters; return them as they now are.

    Called in a transaction; the rows are locked first for the reason close_session gives.
    """
    # a party's blind index is per tenant: across tenants (the command line), one per tenant
    tenants = [tenant_id] if tenant_id is not None else [r[0] for r in await conn.fetch("SELECT id FROM tenants")]

    def ix(number: str | None) -> list[bytes] | None:
        return None if number is None else [sealed.index(t, number) for t in tenants]

    args = (tenant_id, now, order_id, ix(customer), ix(agent), masked_number)
    await conn.execute(f"SELECT 1 FROM sessions s WHERE {_EXPIRABLE} FOR UPDATE", *args)
    return [session(r) for r in await conn.fetch(EXPIRE_MATCHING, *args)]


# The sweeper's batch: sessions past their expiry are marked expired (ttl) as of that expiry. Their
# bindings ended then too, so the freeing CTE finds none: DESIGN rule 2, the sweeper only tidies up.
SWEEP_EXPIRED = f"""
WITH due AS (
    SELECT id FROM sessions WHERE status = 'active' AND expires_at <= $1
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED),
{
    end_sessions(
        "ended",
        using="FROM due",
        where="s.id = due.id",
        status="expired",
        reason="ttl",
        closed_at="s.expires_at",
        now="$1",
    )
}
SELECT {ENDED} FROM ended
"""


async def sweep_expired(conn: Conn, now: datetime, batch: int) -> list[Session]:
    """Mark one batch of sessions past their expiry as expired (ttl); return them."""
    return [session(r) for r in await conn.fetch(SWEEP_EXPIRED, now, batch)]
