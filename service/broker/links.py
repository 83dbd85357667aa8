"""Call links: an opaque token that lets one party of a session place its calls, and nothing else."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from service.broker import calls
from service.broker.bodies import CreateLink, StartCall
from service.broker.errors import DomainError, LinkExpired, NotFound, RateLimited, SessionNotActive, parse_id
from service.broker.limits import CallLimits, TokenBuckets, limited
from service.db import Conn
from service.db import calls as calls_q
from service.db import links as q
from service.db import sessions as sessions_q
from service.logging import mask_number
from service.models import Call, CallStatus, Party

Clock = Callable[[], datetime]
TOKEN_BYTES = 24  # 192 bits of randomness; only the SHA-256 of the token is stored
_GONE = (
    "This call link has expired, been used up, or its order has ended or passed to someone else; ask for a new link."
)


class NewLink(msgspec.Struct, frozen=True):
    """A minted link: its URL is shown only here."""

    url: str
    expires_at: datetime
    max_uses: int


class LinkCall(msgspec.Struct, frozen=True, kw_only=True, rename={"from_": "from"}):
    """A call as a link's holder sees it: the real numbers masked (+91******3210)."""

    id: str
    status: CallStatus
    first: Party
    from_: str
    to: str
    bridge: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billing_seconds: int | None

    @classmethod
    def of(cls, call: Call) -> LinkCall:
        """The masked view of a call."""
        return cls(
            id=str(call.id),
            status=call.status,
            first=call.first,
            from_=mask_number(call.from_),
            to=mask_number(call.to),
            bridge=call.bridge,
            created_at=call.created_at,
            started_at=call.started_at,
            ended_at=call.ended_at,
            duration_seconds=call.duration_seconds,
            billing_seconds=call.billing_seconds,
        )


class LinkView(msgspec.Struct, frozen=True, kw_only=True):
    """What a link's page shows: the order, whom the button calls, and the last call."""

    order_id: str
    party: Party
    other: Party
    uses_left: int
    expires_at: datetime
    last_call: LinkCall | None


def hash_token(token: str) -> bytes:
    """The SHA-256 digest under which a link's token is stored."""
    return hashlib.sha256(token.encode()).digest()


async def create_link(
    conn: Conn, tenant_id: int, session_id: str, body: CreateLink, now: datetime, public_base: str
) -> NewLink:
    """Mint a link for one party of a live session; it dies at its TTL or the session's end, whichever is first."""
    sid = parse_id(session_id, "session")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    ends = await q.insert_link(
        conn,
        token_hash=hash_token(token),
        tenant_id=tenant_id,
        session_id=sid,
        party=body.party,
        max_uses=body.max_uses,
        now=now,
        expires_at=now + timedelta(seconds=body.ttl_seconds),
    )
    if ends is None:
        if await _session_exists(conn, tenant_id, sid):
            raise SessionNotActive("The session is no longer active; a call link needs a live session.")
        raise NotFound("No session with that id.")
    return NewLink(url=f"{public_base}/c/{token}", expires_at=ends, max_uses=body.max_uses)


async def _session_exists(conn: Conn, tenant_id: int, sid: UUID) -> bool:
    return await sessions_q.select_session(conn, tenant_id, sid) is not None


def _live(link: q.LinkRow, now: datetime, used_up_ok: bool = False) -> bool:
    return (
        (used_up_ok or link.uses < link.max_uses)
        and link.expires_at > now
        and link.session_status == "active"
        and link.session_expires_at > now
        and not link.replaced
    )


async def _last_call(conn: Conn, link: q.LinkRow) -> LinkCall | None:
    found = await calls_q.select_session_calls(conn, link.tenant_id, link.session_id)
    return LinkCall.of(found[-1]) if found else None


async def view_link(conn: Conn, token: str, now: datetime, used_up_ok: bool = False) -> LinkView:
    """The page of a live link; not_found for a token never issued, link_expired for one that has ended.

    used_up_ok: a link whose presses are all spent still tells the state of its last call until it expires.
    """
    link = await q.select_link(conn, hash_token(token))
    if link is None:
        raise NotFound("No call link with that address; check the link you were sent.")
    if not _live(link, now, used_up_ok):
        raise LinkExpired(_GONE)
    return LinkView(
        order_id=link.order_id,
        party=link.party,
        other="customer" if link.party == "agent" else "agent",
        uses_left=link.max_uses - link.uses,
        expires_at=min(link.expires_at, link.session_expires_at),
        last_call=await _last_call(conn, link),
    )


class Buckets(TokenBuckets):
    """TokenBuckets that forget everyone when they grow past a bound (keys here are client addresses)."""

    MAX_KEYS = 100_000

    def take(self, key: object, what: str) -> None:
        """Spend one token for key, or raise 429 saying who is limited and when to retry."""
        if len(self._buckets) > self.MAX_KEYS:
            self._buckets.clear()
        try:
            super().take(key, what)
        except RateLimited as exc:
            raise limited(f"Too many {what} a minute; slow down.", exc.extra["retry_after"]) from None


class LinkLimits:
    """The per-process rate limits of link pages: presses per link, requests per client address."""

    def __init__(self, presses_per_minute: int, per_address: int) -> None:
        self.presses = Buckets(presses_per_minute)
        self.addresses = Buckets(per_address)


async def press(
    db: asyncpg.Pool,
    provider: calls.Dialler,
    token: str,
    clock: Clock,
    limits: CallLimits,
    link_limits: LinkLimits,
) -> LinkCall:
    """Place the session's call with first = the link's party, exactly as the calls API does; count one use."""
    digest = hash_token(token)
    async with db.acquire() as conn:
        link = await q.take_use(conn, digest, clock())
        if link is None:
            if await q.select_link(conn, digest) is None:
                raise NotFound("No call link with that address; check the link you were sent.")
            raise LinkExpired(_GONE)
    try:
        link_limits.presses.take(digest, "presses of this link")
        call = await calls.place_call(
            db,
            provider,
            link.tenant_id,
            str(link.session_id),
            StartCall(first=link.party),
            clock,
            limits,
            # A PATCH of the party between take_use and the call's insert must not ring the new party.
            party_number=link.party_number,
        )
    except DomainError as exc:
        if "call_id" not in exc.extra:  # refused before any call was recorded: the press is not a use
            async with db.acquire() as conn:
                await q.give_back_use(conn, digest)
                now_link = await q.select_link(conn, digest)
            if now_link is not None and now_link.replaced:  # the party was replaced meanwhile
                raise LinkExpired(_GONE) from None
        raise
    return LinkCall.of(call)
