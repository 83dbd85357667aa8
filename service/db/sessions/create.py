"""SQL for creating a session: the repeat check, the one-statement allocation (allocate.sql), why a pool is full."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from service.db import Conn, load, sealed
from service.db.events import emit_ctes
from service.db.sessions.end import end_sessions
from service.db.sessions.row import FIELDS, SESSION, as_json, session, session_or_none
from service.models import Session

HERE = Path(__file__).parent
RULES = (HERE / "rules.sql").read_text().strip()  # geo-match, no crossed lines and cool-off, in allocate and exhaustion
_ALLOCATE_SQL = HERE / "allocate.sql"
# A reassignment's move: the allocation alone (its caller writes the events).
ALLOCATE = load(
    _ALLOCATE_SQL,
    rules=RULES,
    session=SESSION,
    repeat="",
    guard="true",
    returning="",
    finish="""SELECT (SELECT number FROM pick) AS picked, (SELECT count(*) FROM bound)::int AS bound, created.*
FROM (SELECT 1) AS one LEFT JOIN created ON true""",
)

# The SQLSTATE of lost_race() (schema.sql): an attempt that picked a DID but made no session.
LOST_RACE = "MS001"
_FIELDS = ", ".join(("tenant_id", *FIELDS))
# A create in one statement (one round trip, atomic without a transaction): the repeat check, the
# allocation and its session.created event (DESIGN rule 8). An attempt that lost a race fails as a whole
# (lost_race), so nothing it bound stays; a repeat past its expiry that the sweeper has not ended yet
# (`stale`) makes no allocation: the caller ends it (FIND_REPEAT) and tries again.
CREATE = load(
    _ALLOCATE_SQL,
    rules=RULES,
    session=SESSION,
    repeat=f"""-- A repeat (the same order and pair while its session is active) finds that session; none is allocated.
repeat AS (
    SELECT {SESSION}, expires_at <= :now AS stale FROM sessions
    WHERE tenant_id = :tenant_id AND order_id = :order_id AND customer_ix = :customer_ix
      AND agent_ix = :agent_ix AND status = 'active'),""",
    guard="NOT EXISTS (SELECT 1 FROM repeat)",
    returning=f", {as_json('sessions')} AS data",
    finish=f""",
-- DESIGN rule 8: session.created with the session (the CTEs `emitted` and `emitted_deliveries`).
{emit_ctes("emitted", "SELECT tenant_id, 'session.created' AS type, data FROM created", ":now")},
-- A DID picked but no session made (a binding or the order's pair taken meanwhile): lost_race() fails the
-- whole statement, so the bindings it made are undone with it, and the caller tries again without the DID.
raced AS (SELECT lost_race(pick.number) FROM pick WHERE NOT EXISTS (SELECT 1 FROM created))
SELECT (SELECT number FROM pick) AS picked, (SELECT count(*) FROM raced)::int AS raced,
       (SELECT stale FROM repeat) AS stale, s.*
FROM (SELECT 1) AS one LEFT JOIN (
    SELECT false AS repeated, {_FIELDS} FROM created UNION ALL SELECT true, {_FIELDS} FROM repeat) AS s ON true""",
)

# Why a pool has no DID for a pair, counted per rule (contract rules 1 to 3), for pool_exhausted's details.
EXHAUSTION = load(HERE / "exhaustion.sql", rules=RULES)

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


class Created(msgspec.Struct, frozen=True):
    """What a one-statement create did: the new session, the live repeat, a stale repeat, a lost race, or
    nothing (no DID of the pool eligible)."""

    session: Session | None = None
    repeated: bool = False
    stale: bool = False
    lost: str | None = None  # the DID a lost race picked


async def create(conn: Conn, a: Allocation) -> Created:
    """One create attempt in one statement (CREATE); in a caller's transaction, under a savepoint."""
    try:
        if conn.is_in_transaction():
            async with conn.transaction():
                row = await conn.fetchrow(CREATE.sql, *CREATE.args(allocation_values(a)))
        else:
            row = await conn.fetchrow(CREATE.sql, *CREATE.args(allocation_values(a)))
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == LOST_RACE:
            return Created(lost=str(exc.detail))
        raise
    assert row is not None
    if row["stale"]:
        return Created(stale=True)
    if row["id"] is None:
        return Created()
    return Created(session(row), repeated=row["repeated"])


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
