"""Cost caps: how often a tenant may create sessions (per process) and click to call (database-counted)."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from uuid import UUID

import msgspec

from service.broker.errors import RateLimited
from service.db import Conn
from service.db import calls as q


class CallLimits(msgspec.Struct, frozen=True):
    """Clicks per tenant per minute, and per session per window; 0 means no cap."""

    per_tenant_per_minute: int
    per_session: int
    session_window_seconds: int


def limited(detail: str, retry_after: float) -> RateLimited:
    """A 429 rate_limited with its Retry-After header."""
    seconds = max(1, math.ceil(retry_after))
    return RateLimited(f"{detail} Retry in {seconds} s.", retry_after=seconds)


async def check_call_caps(conn: Conn, tenant_id: int, session_id: UUID, limits: CallLimits, now: datetime) -> None:
    """Refuse a click over the tenant's or the session's cap, counting calls already recorded."""
    window = timedelta(seconds=limits.session_window_seconds)
    row = await q.recent_calls(conn, tenant_id, session_id, now, window)
    if limits.per_tenant_per_minute and row.tenant_oldest and row.tenant_calls >= limits.per_tenant_per_minute:
        wait = (row.tenant_oldest + timedelta(minutes=1) - now).total_seconds()
        raise limited(f"This tenant may place {limits.per_tenant_per_minute} calls a minute.", wait)
    if limits.per_session and row.session_oldest and row.session_calls >= limits.per_session:
        wait = (row.session_oldest + window - now).total_seconds()
        raise limited(f"A session may place {limits.per_session} calls every {limits.session_window_seconds} s.", wait)


class TokenBuckets:
    """Per-key token buckets in this process: `rate` per minute with a burst of the same size."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[object, tuple[float, float]] = {}

    def take(self, key: object, what: str) -> None:
        """Spend one token for key, or raise 429 saying when the next one comes."""
        if not self.per_minute:
            return
        now = time.monotonic()
        rate = self.per_minute / 60.0
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            raise limited(f"This tenant may create {self.per_minute} {what} a minute.", (1 - tokens) / rate)
        self._buckets[key] = (tokens - 1, now)
