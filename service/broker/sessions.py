"""Masking sessions: creation with DID allocation by the broker's rules, reads, TTL changes, closing, expiry."""

from __future__ import annotations

import base64
import binascii
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import structlog

from service import metrics
from service.broker import events
from service.broker.errors import (
    CallInProgress,
    InvalidRequest,
    NotFound,
    PoolExhausted,
    ReassignConflict,
    SessionNotActive,
    parse_id,
)
from service.broker.phones import normalize, parse_with_region
from service.db import Conn
from service.db import pools as pools_q
from service.db import sessions as q
from service.models import Session

log = structlog.get_logger("service.sessions")

Clock = Callable[[], datetime]
OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Pool = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Ttl = Annotated[int, msgspec.Meta(ge=60, le=2_592_000)]
MAX_METADATA_BYTES = 4096
# Random eligible DIDs drawn per attempt; the less loaded wins (the power of two choices), which keeps the
# busiest DID close to the mean while each draw is one index probe, whatever the pool or its DIDs hold.
CHOICES = 2
# Eligible DIDs looked at after each draw: one alone favours DIDs after gaps in the pool's order.
WINDOW = 4


class CreateSession(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions."""

    order_id: OrderId
    customer: str
    agent: str
    pool: Pool = "default"
    ttl_seconds: Ttl | None = None
    record: bool = False
    max_call_minutes: Annotated[int, msgspec.Meta(ge=1, le=240)] | None = None
    max_calls: Annotated[int, msgspec.Meta(ge=1)] | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Rules(msgspec.Struct, frozen=True):
    """The settings the broker's rules depend on."""

    default_ttl_seconds: int
    cooloff_seconds: int


def live_view(session: Session, now: datetime) -> Session:
    """A session as of now: one past its expiry reads as expired even before the sweeper marks it."""
    if session.status == "active" and session.expires_at <= now:
        return msgspec.structs.replace(session, status="expired", close_reason="ttl", closed_at=session.expires_at)
    return session


def allocation(
    tenant_id: int,
    pool: str,
    customer: str,
    agent: str,
    country: str,
    now: datetime,
    rules: Rules,
    tried: list[str],
    *,
    order_id: str,
    expires_at: datetime,
    record: bool,
    max_call_minutes: int | None,
    max_calls: int | None,
    metadata: dict[str, Any],
) -> q.Allocation:
    """One allocation attempt's inputs, for a new session or a session moving to another DID."""
    return q.Allocation(
        tenant_id=tenant_id,
        pool=pool,
        customer=customer,
        agent=agent,
        country=country,
        now=now,
        cooloff=timedelta(seconds=rules.cooloff_seconds),
        tried=tried,
        slot=random.random(),
        sample=CHOICES,
        window=WINDOW,
        session_id=uuid.uuid4(),
        order_id=order_id,
        expires_at=expires_at,
        record=record,
        max_call_minutes=max_call_minutes,
        max_calls=max_calls,
        metadata=metadata,
    )


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
    # Each attempt is one transaction. One that lost a race rolls back and goes again without the DID
    # it lost (the loop ends after at most one attempt per DID of the pool), so "exhausted" is only
    # said when true; one that lost to an identical request finds that request's session as a repeat.
    while True:
        now = clock()
        try:
            return await _create_once(conn, tenant_id, body, customer, agent, country, rules, ttl, tried, now)
        except _LostRace as lost:
            # Roll back what the lost attempt bound (a binding with no session would block its number on
            # that DID until its end) and go again without that DID.
            tried.append(lost.args[0])
        except PoolExhausted:
            # Counted after the attempt rolled back, for the console's "refused in the last hour".
            await pools_q.count_refusal(conn, tenant_id, body.pool, now)
            raise


async def _create_once(
    conn: Conn,
    tenant_id: int,
    body: CreateSession,
    customer: str,
    agent: str,
    country: str,
    rules: Rules,
    ttl: timedelta,
    tried: list[str],
    now: datetime,
) -> tuple[Session, bool]:
    """One attempt in one transaction: the session and whether it is new, or _LostRace (rolled back)."""
    async with conn.transaction():
        existing = await q.find_repeat(conn, tenant_id, body.order_id, customer, agent, now)
        if existing is not None:
            return existing, False
        request = allocation(
            tenant_id,
            body.pool,
            customer,
            agent,
            country,
            now,
            rules,
            tried,
            order_id=body.order_id,
            expires_at=now + ttl,
            record=body.record,
            max_call_minutes=body.max_call_minutes,
            max_calls=body.max_calls,
            metadata=body.metadata,
        )
        attempt = await q.allocate(conn, request)
        if attempt.session is not None:
            await events.emit_session(conn, tenant_id, "session.created", attempt.session, now)
            metrics.SESSIONS_CREATED.labels(metrics.pool_label(body.pool)).inc()
            return attempt.session, True
        if attempt.picked is None:
            raise _exhausted(body.pool, await q.exhaustion(conn, request))
        raise _LostRace(attempt.picked)


def _exhausted(pool: str, why: q.Exhaustion) -> PoolExhausted:
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


async def get_session(conn: Conn, tenant_id: int, session_id: str, now: datetime) -> Session:
    """One of the tenant's sessions, or not_found."""
    session = await q.select_session(conn, tenant_id, parse_id(session_id, "session"))
    if session is None:
        raise NotFound("No session with that id.")
    return live_view(session, now)


class Page(msgspec.Struct, frozen=True):
    """A page of sessions and the cursor of the next one."""

    items: list[Session]
    next_cursor: str | None


async def list_sessions(
    conn: Conn,
    tenant_id: int,
    now: datetime,
    *,
    order_id: str | None,
    customer: str | None,
    status: Literal["active", "closed", "expired"] | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """The tenant's sessions, newest first, a keyset page at a time."""
    rows = await q.select_sessions(
        conn,
        tenant_id,
        now,
        order_id=order_id,
        customer=normalize(customer, "customer") if customer else None,
        status=status,
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    items = [live_view(r, now) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode()).decode()
    return Page(items=items, next_cursor=next_cursor)


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, sid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(sid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            "`cursor` is not one this service gave out; start again without it.", field="cursor"
        ) from None


async def _live_or_raise(conn: Conn, tenant_id: int, session_id: uuid.UUID, now: datetime) -> Session:
    session = await q.select_session(conn, tenant_id, session_id)
    if session is None:
        raise NotFound("No session with that id.")
    return live_view(session, now)


async def change_ttl(conn: Conn, tenant_id: int, session_id: str, ttl_seconds: int, now: datetime) -> Session:
    """Make a live session end ttl_seconds from now."""
    sid = parse_id(session_id, "session")
    async with conn.transaction():
        changed = await q.update_expiry(conn, tenant_id, sid, now, now + timedelta(seconds=ttl_seconds))
        if changed is not None:
            await events.emit_session(conn, tenant_id, "session.updated", changed, now)
    if changed is None:
        session = await _live_or_raise(conn, tenant_id, sid, now)
        raise SessionNotActive(f"The session is {session.status}; only an active session's TTL can change.")
    return changed


class Reassign(msgspec.Struct, frozen=True, kw_only=True):
    """A party change asked by PATCH /v1/sessions/{id}: new numbers (None: unchanged) and whether the
    session may move to another DID when the new pair may not keep its own."""

    customer: str | None = None
    agent: str | None = None
    allow_new_number: bool = False
    ttl_seconds: int | None = None  # a TTL change in the same PATCH: applied in the same transaction


class _NotHere(Exception):
    """The new pair may not be bound to the session's DID: roll the savepoint back."""


class _LostRace(Exception):
    """An allocation attempt for a moving session lost its DID to a concurrent request: roll back, retry."""


async def reassign(
    conn: Conn,
    tenant_id: int,
    session_id: str,
    change: Reassign,
    rules_of: Callable[[str], Awaitable[Rules]],
    clock: Clock,
) -> Session:
    """Move a live session to a new customer and/or agent, in one transaction.

    It keeps its DID when rules 1 to 3 allow the new pair there (the other party's masked number does
    not change); otherwise reassign_conflict says why, unless allow_new_number, when the session moves
    to a DID allocated as for a new session. The replaced party's binding ends at once.
    """
    sid = parse_id(session_id, "session")
    new_customer, country = (
        parse_with_region(change.customer, "customer") if change.customer is not None else (None, None)
    )
    new_agent = normalize(change.agent, "agent") if change.agent is not None else None
    tried: list[str] = []
    while True:
        now = clock()
        try:
            async with conn.transaction():
                session, changed = await _reassign_once(
                    conn, tenant_id, sid, new_customer, country, new_agent, change, rules_of, now, tried
                )
                if change.ttl_seconds is not None:
                    expires_at = now + timedelta(seconds=change.ttl_seconds)
                    moved = await q.update_expiry(conn, tenant_id, sid, now, expires_at)
                    assert moved is not None  # locked and live in this transaction
                    session, changed = moved, True
                if changed:
                    # One change, one event: the session as GET shows it after the whole PATCH.
                    await events.emit_session(conn, tenant_id, "session.updated", session, now)
                return session
        except _LostRace:
            continue


async def _reassign_once(
    conn: Conn,
    tenant_id: int,
    sid: uuid.UUID,
    new_customer: str | None,
    country: str | None,
    new_agent: str | None,
    change: Reassign,
    rules_of: Callable[[str], Awaitable[Rules]],
    now: datetime,
    tried: list[str],
) -> tuple[Session, bool]:
    """The session after the party change, and whether anything changed (the caller emits the event)."""
    locked = await q.lock_session(conn, tenant_id, sid)
    if locked is None:
        raise NotFound("No session with that id.")
    session = live_view(locked, now)
    if session.status != "active":
        raise SessionNotActive(f"The session is {session.status}; only an active session's parties can change.")
    customer = new_customer or session.customer
    agent = new_agent or session.agent
    if customer == agent:
        field = "agent" if new_agent is not None else "customer"
        raise InvalidRequest("`agent` must differ from `customer`.", field=field)
    parties = [
        p for p, old, new in (("customer", session.customer, customer), ("agent", session.agent, agent)) if old != new
    ]
    if not parties:
        return session, False
    if await q.call_in_flight(conn, sid):
        raise CallInProgress("A call of this session is still in flight: change its parties once its report arrives.")
    # find_repeat also marks a stale (expired, not yet swept) session of this order and pair expired, freeing it.
    if await q.find_repeat(conn, tenant_id, session.order_id, customer, agent, now) is not None:
        raise ReassignConflict(
            "Another active session of this order already has this customer and agent.", reason="duplicate_pair"
        )
    olds = [session.customer if p == "customer" else session.agent for p in parties]
    news = [customer if p == "customer" else agent for p in parties]
    peers = [agent if p == "customer" else customer for p in parties]
    if country is None:
        _, country = parse_with_region(session.customer, "customer")
    rules = await rules_of(session.pool)
    cooloff = timedelta(seconds=rules.cooloff_seconds)
    did = session.masked_number
    fit = await q.did_fit(conn, tenant_id, session.pool, did, country)
    why: tuple[str, str] | None = None
    if not fit.active:
        why = ("did_not_active", "Its masked number is draining or retired: it takes no new pair.")
    elif not fit.geo_ok and customer != session.customer:
        why = (
            "other_country",
            "Its masked number is not of the new customer's country, and the pool has DIDs that are.",
        )
    else:
        try:
            # A savepoint: when not every new number can be bound here, none of them stays bound.
            async with conn.transaction():
                bound = await q.bind_new(
                    conn,
                    did=did,
                    session_id=sid,
                    numbers=news,
                    peers=peers,
                    ends_at=session.expires_at,
                    now=now,
                    cooloff=cooloff,
                )
                if bound == len(news):
                    ended = olds
                    done = await _finish(
                        conn, tenant_id, session, sid, customer, agent, did, ended, parties, olds, news, now
                    )
                    return done, True
                raise _NotHere
        except _NotHere:
            pass
        blocked = await q.blockers(conn, did, news, peers, now, cooloff)
        busy = [p for p, n in zip(parties, news, strict=True) if any(b.number == n and b.live for b in blocked)]
        cooling = [p for p, n in zip(parties, news, strict=True) if any(b.number == n and not b.live for b in blocked)]
        why = (
            ("party_busy", f"The new {' and '.join(busy)} already has another active session on this masked number.")
            if busy
            else (
                "cooling_off",
                f"The new {' and '.join(cooling or parties)} ended a session with someone else on this masked "
                f"number less than the cool-off ({rules.cooloff_seconds} s) ago.",
            )
        )
    if not change.allow_new_number:
        raise ReassignConflict(_conflict_detail(why[1]), reason=why[0], masked_number=did)
    moved = await _move(conn, tenant_id, session, sid, customer, agent, country, rules, parties, olds, news, now, tried)
    return moved, True


def _conflict_detail(reason: str) -> str:
    return (
        f"The session cannot keep its masked number for this pair: {reason} "
        'Send "allow_new_number": true to move the session to another DID (its masked_number changes).'
    )


async def _move(
    conn: Conn,
    tenant_id: int,
    session: Session,
    sid: uuid.UUID,
    customer: str,
    agent: str,
    country: str,
    rules: Rules,
    parties: list[str],
    olds: list[str],
    news: list[str],
    now: datetime,
    tried: list[str],
) -> Session:
    """Allocate another DID for the new pair with the allocator new sessions use, then move the session."""
    request = allocation(
        tenant_id,
        session.pool,
        customer,
        agent,
        country,
        now,
        rules,
        [*tried, session.masked_number],
        order_id=session.order_id,
        expires_at=session.expires_at,
        record=session.record,
        max_call_minutes=session.max_call_minutes,
        max_calls=session.max_calls,
        metadata=session.metadata,
    )
    attempt = await q.allocate(conn, request)
    if attempt.picked is None:
        raise _exhausted(session.pool, await q.exhaustion(conn, request))
    if attempt.session is None:
        if attempt.bound < 2:
            tried.append(attempt.picked)
            raise _LostRace
        raise ReassignConflict(
            "Another active session of this order already has this customer and agent.", reason="duplicate_pair"
        )
    # The allocator made a placeholder session row holding the new bindings: drop it, keep the session's id.
    await q.drop_placeholder(conn, request.session_id)
    ended = [session.customer, session.agent]
    return await _finish(
        conn, tenant_id, session, sid, customer, agent, attempt.picked, ended, parties, olds, news, now,
        placeholder=request.session_id,
    )  # fmt: skip


async def _finish(
    conn: Conn,
    tenant_id: int,
    session: Session,
    sid: uuid.UUID,
    customer: str,
    agent: str,
    new_did: str,
    ended: list[str],
    parties: list[str],
    olds: list[str],
    news: list[str],
    now: datetime,
    placeholder: uuid.UUID | None = None,
) -> Session:
    done = await q.finish_reassign(
        conn,
        session_id=sid,
        placeholder=placeholder or sid,
        customer=customer,
        agent=agent,
        old_did=session.masked_number,
        new_did=new_did,
        ended=ended,
        parties=parties,
        olds=olds,
        news=news,
        now=now,
    )
    if done is None:
        raise ReassignConflict(
            "Another active session of this order already has this customer and agent.", reason="duplicate_pair"
        )
    log.info("session_reassigned", session_id=str(sid), parties=parties, moved=new_did != session.masked_number)
    return done


async def close_session(conn: Conn, tenant_id: int, session_id: str, now: datetime) -> Session:
    """Close a live session (closed_by_client); a session already ended comes back unchanged."""
    sid = parse_id(session_id, "session")
    async with conn.transaction():
        closed = await q.close_session(conn, tenant_id, sid, now, "closed", "closed_by_client")
        if closed is not None:
            await events.emit_session(conn, tenant_id, "session.closed", closed, now)
    if closed is None:
        return await _live_or_raise(conn, tenant_id, sid, now)
    return closed


class ExpireFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions/expire: at least one filter; all given must match."""

    order_id: OrderId | None = None
    customer: str | None = None
    agent: str | None = None
    masked_number: str | None = None


async def expire_sessions(conn: Conn, tenant_id: int | None, filters: ExpireFilter, now: datetime) -> int:
    """Expire (expired_by_ops) every live session matching all given filters."""
    if not any(msgspec.structs.astuple(filters)):
        raise InvalidRequest("Give at least one filter: order_id, customer, agent or masked_number.", field="body")
    async with conn.transaction():
        expired = await q.expire_matching(
            conn,
            tenant_id,
            now,
            order_id=filters.order_id,
            customer=normalize(filters.customer, "customer") if filters.customer else None,
            agent=normalize(filters.agent, "agent") if filters.agent else None,
            masked_number=normalize(filters.masked_number, "masked_number") if filters.masked_number else None,
        )
        await events.sessions_closed(conn, expired, now, tenant_id)
    return len(expired)


class PoolStats(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's size and use. headroom = active DIDs - (the two busiest parties' live sessions): a new
    pair needs a DID free for both, and with the customer in m live sessions and the agent in n, up to
    m + n DIDs are ruled out; at or below 0 the two busiest parties may be refused a session together."""

    tenant: str
    pool: str
    dids: int
    active_dids: int
    active_sessions: int
    busiest_party_sessions: int
    second_party_sessions: int = 0
    headroom: int


def headroom(active_dids: int, busiest: int, second: int) -> int:
    """Active DIDs minus the two busiest parties' live sessions (negative: that many DIDs short)."""
    return active_dids - busiest - second


# Counting the two busiest parties reads every live binding of a pool (one index range per DID, then a
# hash count per number): ~2.5 s for a 50-DID pool with 300,000 live sessions on a shared 2-core machine.
# A computation that took longer than STATS_SLOW_SECONDS is reused for 20x its duration (at most
# STATS_MAX_AGE_SECONDS) by this process, so stats, pool routes and /metrics scrapes of a big pool cost
# at most ~5% of a database core however often they are asked; small pools are always fresh.
STATS_SLOW_SECONDS = 0.1
STATS_MAX_AGE_SECONDS = 30.0


class StatsCache:
    """Per process (one per app): slow pool statistics, reused for a while."""

    def __init__(self) -> None:
        self._hits: dict[tuple[int | None, str | None], tuple[float, list[PoolStats]]] = {}

    def get(self, key: tuple[int | None, str | None], at: float) -> list[PoolStats] | None:
        hit = self._hits.get(key)
        return hit[1] if hit is not None and hit[0] > at else None

    def put(self, key: tuple[int | None, str | None], started: float, took: float, stats: list[PoolStats]) -> None:
        if took > STATS_SLOW_SECONDS:
            if len(self._hits) > 10_000:
                self._hits.clear()
            self._hits[key] = (started + took + min(20 * took, STATS_MAX_AGE_SECONDS), stats)


async def pool_stats(
    conn: Conn, tenant_id: int | None, now: datetime, pool: str | None = None, cache: StatsCache | None = None
) -> list[PoolStats]:
    """Per pool (or one pool): DIDs, active sessions and headroom (with a cache, a slow answer is reused)."""
    started = time.monotonic()
    if cache is not None and (hit := cache.get((tenant_id, pool), started)) is not None:
        return hit
    stats = await _pool_stats(conn, tenant_id, now, pool)
    if cache is not None:
        cache.put((tenant_id, pool), started, time.monotonic() - started, stats)
    return stats


async def _pool_stats(conn: Conn, tenant_id: int | None, now: datetime, pool: str | None) -> list[PoolStats]:
    return [stats_of(r) for r in await q.pool_stats(conn, tenant_id, now, pool)]


def stats_of(row: q.PoolUse) -> PoolStats:
    """A pool's statistics row as the API shows it, with its headroom."""
    return PoolStats(
        tenant=row.tenant,
        pool=row.pool,
        dids=row.dids,
        active_dids=row.active_dids,
        active_sessions=row.active_sessions,
        busiest_party_sessions=row.busiest_party,
        second_party_sessions=row.second_party,
        headroom=headroom(row.active_dids, row.busiest_party, row.second_party),
    )
