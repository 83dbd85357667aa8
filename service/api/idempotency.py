"""Idempotency-Key (an HTTP concern): the first response to a keyed request is kept and replayed for 24 hours."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime

from service.broker.errors import IdempotencyConflict, InvalidRequest
from service.db import Conn
from service.db import idempotency as q

Produce = Callable[[], Awaitable[tuple[int, bytes]]]


async def run_once(
    conn: Conn, tenant_id: int, key: str, request: bytes, now: datetime, produce: Produce
) -> tuple[int, bytes]:
    """Run produce() once per (tenant, key) and request body; repeats get the stored (status, body)."""
    if not 1 <= len(key) <= 255:
        raise InvalidRequest("The Idempotency-Key header must be 1 to 255 characters.", field="Idempotency-Key")
    digest = hashlib.sha256(request).digest()
    if not await q.claim(conn, tenant_id, key, digest, now):
        held = await q.select(conn, tenant_id, key)
        if held is None:  # the holder failed and released it just now: run again
            return await run_once(conn, tenant_id, key, request, now, produce)
        if bytes(held["request_hash"]) != digest:
            raise InvalidRequest(
                "This Idempotency-Key was used with a different request body; use a new key for a new request.",
                field="Idempotency-Key",
            )
        if held["status_code"] is None:
            raise IdempotencyConflict(
                "A request with this Idempotency-Key is still being processed; retry in a moment."
            )
        return held["status_code"], bytes(held["body"])
    try:
        status, body = await produce()
    except BaseException:
        await q.release(conn, tenant_id, key)
        raise
    await q.store(conn, tenant_id, key, status, body)
    return status, body
