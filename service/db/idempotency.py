"""SQL for Idempotency-Key records: claim a key, read what it holds, store or release the first response."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from service.db import Conn, sealed

REPLAY_WINDOW = timedelta(hours=24)
# A claim whose request never finished (the process died) may be taken over after this.
ABANDONED_AFTER = timedelta(seconds=60)


class Held(msgspec.Struct, frozen=True, kw_only=True):
    """What a key holds: the keyed hash of the request that claimed it (request_key), and its response once done."""

    request_hash: bytes
    status_code: int | None
    body: bytes | None


def request_key(tenant_id: int, request_hash: bytes) -> bytes:
    """A request's hash as stored (keyed: a hash of a body holding numbers would let them be guessed)."""
    return sealed.keyed_hash(tenant_id, request_hash)


async def claim(conn: Conn, tenant_id: int, key: str, request_hash: bytes, now: datetime) -> bool:
    """Claim the key for a request; False when another request holds it (finished or in flight)."""
    claimed = await conn.fetchval(
        """
        INSERT INTO idempotency_keys (tenant_id, key, request_hash, created_at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (tenant_id, key) DO UPDATE
            SET request_hash = excluded.request_hash, created_at = excluded.created_at,
                status_code = NULL, body = NULL
            WHERE idempotency_keys.created_at <= $4 - $5::interval
               OR (idempotency_keys.status_code IS NULL AND idempotency_keys.created_at <= $4 - $6::interval)
        RETURNING true
        """,
        tenant_id,
        key,
        request_key(tenant_id, request_hash),
        now,
        REPLAY_WINDOW,
        ABANDONED_AFTER,
    )
    return bool(claimed)


async def select(conn: Conn, tenant_id: int, key: str) -> Held | None:
    """What a key holds, or None when no request holds it."""
    row = await conn.fetchrow(
        "SELECT request_hash, status_code, body FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        tenant_id,
        key,
    )
    if row is None:
        return None
    body = row["body"]
    return Held(
        request_hash=row["request_hash"],
        status_code=row["status_code"],
        body=None if body is None else sealed.open_bytes(tenant_id, sealed.IDEMPOTENT_BODY, body),
    )


async def store(conn: Conn, tenant_id: int, key: str, status_code: int, body: bytes) -> None:
    """Keep the first response under its key."""
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, body = $4 WHERE tenant_id = $1 AND key = $2",
        tenant_id,
        key,
        status_code,
        sealed.seal(tenant_id, sealed.IDEMPOTENT_BODY, body),
    )


async def release(conn: Conn, tenant_id: int, key: str) -> None:
    """Forget a claim whose request failed, so that a retry runs again."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND status_code IS NULL", tenant_id, key
    )
