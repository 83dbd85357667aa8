"""SQL for changing a live session: its expiry (TTL) and its parties (reassignment, in place or onto another DID)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from service.db import Conn, Query, sealed
from service.db.sessions.row import SESSION, session_or_none
from service.models import Session


async def update_expiry(
    conn: Conn, tenant_id: int, session_id: UUID, now: datetime, expires_at: datetime
) -> Session | None:
    """Move a live session's expiry and its live bindings' (a replaced party's stays ended); None when not live."""
    row = await conn.fetchrow(
        f"""
        WITH s AS (
            UPDATE sessions SET expires_at = $4
            WHERE id = $1 AND tenant_id = $2 AND status = 'active' AND expires_at > $3 RETURNING *),
        b AS (UPDATE bindings SET ends_at = $4 FROM s WHERE bindings.session_id = s.id AND bindings.ends_at > $3)
        SELECT {SESSION} FROM s
        """,
        session_id,
        tenant_id,
        now,
        expires_at,
    )
    return session_or_none(row)


async def lock_session(conn: Conn, tenant_id: int, session_id: UUID) -> Session | None:
    """One of the tenant's sessions, its row locked until the transaction ends (calls and closes wait)."""
    row = await conn.fetchrow(
        f"SELECT {SESSION} FROM sessions WHERE id = $1 AND tenant_id = $2 FOR UPDATE", session_id, tenant_id
    )
    return session_or_none(row)


async def call_in_flight(conn: Conn, session_id: UUID) -> bool:
    """Whether the session has a call still waiting for its report."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM calls WHERE session_id = $1 AND in_flight)", session_id
    )
    return found


class DidFit(msgspec.Struct, frozen=True):
    """Whether a session's DID may still serve it under rule 2: active, and of the customer's country when
    the pool has any."""

    active: bool
    geo_ok: bool


async def did_fit(conn: Conn, tenant_id: int, pool: str, did: str, country: str) -> DidFit:
    """Rule 2 for a DID and a customer's country."""
    row = await conn.fetchrow(
        """
        SELECT d.status = 'active' AS active,
               d.country = $4 OR NOT EXISTS (SELECT 1 FROM dids WHERE tenant_id = $1 AND pool = $2
                                             AND status = 'active' AND country = $4) AS geo_ok
        FROM dids d WHERE d.number = $3
        """,
        tenant_id,
        pool,
        did,
        country,
    )
    assert row is not None
    return msgspec.convert(row, DidFit)


# Bind the new numbers to the session's DID. Like the allocation's upsert, a row is taken over only when
# it has ended, and only after the cool-off unless the peer is the same: the primary key (number, did)
# makes rule 1 hold against any concurrent create or reassignment, in any process.
BIND_NEW = Query("""
WITH nb AS (
    INSERT INTO bindings (number_ix, did, peer_ix, session_id, ends_at)
    SELECT n, :did, p, :session_id, :ends_at FROM unnest(:numbers::bytea[], :peers::bytea[]) AS u(n, p)
    ORDER BY n
    ON CONFLICT (number_ix, did) DO UPDATE
        SET peer_ix = excluded.peer_ix, session_id = excluded.session_id, ends_at = excluded.ends_at
        WHERE bindings.ends_at <= :now
          AND (bindings.peer_ix = excluded.peer_ix OR bindings.ends_at <= :now - :cooloff::interval)
    RETURNING 1)
SELECT count(*)::int FROM nb
""")


async def bind_new(
    conn: Conn,
    *,
    tenant_id: int,
    did: str,
    session_id: UUID,
    numbers: list[str],
    peers: list[str],
    ends_at: datetime,
    now: datetime,
    cooloff: timedelta,
) -> int:
    """Bind each new number to the DID with its peer when rules 1 and 3 allow; how many were bound."""
    values = {
        "did": did,
        "session_id": session_id,
        "numbers": sealed.indexes(tenant_id, numbers),
        "peers": sealed.indexes(tenant_id, peers),
        "ends_at": ends_at,
        "now": now,
        "cooloff": cooloff,
    }
    bound: int = await conn.fetchval(BIND_NEW.sql, *BIND_NEW.args(values))
    return bound


class Blocker(msgspec.Struct, frozen=True):
    """A number's binding on a DID that stopped a reassignment: live (rule 1) or cooling off (rule 3)."""

    number: str
    live: bool


async def blockers(
    conn: Conn, tenant_id: int, did: str, numbers: list[str], peers: list[str], now: datetime, cooloff: timedelta
) -> list[Blocker]:
    """Which of these numbers may not be bound to the DID with these peers, and why."""
    number_of = dict(zip(sealed.indexes(tenant_id, numbers), numbers, strict=True))
    rows = await conn.fetch(
        """
        SELECT b.number_ix, b.ends_at > $3 AS live FROM bindings b
        JOIN unnest($2::bytea[], $5::bytea[]) AS u(n, p) ON b.number_ix = u.n
        WHERE b.did = $1 AND (b.ends_at > $3 OR (b.ends_at > $3 - $4::interval AND b.peer_ix <> u.p))
        """,
        did,
        list(number_of),
        now,
        cooloff,
        sealed.indexes(tenant_id, peers),
    )
    return [Blocker(number_of[bytes(r["number_ix"])], r["live"]) for r in rows]


async def drop_placeholder(conn: Conn, placeholder: UUID) -> None:
    """Delete the session row an allocation made for a reassignment (its bindings are re-pointed next)."""
    await conn.execute("DELETE FROM sessions WHERE id = $1", placeholder)


# Finish a reassignment: end the replaced parties' bindings on the old DID (cool-off applies to them from
# now), point the kept and new bindings at the session with their new peers, record the history (numbers
# masked) and change the session row. Rows touched are found by primary key.
FINISH_REASSIGN = Query(f"""
WITH ended AS (
    UPDATE bindings SET ends_at = :now
    WHERE number_ix = ANY(:ended::bytea[]) AND did = :old_did AND session_id = :session_id AND ends_at > :now),
kept AS (
    UPDATE bindings SET peer_ix = v.peer_ix, session_id = :session_id
    FROM unnest(:numbers::bytea[], :peers::bytea[]) AS v(number_ix, peer_ix)
    WHERE bindings.number_ix = v.number_ix AND bindings.did = :new_did
      AND bindings.session_id IN (:session_id, :placeholder)),
history AS (
    INSERT INTO session_changes (session_id, at, party, old_number, new_number, old_did, new_did)
    SELECT :session_id, :now, c.party, c.old, c.new, :old_did, :new_did
    FROM unnest(:parties::text[], :olds::text[], :news::text[]) AS c(party, old, new))
UPDATE sessions SET customer_ct = :customer_ct, customer_ix = :customer_ix, customer_mask = :customer_mask,
    agent_ct = :agent_ct, agent_ix = :agent_ix, agent_mask = :agent_mask, did = :new_did
WHERE id = :session_id
RETURNING {SESSION}
""")


class PartyChange(msgspec.Struct, frozen=True, kw_only=True):
    """A reassignment whose new bindings are made, as FINISH_REASSIGN applies it (its named parameters)."""

    tenant_id: int
    session_id: UUID
    placeholder: UUID  # the session row the allocator made for a move (the session's own id when it stays)
    customer: str
    agent: str
    old_did: str
    new_did: str
    ended: list[str]  # numbers whose bindings on old_did end now
    parties: list[str]  # the parties replaced, with their old and new numbers
    olds: list[str]
    news: list[str]
    now: datetime


async def finish_reassign(conn: Conn, change: PartyChange) -> Session | None:
    """Apply a reassignment whose new bindings are made; None when another live session of the same order
    took this pair meanwhile (the unique key refused it)."""
    t = change.tenant_id
    customer_ix, agent_ix = sealed.indexes(t, [change.customer, change.agent])
    values = {
        **msgspec.structs.asdict(change),
        "customer_ct": sealed.seal(t, sealed.label("customer"), change.customer),
        "customer_ix": customer_ix,
        "customer_mask": sealed.mask(change.customer),
        "agent_ct": sealed.seal(t, sealed.label("agent"), change.agent),
        "agent_ix": agent_ix,
        "agent_mask": sealed.mask(change.agent),
        "numbers": [customer_ix, agent_ix],
        "peers": [agent_ix, customer_ix],
        "ended": sealed.indexes(t, change.ended),
        # the history keeps numbers masked (it outlives the session's retention)
        "olds": [sealed.mask(n) for n in change.olds],
        "news": [sealed.mask(n) for n in change.news],
    }
    try:
        row = await conn.fetchrow(FINISH_REASSIGN.sql, *FINISH_REASSIGN.args(values))
    except asyncpg.UniqueViolationError:
        return None
    return session_or_none(row)


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded party change of a session (numbers masked)."""

    at: datetime
    party: str
    old_number: str
    new_number: str
    old_did: str
    new_did: str


async def select_changes(conn: Conn, tenant_id: int, session_id: UUID) -> list[Change]:
    """A session's party changes, oldest first."""
    rows = await conn.fetch(
        """
        SELECT c.at, c.party, c.old_number, c.new_number, c.old_did, c.new_did FROM session_changes c
        JOIN sessions s ON s.id = c.session_id WHERE c.session_id = $1 AND s.tenant_id = $2 ORDER BY c.id
        """,
        session_id,
        tenant_id,
    )
    return [msgspec.convert(r, Change) for r in rows]
