"""What the ops console reads that the API does not: sign-in by key, searches, calls needing attention, a chart.

Every change the console makes goes through the same broker functions as the API (dids, sessions, calls).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from service.broker.errors import Forbidden, InvalidPhoneNumber, Unauthorized
from service.broker.phones import normalize
from service.broker.sessions import live_view
from service.broker.tenants import Principal, authenticate, hash_key, principal_by_hash
from service.db import Conn
from service.db import console as q
from service.db import pools as pools_q
from service.db.console import AttentionCall, FailingEvent
from service.db.console import HourCount as HourCount  # the pools chart's bars, re-exported for web
from service.models import Did, Session

SEARCH_LIMIT = 100
RECENT_SHOWN = 50  # sessions the sessions page opens on
PREFIX_WINDOW = 50_000  # newest sessions an order-id prefix search reads (an exact id is found at any age)
ATTENTION_WINDOW = timedelta(hours=24)
REFUSAL_WINDOW = timedelta(hours=1)
ATTEMPTS_READ = 5_000  # newest attempts per endpoint the webhooks page reads for failing events
FAILING_SHOWN = 20  # failing events shown per endpoint


async def sign_in(db: asyncpg.Pool | Conn, api_key: str) -> tuple[Principal, str]:
    """The principal of an ops key and the hex hash a console session keeps instead of the key."""
    principal = await authenticate(db, api_key.strip())
    if principal is None:
        raise Unauthorized("That key is unknown or revoked.")
    if not principal.allows("ops"):
        raise Forbidden("That key lacks the `ops` scope the console needs.")
    return principal, hash_key(api_key.strip()).hex()


async def principal_of(conn: Conn, key_hash_hex: str) -> Principal | None:
    """The principal of a console session's key while that key is live; None once it is revoked."""
    try:
        digest = bytes.fromhex(key_hash_hex)
    except ValueError:
        return None
    return await principal_by_hash(conn, digest)


async def find_sessions(conn: Conn, tenant_id: int, text: str, now: datetime) -> list[Session]:
    """The newest sessions (no text), or those of a party's or the masked number (text that reads as a phone
    number), or of an order id or the order ids it begins (among the newest PREFIX_WINDOW sessions)."""
    text = text.strip()
    if not text:
        found = await q.recent_sessions(conn, tenant_id, RECENT_SHOWN)
    elif (number := _number_in(text)) is not None:
        found = await q.sessions_with_number(conn, tenant_id, number, SEARCH_LIMIT)
    else:
        found = await q.sessions_of_order_prefix(conn, tenant_id, text, PREFIX_WINDOW, SEARCH_LIMIT)
    return [live_view(s, now) for s in found]


def _number_in(text: str) -> str | None:
    if not text.lstrip("+").isdigit():
        return None
    try:
        return normalize(text, "q")
    except InvalidPhoneNumber:
        return None


def orders_to_expire(found: list[Session]) -> list[str]:
    """The order ids of the live sessions found, in the order listed, each once (what "Expire order" offers)."""
    return list(dict.fromkeys(s.order_id for s in found if s.status == "active"))


class DidSearch(msgspec.Struct, frozen=True):
    """The first DIDs a search found, and whether more match."""

    items: list[Did]
    more: bool


async def search_dids(
    conn: Conn, tenant_id: int, text: str, pool: str | None, status: str | None, now: datetime, limit: int
) -> DidSearch:
    """DIDs whose number contains the digits of text (all, when it has none), of a pool and status when given."""
    digits = "".join(ch for ch in text if ch.isdigit())[:16] or None
    found = await q.search_dids(conn, tenant_id, now, digits=digits, pool=pool, status=status, limit=limit + 1)
    return DidSearch(items=found[:limit], more=len(found) > limit)


async def live_sessions_of_order(conn: Conn, tenant_id: int, order_id: str, now: datetime) -> int:
    """How many live sessions an expiry of this order would end."""
    return len(await q.select_session_ids_of_order(conn, tenant_id, order_id, now))


async def failing_events(conn: Conn, tenant_id: int, endpoint_id: UUID) -> list[FailingEvent]:
    """An endpoint's events not delivered, one each with its current state, newest first (of its recent attempts)."""
    return await q.failing_events(conn, tenant_id, endpoint_id, ATTEMPTS_READ, FAILING_SHOWN)


async def calls_needing_attention(conn: Conn, tenant_id: int, now: datetime) -> list[AttentionCall]:
    """Calls of the last 24 hours that ended unknown (no word from the provider) or failed."""
    return await q.select_attention_calls(conn, tenant_id, now - ATTENTION_WINDOW, SEARCH_LIMIT)


async def sessions_by_hour(conn: Conn, tenant_id: int, now: datetime, hours: int = 24) -> list[HourCount]:
    """Sessions created in each of the last `hours` hours, oldest first (the current hour last)."""
    return await q.sessions_per_hour(conn, tenant_id, now - timedelta(hours=hours - 1), hours)


async def refusals_last_hour(conn: Conn, tenant_id: int, now: datetime) -> dict[str, int]:
    """Sessions refused (pool_exhausted) per pool in the last hour, over every service process."""
    return await pools_q.select_refusals(conn, tenant_id, now - REFUSAL_WINDOW)
