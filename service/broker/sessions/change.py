"""Changing a live session: its TTL, and its parties (reassignment, on its DID or moved to another)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import msgspec
import structlog

from service.broker import events
from service.broker.errors import CallInProgress, InvalidRequest, NotFound, ReassignConflict, SessionNotActive, parse_id
from service.broker.phones import normalize, parse_with_region
from service.broker.sessions.base import Clock, Rules, live_view, read_or_raise
from service.broker.sessions.create import LostRace, Placement, allocation, exhausted
from service.db import Conn
from service.db import sessions as q
from service.models import Session

log = structlog.get_logger("service.sessions")


async def change_ttl(conn: Conn, tenant_id: int, session_id: str, ttl_seconds: int, now: datetime) -> Session:
    """Make a live session end ttl_seconds from now (its live bindings with it)."""
    sid = parse_id(session_id, "session")
    async with conn.transaction():
        changed = await q.update_expiry(conn, tenant_id, sid, now, now + timedelta(seconds=ttl_seconds))
        if changed is not None:
            await events.emit_session(conn, tenant_id, "session.updated", changed, now)
    if changed is None:
        session = await read_or_raise(conn, tenant_id, sid, now)
        raise SessionNotActive(f"The session is {session.status}; only an active session's TTL can change.")
    return changed


class Reassign(msgspec.Struct, frozen=True, kw_only=True):
    """A party change asked by PATCH /v1/sessions/{id}: new numbers (None: unchanged) and whether the
    session may move to another DID when the new pair may not keep its own."""

    customer: str | None = None
    agent: str | None = None
    allow_new_number: bool = False
    ttl_seconds: int | None = None  # a TTL change in the same PATCH: applied in the same transaction


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One reassignment attempt: the session as locked, its new pair, and which parties change from what to what."""

    tenant_id: int
    session: Session
    customer: str
    agent: str
    country: str  # the (new) customer's
    rules: Rules
    parties: list[str]  # the parties replaced: "customer" and/or "agent"
    olds: list[str]  # their old numbers
    news: list[str]  # their new numbers
    peers: list[str]  # each new number's peer
    now: datetime


class _NotHere(Exception):
    """The new pair may not be bound to the session's DID: roll the savepoint back."""


async def reassign(
    conn: Conn,
    tenant_id: int,
    session_id: str,
    change: Reassign,
    rules_of: Callable[[str], Awaitable[Rules]],
    clock: Clock,
) -> Session:
    """Move a live session to a new customer and/or agent, in one transaction.

    It keeps its DID when contract rules 1 to 3 allow the new pair there (the other party's masked number
    does not change); otherwise reassign_conflict says why, unless allow_new_number, when the session
    moves to a DID allocated as for a new session. The replaced party's binding ends at once.
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
        except LostRace:
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
    # DESIGN rule 4: one call in flight per session, and a party does not change under it.
    if await q.call_in_flight(conn, sid):
        raise CallInProgress("A call of this session is still in flight: change its parties once its report arrives.")
    # find_repeat also ends a stale (expired, not yet swept) session of this order and pair, freeing it.
    if await q.find_repeat(conn, tenant_id, session.order_id, customer, agent, now) is not None:
        raise _duplicate_pair()
    if country is None:
        _, country = parse_with_region(session.customer, "customer")
    plan = Plan(
        tenant_id=tenant_id,
        session=session,
        customer=customer,
        agent=agent,
        country=country,
        rules=await rules_of(session.pool),
        parties=parties,
        olds=[session.customer if p == "customer" else session.agent for p in parties],
        news=[customer if p == "customer" else agent for p in parties],
        peers=[agent if p == "customer" else customer for p in parties],
        now=now,
    )
    why = await _keep_did(conn, plan)
    if isinstance(why, Session):
        return why, True
    if not change.allow_new_number:
        raise ReassignConflict(_conflict_detail(why[1]), reason=why[0], masked_number=session.masked_number)
    return await _move(conn, plan, tried), True


async def _keep_did(conn: Conn, plan: Plan) -> Session | tuple[str, str]:
    """The session reassigned on its own DID, or (reason, sentence) why contract rules 1 to 3 forbid it."""
    session, now = plan.session, plan.now
    did = session.masked_number
    cooloff = timedelta(seconds=plan.rules.cooloff_seconds)
    fit = await q.did_fit(conn, plan.tenant_id, session.pool, did, plan.country)
    if not fit.active:
        return ("did_not_active", "Its masked number is draining or retired: it takes no new pair.")
    if not fit.geo_ok and plan.customer != session.customer:
        return (
            "other_country",
            "Its masked number is not of the new customer's country, and the pool has DIDs that are.",
        )
    try:
        # A savepoint: when not every new number can be bound here, none of them stays bound.
        async with conn.transaction():
            bound = await q.bind_new(
                conn,
                tenant_id=plan.tenant_id,
                did=did,
                session_id=session.id,
                numbers=plan.news,
                peers=plan.peers,
                ends_at=session.expires_at,
                now=now,
                cooloff=cooloff,
            )
            if bound == len(plan.news):
                return await _finish(conn, plan, did, ended=plan.olds, placeholder=session.id)
            raise _NotHere
    except _NotHere:
        pass
    blocked = await q.blockers(conn, plan.tenant_id, did, plan.news, plan.peers, now, cooloff)
    pairs = list(zip(plan.parties, plan.news, strict=True))
    busy = [p for p, n in pairs if any(b.number == n and b.live for b in blocked)]
    cooling = [p for p, n in pairs if any(b.number == n and not b.live for b in blocked)]
    if busy:
        return ("party_busy", f"The new {' and '.join(busy)} already has another active session on this masked number.")
    return (
        "cooling_off",
        f"The new {' and '.join(cooling or plan.parties)} ended a session with someone else on this masked "
        f"number less than the cool-off ({plan.rules.cooloff_seconds} s) ago.",
    )


def _conflict_detail(reason: str) -> str:
    return (
        f"The session cannot keep its masked number for this pair: {reason} "
        'Send "allow_new_number": true to move the session to another DID (its masked_number changes).'
    )


def _duplicate_pair() -> ReassignConflict:
    return ReassignConflict(
        "Another active session of this order already has this customer and agent.", reason="duplicate_pair"
    )


async def _move(conn: Conn, plan: Plan, tried: list[str]) -> Session:
    """Allocate another DID for the new pair with the allocator new sessions use, then move the session."""
    session = plan.session
    place = Placement(
        tenant_id=plan.tenant_id,
        pool=session.pool,
        customer=plan.customer,
        agent=plan.agent,
        country=plan.country,
        order_id=session.order_id,
        expires_at=session.expires_at,
        record=session.record,
        max_call_minutes=session.max_call_minutes,
        max_calls=session.max_calls,
        metadata=session.metadata,
    )
    request = allocation(place, plan.now, plan.rules, [*tried, session.masked_number])
    attempt = await q.allocate(conn, request)
    if attempt.picked is None:
        raise exhausted(session.pool, await q.exhaustion(conn, request))
    if attempt.session is None:
        if attempt.bound < 2:
            tried.append(attempt.picked)
            raise LostRace
        raise _duplicate_pair()
    # The allocator made a placeholder session row holding the new bindings: drop it, keep the session's id.
    await q.drop_placeholder(conn, request.session_id)
    ended = [session.customer, session.agent]
    return await _finish(conn, plan, attempt.picked, ended=ended, placeholder=request.session_id)


async def _finish(conn: Conn, plan: Plan, new_did: str, *, ended: list[str], placeholder: uuid.UUID) -> Session:
    """Apply the reassignment whose new bindings on new_did are made (the replaced numbers' end now)."""
    session = plan.session
    done = await q.finish_reassign(
        conn,
        q.PartyChange(
            tenant_id=plan.tenant_id,
            session_id=session.id,
            placeholder=placeholder,
            customer=plan.customer,
            agent=plan.agent,
            old_did=session.masked_number,
            new_did=new_did,
            ended=ended,
            parties=plan.parties,
            olds=plan.olds,
            news=plan.news,
            now=plan.now,
        ),
    )
    if done is None:
        raise _duplicate_pair()
    log.info(
        "session_reassigned", session_id=str(session.id), parties=plan.parties, moved=new_did != session.masked_number
    )
    return done
