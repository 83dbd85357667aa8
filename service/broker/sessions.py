"""Masking sessions: creation with DID allocation by the broker's rules, reads, TTL changes, closing, expiry."""

from __future__ import annotations

import base64
import binascii
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import structlog

from service import metrics
from service.broker.errors import InvalidRequest, NotFound, PoolExhausted, SessionNotActive, parse_id
from service.broker.phones import normalize, parse_with_region
from service.db import Conn
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
WINDOW = 4
# The name this constant had before issue 11, for code that builds Allocations with it (reassignment).
SAMPLE_PER_SIDE = CHOICES


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
        async with conn.transaction():
            existing = await q.find_repeat(conn, tenant_id, body.order_id, customer, agent, now)
            if existing is not None:
                return existing, False
            request = q.Allocation(
                tenant_id=tenant_id,
                pool=body.pool,
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
                order_id=body.order_id,
                expires_at=now + ttl,
                record=body.record,
                max_call_minutes=body.max_call_minutes,
                max_calls=body.max_calls,
                metadata=body.metadata,
            )
            attempt = await q.allocate(conn, request)
            if attempt.session is not None:
                metrics.SESSIONS_CREATED.labels(metrics.pool_label(body.pool)).inc()
                return attempt.session, True
            if attempt.picked is None:
                raise _exhausted(body.pool, await q.exhaustion(conn, request))
        if attempt.bound < 2:
            tried.append(attempt.picked)


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
    changed = await q.update_expiry(conn, tenant_id, sid, now, now + timedelta(seconds=ttl_seconds))
    if changed is None:
        session = await _live_or_raise(conn, tenant_id, sid, now)
        raise SessionNotActive(f"The session is {session.status}; only an active session's TTL can change.")
    return changed


async def close_session(conn: Conn, tenant_id: int, session_id: str, now: datetime) -> Session:
    """Close a live session (closed_by_client); a session already ended comes back unchanged."""
    sid = parse_id(session_id, "session")
    closed = await q.close_session(conn, tenant_id, sid, now, "closed", "closed_by_client")
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
    expired = await q.expire_matching(
        conn,
        tenant_id,
        now,
        order_id=filters.order_id,
        customer=normalize(filters.customer, "customer") if filters.customer else None,
        agent=normalize(filters.agent, "agent") if filters.agent else None,
        masked_number=normalize(filters.masked_number, "masked_number") if filters.masked_number else None,
    )
    return len(expired)


class PoolStats(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's size and use; headroom is how many more concurrent sessions its busiest party can take."""

    tenant: str
    pool: str
    dids: int
    active_dids: int
    active_sessions: int
    busiest_party_sessions: int
    headroom: int


async def pool_stats(conn: Conn, tenant_id: int | None, now: datetime) -> list[PoolStats]:
    """Per pool: DIDs, active sessions and headroom."""
    return [
        PoolStats(
            tenant=r.tenant,
            pool=r.pool,
            dids=r.dids,
            active_dids=r.active_dids,
            active_sessions=r.active_sessions,
            busiest_party_sessions=r.busiest_party,
            headroom=max(r.active_dids - r.busiest_party, 0),
        )
        for r in await q.pool_stats(conn, tenant_id, now)
    ]
