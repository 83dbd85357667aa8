"""SQL for call links: minted with a token hash, read with their session and last call, used atomically."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from service.db import Conn, sealed
from service.models import Party


class LinkRow(msgspec.Struct, frozen=True, kw_only=True):
    """A call link with what its page shows: its session's order, state and end."""

    tenant_id: int
    session_id: UUID
    party: Party
    max_uses: int
    uses: int
    expires_at: datetime
    order_id: str
    session_status: str
    session_expires_at: datetime
    replaced: bool  # its party was replaced (PATCH) since it was made: the link is dead
    party_number: str  # its party's number as stored now (a press calls only while it is still this one)


# How many times a link's party has been replaced in its session (one session_changes row per replacement).
_CHANGES = "(SELECT count(*)::int FROM session_changes c WHERE c.session_id = l.session_id AND c.party = l.party)"
_LINK = f"""l.tenant_id, l.session_id, l.party, l.max_uses, l.uses, l.expires_at, s.order_id,
    s.status AS session_status, s.expires_at AS session_expires_at, {_CHANGES} <> l.party_changes AS replaced,
    CASE WHEN l.party = 'agent' THEN {sealed.sealed_text("s.agent_ct", "s.agent_mask")}
         ELSE {sealed.sealed_text("s.customer_ct", "s.customer_mask")} END AS party_number"""


def _link(row: Any) -> LinkRow | None:
    """A link row, its party's number opened."""
    if row is None:
        return None
    values = dict(row)
    values["party_number"] = sealed.opened(values["tenant_id"], sealed.label(values["party"]), values["party_number"])
    return msgspec.convert(values, LinkRow)


async def insert_link(
    conn: Conn,
    *,
    token_hash: bytes,
    tenant_id: int,
    session_id: UUID,
    party: str,
    max_uses: int,
    now: datetime,
    expires_at: datetime,
) -> datetime | None:
    """Store a link to a live session of the tenant, for the party as it is now (its replacements counted); its
    effective end, or None when the session is not live."""
    ends: datetime | None = await conn.fetchval(
        """
        WITH s AS (SELECT id, expires_at FROM sessions
                   WHERE id = $3 AND tenant_id = $2 AND status = 'active' AND expires_at > $6),
        l AS (INSERT INTO call_links (token_hash, tenant_id, session_id, party, max_uses, created_at, expires_at,
                                      party_changes)
              SELECT $1, $2, s.id, $4, $5, $6, $7,
                     (SELECT count(*) FROM session_changes c WHERE c.session_id = s.id AND c.party = $4)
              FROM s RETURNING expires_at)
        SELECT least(l.expires_at, s.expires_at) FROM l, s
        """,
        token_hash,
        tenant_id,
        session_id,
        party,
        max_uses,
        now,
        expires_at,
    )
    return ends


async def select_link(conn: Conn, token_hash: bytes) -> LinkRow | None:
    """A link by its token's hash, with its session."""
    row = await conn.fetchrow(
        f"SELECT {_LINK} FROM call_links l JOIN sessions s ON s.id = l.session_id WHERE l.token_hash = $1",
        token_hash,
    )
    return _link(row)


async def take_use(conn: Conn, token_hash: bytes, now: datetime) -> LinkRow | None:
    """Count one use of a link that is live (unexpired, uses left, session live, party not replaced); None when
    it is not."""
    row = await conn.fetchrow(
        f"""
        WITH l AS (
            UPDATE call_links l SET uses = uses + 1 FROM sessions s
            WHERE l.token_hash = $1 AND s.id = l.session_id AND l.uses < l.max_uses AND l.expires_at > $2
              AND s.status = 'active' AND s.expires_at > $2 AND {_CHANGES} = l.party_changes
            RETURNING l.*)
        SELECT {_LINK} FROM l JOIN sessions s ON s.id = l.session_id
        """,
        token_hash,
        now,
    )
    return _link(row)


async def give_back_use(conn: Conn, token_hash: bytes) -> None:
    """Undo one use (the press placed no call)."""
    await conn.execute("UPDATE call_links SET uses = uses - 1 WHERE token_hash = $1 AND uses > 0", token_hash)


async def delete_old_links(conn: Conn, before: datetime, limit: int) -> int:
    """Delete one batch of links that ended before this time."""
    done: int = await conn.fetchval(
        """
        WITH due AS (SELECT token_hash FROM call_links WHERE expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED),
        d AS (DELETE FROM call_links c USING due WHERE c.token_hash = due.token_hash RETURNING 1)
        SELECT count(*)::int FROM d
        """,
        before,
        limit,
    )
    return done
