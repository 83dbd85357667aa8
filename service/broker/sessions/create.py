"""Creating a session: a repeat finds the live one, else a DID is allocated by the broker's rules in one statement."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

import msgspec

from service import metrics
from service.broker.bodies import CreateSession
from service.broker.errors import ConflictingRepeat, InvalidRequest, PoolExhausted
from service.broker.phones import normalize, parse_with_region
from service.broker.sessions.base import Clock, Rules
from service.db import Conn
from service.db import pools as pools_q
from service.db import sessions as q
from service.models import Session

MAX_METADATA_BYTES = 4096
# Random eligible DIDs drawn per attempt; the less loaded wins (the power of two choices), which keeps the
# busiest DID close to the mean while each draw is one index probe, whatever the pool or its DIDs hold.
CHOICES = 2
# Eligible DIDs looked at after each draw: one alone favours DIDs after gaps in the pool's order.
WINDOW = 4


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """Who a DID is wanted for, and the session row an allocation makes there (new, or one moving DID)."""

    tenant_id: int
    pool: str
    customer: str
    agent: str
    country: str
    order_id: str
    expires_at: datetime
    record: bool
    max_call_minutes: int | None
    max_calls: int | None
    metadata: dict[str, Any]


def allocation(place: Placement, now: datetime, rules: Rules, tried: list[str]) -> q.Allocation:
    """One allocation attempt's inputs (allocate.sql's parameters): two random choices and the sticky DID."""
    return q.Allocation(
        **msgspec.structs.asdict(place),
        now=now,
        cooloff=timedelta(seconds=rules.cooloff_seconds),
        tried=tried,
        slot=random.random(),
        sample=CHOICES,
        window=WINDOW,
        session_id=uuid.uuid4(),
    )


class LostRace(Exception):
    """An allocation attempt lost its DID to a concurrent request: roll back, retry without that DID."""


async def create_session(
    conn: Conn, tenant_id: int, body: CreateSession, rules: Rules, clock: Clock
) -> tuple[Session, bool]:
    """Create a session on a DID the rules allow; (session, True), or (the live one, False) on a repeat."""
    customer, country = parse_with_region(body.customer, "customer")
    agent = normalize(body.agent, "agent")
    if customer == agent:
        raise InvalidRequest("`agent` must differ from `customer`.", field="agent")
    if len(msgspec.json.encode(body.metadata)) > MAX_METADATA_BYTES:
        raise InvalidRequest("`metadata` must be at most 4 KiB of JSON.", field="metadata")
    ttl = timedelta(seconds=body.ttl_seconds or rules.default_ttl_seconds)
    tried: list[str] = []
    # Each attempt is one statement (atomic on its own). One that lost a race fails whole and goes again
    # without the DID it lost (the loop ends after at most one attempt per DID of the pool), so "exhausted"
    # is only said when true (DESIGN rule 1); one that lost to an identical request finds its session as a
    # repeat.
    while True:
        now = clock()
        place = Placement(
            tenant_id=tenant_id,
            pool=body.pool,
            customer=customer,
            agent=agent,
            country=country,
            order_id=body.order_id,
            expires_at=now + ttl,
            record=body.record,
            max_call_minutes=body.max_call_minutes,
            max_calls=body.max_calls,
            metadata=body.metadata,
        )
        try:
            return await _create_once(conn, body, place, rules, tried, now)
        except LostRace as lost:
            # The lost attempt's bindings went with its statement; go again without that DID.
            tried.append(lost.args[0])
        except _Stale:
            # The order's pair has a session past its expiry that the sweeper has not ended yet: end it
            # now (with its session.closed event), then go again.
            async with conn.transaction():
                await q.find_repeat(conn, tenant_id, body.order_id, customer, agent, now)
        except PoolExhausted:
            # Counted after the attempt rolled back, for the console's "refused in the last hour".
            await pools_q.count_refusal(conn, tenant_id, body.pool, now)
            raise


class _Stale(Exception):
    """The order's pair has an active session past its expiry: it must be ended before a new one is made."""


async def _create_once(
    conn: Conn, body: CreateSession, place: Placement, rules: Rules, tried: list[str], now: datetime
) -> tuple[Session, bool]:
    """One attempt in one statement (the repeat check, the allocation and session.created, DESIGN rule 8):
    the session and whether it is new; LostRace or _Stale when it made nothing."""
    request = allocation(place, now, rules, tried)
    made = await q.create(conn, request)
    if made.lost is not None:
        raise LostRace(made.lost)
    if made.stale:
        raise _Stale
    if made.session is not None and made.repeated:
        _check_repeat(made.session, body)
        return made.session, False
    if made.session is not None:
        metrics.SESSIONS_CREATED.labels(metrics.pool_label(place.pool)).inc()
        return made.session, True
    raise exhausted(place.pool, await q.exhaustion(conn, request))


def _check_repeat(existing: Session, body: CreateSession) -> None:
    """A repeat is the same request: a field it gives that differs from the live session's is conflicting_repeat.

    ttl_seconds is compared with the session's whole lifetime (a repeat cannot know a PATCH moved it).
    """
    given: dict[str, tuple[object, object]] = {
        "pool": (body.pool, existing.pool),
        "record": (body.record, existing.record),
        "max_call_minutes": (body.max_call_minutes, existing.max_call_minutes),
        "max_calls": (body.max_calls, existing.max_calls),
        "metadata": (body.metadata, existing.metadata),
        "ttl_seconds": (
            body.ttl_seconds,
            round((existing.expires_at - existing.created_at).total_seconds()),
        ),
    }
    defaults = CreateSession(order_id="-", customer="-", agent="-")
    differ = [
        name
        for name, (mine, theirs) in given.items()
        if mine is not None and mine != getattr(defaults, name) and mine != theirs
    ]
    if differ:
        raise ConflictingRepeat(
            f"This order already has an active session for this customer and agent, with other {', '.join(differ)}: "
            "change it with PATCH /v1/sessions/{id}, or close it first.",
            fields=differ,
        )


def exhausted(pool: str, why: q.Exhaustion) -> PoolExhausted:
    """pool_exhausted with how many DIDs each rule ruled out (a true answer: DESIGN rule 1)."""
    reason = "empty_pool" if why.pool_dids == 0 else "no_eligible_did"
    metrics.SESSIONS_REFUSED.labels(reason).inc()
    ruled_out = {
        "not_active": why.not_active,
        "other_country": why.other_country,
        "party_busy": why.party_busy,
        "cooling_off": why.cooling_off,
    }
    if why.pool_dids == 0:
        detail = f"Pool {pool!r} has no DIDs: add DIDs to it with POST /v1/dids."
    else:
        parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in ruled_out.items() if n)
        detail = (
            f"No DID of pool {pool!r} may serve this pair: all {why.pool_dids} are ruled out ({parts}). "
            "Close finished sessions of these parties or add DIDs to the pool."
        )
    return PoolExhausted(detail, pool=pool, pool_dids=why.pool_dids, ruled_out=ruled_out)
