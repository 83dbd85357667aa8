"""SQL for creating a session: the repeat check, the one-statement allocation (allocate.sql), why a pool is full."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec

from service.db import Conn, load
from service.db.events import emit_ctes
from service.db.sessions.end import end_sessions
from service.db.sessions.row import SESSION, session, session_or_none
from service.models import Session

HERE = Path(__file__).parent
RULES = (HERE / "rules.sql").read_text().strip()  # geo-match, no crossed lines and cool-off, in allocate and exhaustion
ALLOCATE = load(HERE / "allocate.sql", rules=RULES, session=SESSION)
# Why a pool has no DID for a pair, counted per rule (contract rules 1 to 3), for pool_exhausted's details.
EXHAUSTION = load(HERE / "exhaustion.sql", rules=RULES)

# A repeat of a create finds the pair's active session for the order. An earlier one past its expiry
# is ended (ttl) here and now, so that it frees the unique key for the new session, with its
# session.closed event written as the sweeper would have.
FIND_REPEAT = f"""
WITH {
    end_sessions(
        "stale",
        where="s.tenant_id = $1 AND s.order_id = $2 AND s.customer = $3 AND s.agent = $4 AND s.expires_at <= $5",
        status="expired",
        reason="ttl",
        closed_at="s.expires_at",
        now="$5",
    )
},
{emit_ctes("stale_events", "SELECT tenant_id, 'session.closed' AS type, data FROM stale", "$5::timestamptz")}
SELECT {SESSION} FROM sessions
WHERE tenant_id = $1 AND order_id = $2 AND customer = $3 AND agent = $4
  AND status = 'active' AND expires_at > $5
"""


async def find_repeat(
    conn: Conn, tenant_id: int, order_id: str, customer: str, agent: str, now: datetime
) -> Session | None:
    """The tenant's live session for this order and pair, if any."""
    return session_or_none(await conn.fetchrow(FIND_REPEAT, tenant_id, order_id, customer, agent, now))


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
    row = await conn.fetchrow(ALLOCATE.sql, *ALLOCATE.args(msgspec.structs.asdict(a)))
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
    values = msgspec.structs.asdict(a)
    return msgspec.convert(await conn.fetchrow(EXHAUSTION.sql, *EXHAUSTION.args(values)), Exhaustion)
