"""SQL for creating a session: the repeat check, the one-statement allocation (allocate.sql), why a pool is full."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec

from service.db import Conn, Query, load, sealed
from service.db.events import emit_ctes
from service.db.sessions.end import end_sessions
from service.db.sessions.row import SESSION, session, session_or_none
from service.models import Session

ALLOCATE = load(Path(__file__).with_name("allocate.sql"), session=SESSION)

# Why a pool has no DID for a pair, counted per rule (contract rules 1 to 3), for pool_exhausted's details.
# Its geo and ruled CTEs must say what allocate.sql's say (tests/test_broker_rules.py checks the counts).
EXHAUSTION = Query("""
WITH geo AS (
    SELECT EXISTS (SELECT 1 FROM dids
                   WHERE tenant_id = :tenant_id AND pool = :pool AND status = 'active' AND country = :country) AS only),
ruled AS (
    SELECT did, bool_or(ends_at > :now) AS busy FROM bindings
    WHERE number_ix IN (:customer_ix, :agent_ix)
      AND (ends_at > :now OR (ends_at > :now - :cooloff::interval AND peer_ix NOT IN (:customer_ix, :agent_ix)))
    GROUP BY did),
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
# is ended (ttl) here and now, so that it frees the unique key for the new session, with its
# session.closed event written as the sweeper would have.
FIND_REPEAT = f"""
WITH {
    end_sessions(
        "stale",
        where="s.tenant_id = $1 AND s.order_id = $2 AND s.customer_ix = $3 AND s.agent_ix = $4 AND s.expires_at <= $5",
        status="expired",
        reason="ttl",
        closed_at="s.expires_at",
        now="$5",
    )
},
{emit_ctes("stale_events", "SELECT tenant_id, 'session.closed' AS type, data FROM stale", "$5::timestamptz")}
SELECT {SESSION} FROM sessions
WHERE tenant_id = $1 AND order_id = $2 AND customer_ix = $3 AND agent_ix = $4
  AND status = 'active' AND expires_at > $5
"""


async def find_repeat(
    conn: Conn, tenant_id: int, order_id: str, customer: str, agent: str, now: datetime
) -> Session | None:
    """The tenant's live session for this order and pair, if any."""
    customer_ix, agent_ix = sealed.indexes(tenant_id, [customer, agent])
    return session_or_none(await conn.fetchrow(FIND_REPEAT, tenant_id, order_id, customer_ix, agent_ix, now))


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """The inputs of one allocation attempt (the named parameters of allocate.sql)."""

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
    row = await conn.fetchrow(ALLOCATE.sql, *ALLOCATE.args(allocation_values(a)))
    assert row is not None
    return Attempt(row["picked"], row["bound"], None if row["id"] is None else session(row))


class Exhaustion(msgspec.Struct, frozen=True):
    """How many DIDs of a pool each rule rules out for a pair."""

    pool_dids: int
    not_active: int
    other_country: int
    party_busy: int
    cooling_off: int


async def exhaustion(conn: Conn, a: Allocation) -> Exhaustion:
    """Why a pool has no DID for a pair: counts of DIDs ruled out by each rule."""
    return msgspec.convert(await conn.fetchrow(EXHAUSTION.sql, *EXHAUSTION.args(allocation_values(a))), Exhaustion)


def allocation_values(a: Allocation) -> dict[str, Any]:
    """The attempt's named parameters, each party number as its ciphertext, blind index and masked form."""
    values = msgspec.structs.asdict(a)
    for party in sealed.PARTIES:
        ct, ix, masked = sealed.party(a.tenant_id, party, values.pop(party))
        values |= {f"{party}_ct": ct, f"{party}_ix": ix, f"{party}_mask": masked}
    return values
