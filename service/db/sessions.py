"""SQL for sessions and their DID bindings, including the one-statement allocation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from service.db import Conn

# Which DIDs the two numbers rule out: the ones where either is bound now (no crossed lines), and the
# ones where either ended a session with somebody else less than the cool-off ago. $3 customer,
# $4 agent, $6 now, $7 cool-off.
_RULED = """
    SELECT did FROM bindings
    WHERE number IN ($3, $4)
      AND (ends_at > $6 OR (ends_at > $6 - $7::interval AND peer NOT IN ($3, $4)))
"""

# Geo-match: when the pool has an active DID in the customer's country ($5), only those qualify.
_GEO = """
    SELECT EXISTS (SELECT 1 FROM dids
                   WHERE tenant_id = $1 AND pool = $2 AND status = 'active' AND country = $5) AS only
"""

# One statement per attempt: sample a few eligible DIDs around a random slot ($9, $10 per side), add the
# pair's previous DID (sticky), pick the sticky one or a lightly loaded one, bind both numbers to it and
# insert the session. The binding upsert only takes over a row that has ended, and only after the
# cool-off unless the peer is the same: so the database itself enforces rules 1 and 3 whatever the
# candidate query saw. `bound` < 2 or no session row means the attempt lost a race and must roll back.
ALLOCATE = f"""
WITH geo AS ({_GEO}),
ruled AS ({_RULED} UNION ALL SELECT unnest($8::text[])),
sample AS (
    (SELECT d.number, false AS sticky FROM dids d, geo
     WHERE d.tenant_id = $1 AND d.pool = $2 AND d.status = 'active' AND d.slot >= $9
       AND (NOT geo.only OR d.country = $5) AND d.number NOT IN (SELECT did FROM ruled)
     ORDER BY d.slot LIMIT $10)
    UNION ALL
    (SELECT d.number, false FROM dids d, geo
     WHERE d.tenant_id = $1 AND d.pool = $2 AND d.status = 'active' AND d.slot < $9
       AND (NOT geo.only OR d.country = $5) AND d.number NOT IN (SELECT did FROM ruled)
     ORDER BY d.slot LIMIT $10)
    UNION ALL
    (SELECT d.number, true FROM bindings b JOIN dids d ON d.number = b.did, geo
     WHERE b.number = $3 AND b.peer = $4
       AND d.tenant_id = $1 AND d.pool = $2 AND d.status = 'active'
       AND (NOT geo.only OR d.country = $5) AND d.number NOT IN (SELECT did FROM ruled))
),
loads AS (
    SELECT s.number, s.sticky,
           (SELECT count(*) FROM bindings b WHERE b.did = s.number AND b.ends_at > $6) / 2 AS load
    FROM sample s
),
-- Weighted random choice (an exponential race), favouring the least loaded strongly but not
-- absolutely: concurrent requests see the same committed loads, and a strict minimum would send
-- them all to one DID.
pick AS (
    SELECT number FROM loads
    ORDER BY sticky DESC, -ln(1 - random()) / power((SELECT max(load) FROM loads) - load + 1, 2)
    LIMIT 1
),
bound AS (
    INSERT INTO bindings (number, did, peer, session_id, ends_at)
    SELECT v.number, pick.number, v.peer, $11, $13
    FROM pick, (VALUES ($3, $4), ($4, $3)) AS v(number, peer)
    ORDER BY v.number
    ON CONFLICT (number, did) DO UPDATE
        SET peer = excluded.peer, session_id = excluded.session_id, ends_at = excluded.ends_at
        WHERE bindings.ends_at <= $6
          AND (bindings.peer = excluded.peer OR bindings.ends_at <= $6 - $7::interval)
    RETURNING 1
),
created AS (
    INSERT INTO sessions (id, tenant_id, order_id, customer, agent, did, pool, created_at, expires_at,
                          record, max_call_minutes, max_calls, metadata)
    SELECT $11, $1, $12, $3, $4, pick.number, $2, $6, $13, $14, $15, $16, $17 FROM pick
    WHERE (SELECT count(*) FROM bound) = 2
      -- A share lock on the DID row: a concurrent retire (which locks the row for update) either
      -- waits for this session and sees it, or wins, and then this re-check of the status fails.
      AND EXISTS (SELECT 1 FROM dids d WHERE d.number = pick.number AND d.status = 'active' FOR KEY SHARE)
    ON CONFLICT (tenant_id, order_id, customer, agent) WHERE status = 'active' DO NOTHING
    RETURNING *
)
SELECT (SELECT number FROM pick) AS picked, (SELECT count(*) FROM bound)::int AS bound, created.*
FROM (SELECT 1) AS one LEFT JOIN created ON true
"""

EXHAUSTION = f"""
WITH geo AS ({_GEO}),
ruled AS (
    SELECT did, bool_or(ends_at > $6) AS busy FROM bindings
    WHERE number IN ($3, $4)
      AND (ends_at > $6 OR (ends_at > $6 - $7::interval AND peer NOT IN ($3, $4)))
    GROUP BY did
),
d AS (
    SELECT d.status, (geo.only AND d.country <> $5) AS foreign_country, r.busy
    FROM dids d CROSS JOIN geo LEFT JOIN ruled r ON r.did = d.number
    WHERE d.tenant_id = $1 AND d.pool = $2
)
SELECT count(*)::int AS pool_dids,
       count(*) FILTER (WHERE status <> 'active')::int AS not_active,
       count(*) FILTER (WHERE status = 'active' AND foreign_country)::int AS other_country,
       count(*) FILTER (WHERE status = 'active' AND NOT foreign_country AND busy)::int AS party_busy,
       count(*) FILTER (WHERE status = 'active' AND NOT foreign_country AND NOT busy)::int AS cooling_off
FROM d
"""

# A repeat of a create finds the pair's active session for the order. An earlier one past its expiry
# is marked expired here and now, so that it frees the unique key for the new session.
FIND_REPEAT = """
WITH stale AS (
    UPDATE sessions SET status = 'expired', close_reason = 'ttl', closed_at = expires_at
    WHERE tenant_id = $1 AND order_id = $2 AND customer = $3 AND agent = $4
      AND status = 'active' AND expires_at <= $5
)
SELECT * FROM sessions
WHERE tenant_id = $1 AND order_id = $2 AND customer = $3 AND agent = $4
  AND status = 'active' AND expires_at > $5
"""


async def find_repeat(
    conn: Conn, tenant_id: int, order_id: str, customer: str, agent: str, now: datetime
) -> asyncpg.Record | None:
    """The tenant's live session for this order and pair, if any."""
    row: asyncpg.Record | None = await conn.fetchrow(FIND_REPEAT, tenant_id, order_id, customer, agent, now)
    return row


async def allocate(
    conn: Conn,
    *,
    tenant_id: int,
    pool: str,
    customer: str,
    agent: str,
    country: str,
    now: datetime,
    cooloff: timedelta,
    tried: list[str],
    slot: float,
    sample: int,
    session_id: UUID,
    order_id: str,
    expires_at: datetime,
    record: bool,
    max_call_minutes: int | None,
    max_calls: int | None,
    metadata: dict[str, Any],
) -> asyncpg.Record:
    """One allocation attempt: `picked` (None: nothing eligible), `bound`, and the session if created."""
    row: asyncpg.Record | None = await conn.fetchrow(
        ALLOCATE,
        tenant_id,
        pool,
        customer,
        agent,
        country,
        now,
        cooloff,
        tried,
        slot,
        sample,
        session_id,
        order_id,
        expires_at,
        record,
        max_call_minutes,
        max_calls,
        metadata,
    )
    assert row is not None
    return row


async def exhaustion(
    conn: Conn,
    tenant_id: int,
    pool: str,
    customer: str,
    agent: str,
    country: str,
    now: datetime,
    cooloff: timedelta,
) -> asyncpg.Record:
    """Why a pool has no DID for a pair: counts of DIDs ruled out by each rule."""
    row: asyncpg.Record | None = await conn.fetchrow(
        EXHAUSTION, tenant_id, pool, customer, agent, country, now, cooloff
    )
    assert row is not None
    return row


async def select_session(conn: Conn, tenant_id: int, session_id: UUID) -> asyncpg.Record | None:
    """One of the tenant's sessions."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM sessions WHERE id = $1 AND tenant_id = $2", session_id, tenant_id
    )
    return row


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
) -> list[asyncpg.Record]:
    """A page of the tenant's sessions, newest first, after a keyset position."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT * FROM sessions
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
    return rows


async def update_expiry(
    conn: Conn, tenant_id: int, session_id: UUID, now: datetime, expires_at: datetime
) -> asyncpg.Record | None:
    """Move a live session's expiry and its bindings'; None when it is not live."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        WITH s AS (
            UPDATE sessions SET expires_at = $4
            WHERE id = $1 AND tenant_id = $2 AND status = 'active' AND expires_at > $3 RETURNING *),
        b AS (UPDATE bindings SET ends_at = $4 FROM s WHERE bindings.session_id = s.id)
        SELECT * FROM s
        """,
        session_id,
        tenant_id,
        now,
        expires_at,
    )
    return row


async def close_session(
    conn: Conn, tenant_id: int, session_id: UUID, now: datetime, status: str, reason: str
) -> asyncpg.Record | None:
    """End a live session now and free its bindings; None when it is not live."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        WITH s AS (
            UPDATE sessions SET status = $4, close_reason = $5, closed_at = $3
            WHERE id = $1 AND tenant_id = $2 AND status = 'active' AND expires_at > $3 RETURNING *),
        b AS (UPDATE bindings SET ends_at = $3 FROM s WHERE bindings.session_id = s.id AND bindings.ends_at > $3)
        SELECT * FROM s
        """,
        session_id,
        tenant_id,
        now,
        status,
        reason,
    )
    return row


async def expire_matching(
    conn: Conn,
    tenant_id: int | None,
    now: datetime,
    *,
    order_id: str | None,
    customer: str | None,
    agent: str | None,
    masked_number: str | None,
) -> int:
    """Expire (by ops) every live session matching all given filters; return how many."""
    count: int = await conn.fetchval(
        """
        WITH s AS (
            UPDATE sessions SET status = 'expired', close_reason = 'expired_by_ops', closed_at = $2
            WHERE ($1::bigint IS NULL OR tenant_id = $1) AND status = 'active' AND expires_at > $2
              AND ($3::text IS NULL OR order_id = $3) AND ($4::text IS NULL OR customer = $4)
              AND ($5::text IS NULL OR agent = $5) AND ($6::text IS NULL OR did = $6)
            RETURNING id),
        b AS (UPDATE bindings SET ends_at = $2 FROM s WHERE bindings.session_id = s.id AND bindings.ends_at > $2)
        SELECT count(*)::int FROM s
        """,
        tenant_id,
        now,
        order_id,
        customer,
        agent,
        masked_number,
    )
    return count


SWEEP_EXPIRED = """
WITH due AS (
    SELECT id FROM sessions WHERE status = 'active' AND expires_at <= $1
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
UPDATE sessions s SET status = 'expired', close_reason = 'ttl', closed_at = s.expires_at
FROM due WHERE s.id = due.id
RETURNING s.id
"""


async def sweep_expired(conn: Conn, now: datetime, batch: int) -> list[UUID]:
    """Mark one batch of sessions past their expiry as expired (ttl); return their ids."""
    return [r["id"] for r in await conn.fetch(SWEEP_EXPIRED, now, batch)]


async def pool_stats(conn: Conn, tenant_id: int | None, now: datetime) -> list[asyncpg.Record]:
    """Per tenant and pool: DIDs by status, active sessions, and the busiest party's active sessions."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        WITH d AS (
            SELECT tenant_id, pool, count(*)::int AS dids,
                   count(*) FILTER (WHERE status = 'active')::int AS active_dids
            FROM dids WHERE $1::bigint IS NULL OR tenant_id = $1 GROUP BY tenant_id, pool),
        s AS (
            SELECT tenant_id, pool, count(*)::int AS active_sessions FROM sessions
            WHERE ($1::bigint IS NULL OR tenant_id = $1) AND status = 'active' AND expires_at > $2
            GROUP BY tenant_id, pool),
        p AS (
            SELECT tenant_id, pool, max(n)::int AS busiest_party FROM (
                SELECT d.tenant_id, d.pool, b.number, count(*) AS n
                FROM bindings b JOIN dids d ON d.number = b.did
                WHERE ($1::bigint IS NULL OR d.tenant_id = $1) AND b.ends_at > $2
                GROUP BY d.tenant_id, d.pool, b.number) x
            GROUP BY tenant_id, pool)
        SELECT d.tenant_id, t.name AS tenant, d.pool, d.dids, d.active_dids,
               coalesce(s.active_sessions, 0) AS active_sessions, coalesce(p.busiest_party, 0) AS busiest_party
        FROM d JOIN tenants t ON t.id = d.tenant_id
        LEFT JOIN s USING (tenant_id, pool) LEFT JOIN p USING (tenant_id, pool)
        ORDER BY t.name, d.pool
        """,
        tenant_id,
        now,
    )
    return rows
