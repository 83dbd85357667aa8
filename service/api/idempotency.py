"""Idempotency-Key (an HTTP concern): the first response to a keyed request is kept and replayed for 24 hours."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime

from service.broker.errors import IdempotencyConflict, InvalidRequest
from service.db import Conn
from service.db import idempotency as q

Produce = Callable[[], Awaitable[tuple[int, bytes]]]

# A key released between our failed claim and our read is claimed again, this many times at most.
CLAIM_ATTEMPTS = 3


async def run_once(
    conn: Conn, tenant_id: int, key: str, request: bytes, now: datetime, produce: Produce
) -> tuple[int, bytes]:
    """Run produce() once per (tenant, key) and request body; repeats get the stored (status, body)."""
    if not 1 <= len(key) <= 255:
        raise InvalidRequest("The Idempotency-Key header must be 1 to 255 characters.", field="Idempotency-Key")
    digest = hashlib.sha256(request).digest()
    for _ in range(CLAIM_ATTEMPTS):
        if await q.claim(conn, tenant_id, key, digest, now):
            break
        held = await q.select(conn, tenant_id, key)
        if held is None:  # the holder failed and released it just now: claim again
            continue
        if held.request_hash != q.request_key(tenant_id, digest):
            raise InvalidRequest(
                "This Idempotency-Key was used with a different request body; use a new key for a new request.",
                field="Idempotency-Key",
            )
        if held.status_code is None or held.body is None:
            raise IdempotencyConflict(
                "A request with this Idempotency-Key is still being processed; retry in a moment."
            )
        return held.status_code, held.body
    else:
        raise IdempotencyConflict(
            "Other requests with this Idempotency-Key keep claiming and releasing it; retry in a moment."
        )
    try:
        status, body = await produce()
    except BaseException:
        await q.release(conn, tenant_id, key)
        raise
    await q.store(conn, tenant_id, key, status, body)
    return status, body
