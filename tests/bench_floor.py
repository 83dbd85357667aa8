"""The framework floor of the benchmark: a Litestar route answering a constant session-sized JSON object,
after a primary-key read of the session when BENCH_FLOOR_DSN names the database (issue 23's complete reference
for get: the floor and the read the contract needs)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from litestar import Litestar, Response, get

# A session as the service encodes it (the same keys, numbers and length), made once.
BODY = (
    b'{"id":"0b9c4a8e-5d2f-4f6e-9a51-2f3c8d7e6b10","order_id":"load-123456","customer":"+919900123456",'
    b'"agent":"+918600123456","masked_number":"+918070001234","pool":"wide","status":"active",'
    b'"close_reason":null,"created_at":"2026-11-28T14:00:00.123456+00:00",'
    b'"expires_at":"2026-12-28T14:00:00.123456+00:00","closed_at":null,"record":false,'
    b'"max_call_minutes":null,"max_calls":null,"calls_made":0,"metadata":{}}'
)
KEY = os.environ.get("BENCH_FLOOR_KEY", "")
DSN = os.environ.get("BENCH_FLOOR_DSN", "")
POOL_SIZE = int(os.environ.get("MASKING_DB_POOL_SIZE", "10"))
_pool: list[asyncpg.Pool] = []


@get("/v1/sessions/{session_id:str}")
async def read(session_id: str, headers: dict[str, str]) -> Response[bytes]:
    """The constant, after the same cheap check of the bearer header the service's guard starts with (and the
    session's primary-key read, with BENCH_FLOOR_DSN)."""
    if headers.get("authorization", "") != f"Bearer {KEY}":
        return Response(b'{"code":"unauthorized"}', status_code=401, media_type="application/json")
    if _pool:
        await _pool[0].fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(session_id))
    return Response(BODY, media_type="application/json")


class _Connection(asyncpg.Connection):
    """No reset query on release, as the service's connections (service/db/pool.py): the least work."""

    def get_reset_query(self) -> str:
        return ""


@asynccontextmanager
async def _database(app: Litestar) -> AsyncIterator[None]:
    if DSN:
        pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE, connection_class=_Connection)
        _pool.append(pool)
    try:
        yield
    finally:
        if _pool:
            await _pool.pop().close()


@get("/readyz", sync_to_thread=False)
def ready() -> dict[str, str]:
    """Ready."""
    return {"status": "ok"}


app = Litestar([read, ready], openapi_config=None, lifespan=[_database])
