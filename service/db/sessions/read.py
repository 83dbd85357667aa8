"""SQL for reading sessions: one by id, a keyset page, and the live session a caller reaches on a DID."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.db import Conn, sealed
from service.db.dids import tenant_of_did
from service.db.sessions.row import SESSION, session, session_or_none
from service.models import Session


async def select_session(conn: Conn, tenant_id: int, session_id: UUID) -> Session | None:
    """One of the tenant's sessions."""
    row = await conn.fetchrow(f"SELECT {SESSION} FROM sessions WHERE id = $1 AND tenant_id = $2", session_id, tenant_id)
    return session_or_none(row)


async def select_sessions(
    conn: Conn,
    tenant_id: int,
    now: datetime,
    *,
    order_id: str | None,
    customer: str | None,
    status: str | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[Session]:
    """A page of the tenant's sessions, newest first, after a keyset position."""
    rows = await conn.fetch(
        f"""
        SELECT {SESSION} FROM sessions
        WHERE tenant_id = $1
          AND ($2::text IS NULL OR order_id = $2)
          AND ($3::bytea IS NULL OR customer_ix = $3)
          AND CASE $4::text
                WHEN 'active' THEN status = 'active' AND expires_at > $5
                WHEN 'expired' THEN status = 'expired' OR (status = 'active' AND expires_at <= $5)
                WHEN 'closed' THEN status = 'closed'
                ELSE true END
          AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT $8
        """,
        tenant_id,
        order_id,
        None if customer is None else sealed.index(tenant_id, customer),
        status,
        now,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [session(r) for r in rows]


class RouteRow(msgspec.Struct, frozen=True):
    """The live session on a DID that has a caller as a party, and the other party."""

    id: UUID
    other: str


async def select_route(conn: Conn, did: str, caller: str, now: datetime) -> RouteRow | None:
    """The live session on a DID that has the caller as a party (the caller's index is the DID's tenant's)."""
    tenant_id = await tenant_of_did(conn, did)
    if tenant_id is None:
        return None
    row = await conn.fetchrow(
        f"""
        SELECT id, tenant_id, CASE WHEN customer_ix = $2 THEN 'agent' ELSE 'customer' END AS other_party,
               CASE WHEN customer_ix = $2 THEN {sealed.sealed_text("agent_ct", "agent_mask")}
                    ELSE {sealed.sealed_text("customer_ct", "customer_mask")} END AS other
        FROM sessions
        WHERE did = $1 AND (customer_ix = $2 OR agent_ix = $2) AND status = 'active' AND expires_at > $3
        """,
        did,
        sealed.index(tenant_id, caller),
        now,
    )
    if row is None:
        return None
    other = sealed.opened(row["tenant_id"], sealed.label(row["other_party"]), row["other"])
    return RouteRow(row["id"], other or "")
