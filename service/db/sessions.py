"""SQL for sessions and their DID bindings, including the one-statement allocation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from service.db import Conn, Query
from service.db.events import emit_ctes, session_json
from service.models import Session

# The columns of a session row under the names of the Session resource.
SESSION = """id, order_id, customer, agent, did AS masked_number, pool, status, close_reason, created_at,
    expires_at, closed_at, record, max_call_minutes, max_calls, calls_made, metadata"""


def _session(row: Any) -> Session:
    return msgspec.convert(row, Session)


def _session_or_none(row: Any) -> Session | None:
    return None if row is None else msgspec.convert(row, Session)


# Why a binding of either number rules its DID out: either is bound there now (no crossed lines), or
# either ended a session there with somebody else less than the cool-off ago.
_RULES_OUT = """number IN (:customer, :agent)
      AND (ends_at > :now OR (ends_at > :now - :cooloff::interval AND peer NOT IN (:customer, :agent)))"""

# Geo-match: when the pool has an active DID in the customer's country, only those qualify.
_GEO = """
    SELECT EXISTS (SELECT 1 FROM dids
                   WHERE tenant_id = :tenant_id AND pool = :pool AND status = 'active' AND country = :country) AS only
"""


# The first eligible DID at or after a slot on the ring of slots (wrapping around), by an index probe: one
# branch per geo mode, and the planner runs only the branch whose one-time filter holds.
def _probe(geo: bool) -> str:
    country = "AND d.country = :country" if geo else ""
    gate = "(SELECT geo.only FROM geo)" if geo else "(SELECT NOT geo.only FROM geo)"
    eligible = f"""d.tenant_id = :tenant_id AND d.pool = :pool AND d.status = 'active' {country}
           AND d.number NOT IN (SELECT did FROM ruled) AND {gate}"""
    return f"""(SELECT d.number FROM dids d WHERE {eligible} AND d.slot >= s.at ORDER BY d.slot LIMIT :window)
        UNION ALL
        (SELECT d.number FROM dids d WHERE {eligible} AND d.slot < s.at ORDER BY d.slot LIMIT :window)"""


# One statement per attempt, its cost independent of how many sessions the pool or its DIDs hold: probe
# :sample random slots for eligible DIDs (two random choices), add the pair's previous DID (sticky), read
# each candidate's approximate load from its did_load shards, and take the sticky one or the less loaded;
# then bind both numbers to it and insert the session. The binding upsert only takes over a row that has
# ended, and only after the cool-off unless the peer is the same: so the database itself enforces rules 1
# and 3 whatever the candidate query saw. `bound` < 2 or no session row means the attempt lost a race and
# must roll back. No candidate at all means no DID of the pool is eligible: the probes wrap the whole ring.
ALLOCATE = Query(f"""
WITH geo AS ({_GEO}),
ruled AS (SELECT did FROM bindings WHERE {_RULES_OUT} UNION ALL SELECT unnest(:tried::text[])),
slots AS (SELECT CASE WHEN i = 1 THEN :slot::float8 ELSE random() END AS at FROM generate_series(1, :sample) AS i),
sample AS (
    SELECT p.number, false AS sticky FROM slots s, LATERAL (
        SELECT number FROM (
        {_probe(False)}
        UNION ALL
        {_probe(True)}
        ) AS ring LIMIT :window) AS p
    UNION ALL
    (SELECT d.number, true FROM bindings b JOIN dids d ON d.number = b.did, geo
     WHERE b.number = :customer AND b.peer = :agent
       AND d.tenant_id = :tenant_id AND d.pool = :pool AND d.status = 'active'
       AND (NOT geo.only OR d.country = :country) AND d.number NOT IN (SELECT did FROM ruled))
),
loads AS (
    SELECT s.number, s.sticky,
           (SELECT coalesce(sum(l.sessions), 0) FROM did_load l WHERE l.did = s.number) AS load
    FROM sample s
),
-- The less loaded of the random candidates: concurrent requests draw different candidates, so they
-- do not all go to one DID, and the busiest DID stays close to the mean (the power of two choices).
pick AS (SELECT number FROM loads ORDER BY sticky DESC, load, random() LIMIT 1),
bound AS (
    INSERT INTO bindings (number, did, peer, session_id, ends_at)
    SELECT v.number, pick.number, v.peer, :session_id, :expires_at
    FROM pick, (VALUES (:customer, :agent), (:agent, :customer)) AS v(number, peer)
    ORDER BY v.number
    ON CONFLICT (number, did) DO UPDATE
        SET peer = excluded.peer, session_id = excluded.session_id, ends_at = excluded.ends_at
        WHERE bindings.ends_at <= :now
          AND (bindings.peer = excluded.peer OR bindings.ends_at <= :now - :cooloff::interval)
    RETURNING 1
),
created AS (
    INSERT INTO sessions (id, tenant_id, order_id, customer, agent, did, pool, created_at, expires_at,
                          record, max_call_minutes, max_calls, metadata)
    SELECT :session_id, :tenant_id, :order_id, :customer, :agent, pick.number, :pool, :now, :expires_at,
           :record, :max_call_minutes, :max_calls, :metadata FROM pick
    WHERE (SELECT count(*) FROM bound) = 2
      -- A share lock on the DID row: a concurrent retire (which locks the row for update) either
      -- waits for this session and sees it, or wins, and then this re-check of the status fails.
      AND EXISTS (SELECT 1 FROM dids d WHERE d.number = pick.number AND d.status = 'active' FOR KEY SHARE)
    ON CONFLICT (tenant_id, order_id, customer, agent) WHERE status = 'active' DO NOTHING
    RETURNING {SESSION}
)
SELECT (SELECT number FROM pick) AS picked, (SELECT count(*) FROM bound)::int AS bound, created.*
FROM (SELECT 1) AS one LEFT JOIN created ON true
""")

EXHAUSTION = Query(f"""
WITH geo AS ({_GEO}),
ruled AS (SELECT did, bool_or(ends_at > :now) AS busy FROM bindings WHERE {_RULES_OUT} GROUP BY did),
d AS (
    SELECT d.status, (geo.only AND d.country <> :country) AS foreign_country, r.busy
    FROM dids d CROSS JOIN geo LEFT JOIN ruled r ON r.did = d.number
    WHERE d.tenant_id = :tenant_id AND d.pool = :pool
)
SELECT count(*)::int AS pool_dids,
       count(*) FILTER (WHERE status <> 'active')::int AS not_active,
       count(*) FILTER (WHERE status = 'active' AND foreign_country)::int AS other_country,
       count(*) FILTER (WHERE status = 'active' AND NOT foreign_country AND busy)::int AS party_busy,
       count(*) FILTER (WHERE status = 'active' AND NOT foreign_country AND NOT busy)::int AS cooling_off
FROM d
""")

# A repeat of a create finds the pair's active session for the order. An earlier one past its expiry
# is marked expired here and now, so that it frees the unique key for the new session (and its
# session.closed event is written, as the sweeper would have).
FIND_REPEAT = f"""
WITH stale AS (
    UPDATE sessions SET status = 'expired', close_reason = 'ttl', closed_at = expires_at
    WHERE tenant_id = $1 AND order_id = $2 AND customer = $3 AND agent = $4
      AND status = 'active' AND expires_at <= $5
    RETURNING tenant_id, {session_json("sessions")} AS data
),
{emit_ctes("stale_events", "SELECT tenant_id, 'session.closed' AS type, data FROM stale", "$5::timestamptz")}
SELECT {SESSION} FROM sessions
WHERE tenant_id = $1 AND order_id = $2 AND customer = $3 AND agent = $4
  AND status = 'active' AND expires_at > $5
"""


async def find_repeat(
    conn: Conn, tenant_id: int, order_id: str, customer: str, agent: str, now: datetime
) -> Session | None:
    """The tenant's live session for this order and pair, if any."""
    return _session_or_none(await conn.fetchrow(FIND_REPEAT, tenant_id, order_id, customer, agent, now))


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """The inputs of one allocation attempt (the named parameters of ALLOCATE)."""

    tenant_id: int
    pool: str
    customer: str
    agent: str
    country: str
    now: datetime
    cooloff: timedelta
    tried: list[str]
    slot: float  # where on the ring of DID slots the first random choice probes
    sample: int  # how many random choices (the first at `slot`, the rest drawn by the database)
    window: int = 4  # eligible DIDs taken in slot order at each random choice
    session_id: UUID
    order_id: str
    expires_at: datetime
    record: bool
    max_call_minutes: int | None
    max_calls: int | None
    metadata: dict[str, Any]


class Attempt(msgspec.Struct, frozen=True):
    """What one attempt did: the DID it picked (None: nothing eligible), bindings made, the session if created."""

    picked: str | None
    bound: int
    session: Session | None


async def allocate(conn: Conn, a: Allocation) -> Attempt:
    """One allocation attempt in one statement."""
    row = await conn.fetchrow(ALLOCATE.sql, *ALLOCATE.args(msgspec.structs.asdict(a)))
    assert row is not None
    return Attempt(row["picked"], row["bound"], None if row["id"] is None else _session(row))


class Exhaustion(msgspec.Struct, frozen=True):
    """How many DIDs of a pool each rule rules out for a pair."""

    pool_dids: int
    not_active: int
    other_country: int
    party_busy: int
    cooling_off: int


async def exhaustion(conn: Conn, a: Allocation) -> Exhaustion:
    """Why a pool has no DID for a pair: counts of DIDs ruled out by each rule."""
    values = msgspec.structs.asdict(a)
    return msgspec.convert(await conn.fetchrow(EXHAUSTION.sql, *EXHAUSTION.args(values)), Exhaustion)


async def select_session(conn: Conn, tenant_id: int, session_id: UUID) -> Session | None:
    """One of the tenant's sessions."""
    row = await conn.fetchrow(f"SELECT {SESSION} FROM sessions WHERE id = $1 AND tenant_id = $2", session_id, tenant_id)
    return _session_or_none(row)


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
          AND ($3::text IS NULL OR customer = $3)
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
        customer,
        status,
        now,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_session(r) for r in rows]


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
    return _session_or_none(row)


async def close_session(
    conn: Conn, tenant_id: int, session_id: UUID, now: datetime, status: str, reason: str
) -> Session | None:
    """End a live session now and free its bindings; None when it is not live.

    Called in a transaction. The row lock comes first, in a statement of its own: a close that waited on a
    reassignment then frees the bindings that reassignment made (one statement's snapshot would miss them).
    """
    await conn.execute("SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2 FOR UPDATE", session_id, tenant_id)
    row = await conn.fetchrow(
        f"""
        WITH s AS (
            UPDATE sessions SET status = $4, close_reason = $5, closed_at = $3
            WHERE id = $1 AND tenant_id = $2 AND status = 'active' AND expires_at > $3 RETURNING *),
        b AS (UPDATE bindings SET ends_at = $3 FROM s WHERE bindings.session_id = s.id AND bindings.ends_at > $3)
        SELECT {SESSION} FROM s
        """,
        session_id,
        tenant_id,
        now,
        status,
        reason,
    )
    return _session_or_none(row)


_EXPIRABLE = """($1::bigint IS NULL OR tenant_id = $1) AND status = 'active' AND expires_at > $2
    AND ($3::text IS NULL OR order_id = $3) AND ($4::text IS NULL OR customer = $4)
    AND ($5::text IS NULL OR agent = $5) AND ($6::text IS NULL OR did = $6)"""


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
    args = (tenant_id, now, order_id, customer, agent, masked_number)
    await conn.execute(f"SELECT 1 FROM sessions WHERE {_EXPIRABLE} FOR UPDATE", *args)
    rows = await conn.fetch(
        f"""
        WITH s AS (
            UPDATE sessions SET status = 'expired', close_reason = 'expired_by_ops', closed_at = $2
            WHERE {_EXPIRABLE}
            RETURNING *),
        b AS (UPDATE bindings SET ends_at = $2 FROM s WHERE bindings.session_id = s.id AND bindings.ends_at > $2)
        SELECT {SESSION} FROM s
        """,
        *args,
    )
    return [_session(r) for r in rows]


SWEEP_EXPIRED = f"""
WITH due AS (
    SELECT id FROM sessions WHERE status = 'active' AND expires_at <= $1
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
UPDATE sessions s SET status = 'expired', close_reason = 'ttl', closed_at = s.expires_at
FROM due WHERE s.id = due.id
RETURNING {SESSION.replace("did AS", "s.did AS").replace("id, order_id", "s.id, order_id", 1)}
"""


async def sweep_expired(conn: Conn, now: datetime, batch: int) -> list[Session]:
    """Mark one batch of sessions past their expiry as expired (ttl); return them."""
    return [_session(r) for r in await conn.fetch(SWEEP_EXPIRED, now, batch)]


async def close_if_max_calls(conn: Conn, session_id: UUID, now: datetime) -> Session | None:
    """Close the session (max_calls_reached) when its completed calls reached max_calls; the closed session."""
    row = await conn.fetchrow(
        f"""
        WITH s AS (
            UPDATE sessions SET status = 'closed', close_reason = 'max_calls_reached', closed_at = $2
            WHERE id = $1 AND status = 'active' AND expires_at > $2 AND max_calls IS NOT NULL
              AND (SELECT count(*) FROM calls WHERE session_id = $1 AND status = 'completed') >= max_calls
            RETURNING *),
        b AS (UPDATE bindings SET ends_at = $2 FROM s WHERE bindings.session_id = s.id AND bindings.ends_at > $2)
        SELECT {SESSION} FROM s
        """,
        session_id,
        now,
    )
    return _session_or_none(row)


class RouteRow(msgspec.Struct, frozen=True):
    """The live session on a DID that has a caller as a party, and the other party."""

    id: UUID
    other: str


async def select_route(conn: Conn, did: str, caller: str, now: datetime) -> RouteRow | None:
    """The live session on a DID that has the caller as a party."""
    row = await conn.fetchrow(
        """
        SELECT id, CASE WHEN customer = $2 THEN agent ELSE customer END AS other FROM sessions
        WHERE did = $1 AND (customer = $2 OR agent = $2) AND status = 'active' AND expires_at > $3
        """,
        did,
        caller,
        now,
    )
    return None if row is None else msgspec.convert(row, RouteRow)


class PoolUse(msgspec.Struct, frozen=True, kw_only=True):
    """Per tenant and pool: DIDs by status, active sessions, and the two busiest parties' active sessions."""

    tenant_id: int
    tenant: str
    pool: str
    dids: int
    active_dids: int
    active_sessions: int
    busiest_party: int
    second_party: int


# A pool exists once it has a DID or a settings row. The parties' loads come from the pool's live bindings
# only, found per DID through bindings_load (did, ends_at): the cost is one index range per DID plus one
# row per live binding of the pool (about 2 x its live sessions), independent of the rest of the table.
POOL_STATS = """
WITH d AS (
    SELECT tenant_id, pool, count(*)::int AS dids, count(*) FILTER (WHERE status = 'active')::int AS active_dids
    FROM dids WHERE ($1::bigint IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR pool = $3)
    GROUP BY tenant_id, pool),
named AS (
    SELECT tenant_id, pool FROM d
    UNION
    SELECT tenant_id, pool FROM pool_settings
    WHERE ($1::bigint IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR pool = $3)),
s AS (
    SELECT tenant_id, pool, count(*)::int AS active_sessions FROM sessions
    WHERE ($1::bigint IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR pool = $3)
      AND status = 'active' AND expires_at > $2
    GROUP BY tenant_id, pool),
p AS (
    -- Per pool, the live-session counts of its two busiest numbers: its DIDs (dids_list), each DID's live
    -- bindings (bindings_load range), counted per number, and a top-2 heap rather than a full sort.
    SELECT named.tenant_id, named.pool,
           (SELECT array_agg(n ORDER BY n DESC) FROM (
                SELECT count(*)::int AS n FROM dids dd JOIN bindings b ON b.did = dd.number AND b.ends_at > $2
                WHERE dd.tenant_id = named.tenant_id AND dd.pool = named.pool
                GROUP BY b.number ORDER BY n DESC LIMIT 2) top) AS top
    FROM named)
SELECT named.tenant_id, t.name AS tenant, named.pool, coalesce(d.dids, 0) AS dids,
       coalesce(d.active_dids, 0) AS active_dids, coalesce(s.active_sessions, 0) AS active_sessions,
       coalesce(p.top[1], 0) AS busiest_party, coalesce(p.top[2], 0) AS second_party
FROM named JOIN tenants t ON t.id = named.tenant_id
LEFT JOIN d USING (tenant_id, pool) LEFT JOIN s USING (tenant_id, pool) LEFT JOIN p USING (tenant_id, pool)
ORDER BY t.name, named.pool
"""


async def pool_stats(conn: Conn, tenant_id: int | None, now: datetime, pool: str | None = None) -> list[PoolUse]:
    """Per tenant and pool (or one pool): DIDs by status, active sessions, the two busiest parties' sessions."""
    return [msgspec.convert(r, PoolUse) for r in await conn.fetch(POOL_STATS, tenant_id, now, pool)]


# --- Reassignment: a session's party changes, in place on its DID or onto another one (issue 14). ---


async def lock_session(conn: Conn, tenant_id: int, session_id: UUID) -> Session | None:
    """One of the tenant's sessions, its row locked until the transaction ends (calls and closes wait)."""
    row = await conn.fetchrow(
        f"SELECT {SESSION} FROM sessions WHERE id = $1 AND tenant_id = $2 FOR UPDATE", session_id, tenant_id
    )
    return _session_or_none(row)


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
    INSERT INTO bindings (number, did, peer, session_id, ends_at)
    SELECT n, :did, p, :session_id, :ends_at FROM unnest(:numbers::text[], :peers::text[]) AS u(n, p)
    ORDER BY n
    ON CONFLICT (number, did) DO UPDATE
        SET peer = excluded.peer, session_id = excluded.session_id, ends_at = excluded.ends_at
        WHERE bindings.ends_at <= :now
          AND (bindings.peer = excluded.peer OR bindings.ends_at <= :now - :cooloff::interval)
    RETURNING 1)
SELECT count(*)::int FROM nb
""")


async def bind_new(
    conn: Conn,
    *,
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
        "numbers": numbers,
        "peers": peers,
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
    conn: Conn, did: str, numbers: list[str], peers: list[str], now: datetime, cooloff: timedelta
) -> list[Blocker]:
    """Which of these numbers may not be bound to the DID with these peers, and why."""
    rows = await conn.fetch(
        """
        SELECT b.number, b.ends_at > $3 AS live FROM bindings b
        JOIN unnest($2::text[], $5::text[]) AS u(n, p) ON b.number = u.n
        WHERE b.did = $1 AND (b.ends_at > $3 OR (b.ends_at > $3 - $4::interval AND b.peer <> u.p))
        """,
        did,
        numbers,
        now,
        cooloff,
        peers,
    )
    return [msgspec.convert(r, Blocker) for r in rows]


async def drop_placeholder(conn: Conn, placeholder: UUID) -> None:
    """Delete the session row an allocation made for a reassignment (its bindings are re-pointed next)."""
    await conn.execute("DELETE FROM sessions WHERE id = $1", placeholder)


# Finish a reassignment: end the replaced parties' bindings on the old DID (cool-off applies to them from
# now), point the kept and new bindings at the session with their new peers, record the history (numbers
# masked) and change the session row. Rows touched are found by primary key.
FINISH_REASSIGN = Query(f"""
WITH ended AS (
    UPDATE bindings SET ends_at = :now
    WHERE number = ANY(:ended::text[]) AND did = :old_did AND session_id = :session_id AND ends_at > :now),
kept AS (
    UPDATE bindings SET peer = v.peer, session_id = :session_id
    FROM unnest(:numbers::text[], :peers::text[]) AS v(number, peer)
    WHERE bindings.number = v.number AND bindings.did = :new_did
      AND bindings.session_id IN (:session_id, :placeholder)),
history AS (
    INSERT INTO session_changes (session_id, at, party, old_number, new_number, old_did, new_did)
    SELECT :session_id, :now, c.party, mask_number(c.old), mask_number(c.new), :old_did, :new_did
    FROM unnest(:parties::text[], :olds::text[], :news::text[]) AS c(party, old, new))
UPDATE sessions SET customer = :customer, agent = :agent, did = :new_did
WHERE id = :session_id
RETURNING {SESSION}
""")


async def finish_reassign(
    conn: Conn,
    *,
    session_id: UUID,
    placeholder: UUID,
    customer: str,
    agent: str,
    old_did: str,
    new_did: str,
    ended: list[str],
    parties: list[str],
    olds: list[str],
    news: list[str],
    now: datetime,
) -> Session | None:
    """Apply a reassignment whose new bindings are made; None when another live session of the same order
    took this pair meanwhile (the unique key refused it)."""
    values = {
        "session_id": session_id,
        "placeholder": placeholder,
        "customer": customer,
        "agent": agent,
        "old_did": old_did,
        "new_did": new_did,
        "ended": ended,
        "numbers": [customer, agent],
        "peers": [agent, customer],
        "parties": parties,
        "olds": olds,
        "news": news,
        "now": now,
    }
    try:
        row = await conn.fetchrow(FINISH_REASSIGN.sql, *FINISH_REASSIGN.args(values))
    except asyncpg.UniqueViolationError:
        return None
    return _session_or_none(row)


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
