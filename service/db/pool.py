"""Connection pools: one asyncpg pool per process, jsonb decoded by msgspec."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: msgspec.json.encode(value).decode(),
        decoder=msgspec.json.decode,
        schema="pg_catalog",
    )


class _Connection(asyncpg.Connection):
    """No handler leaves session state behind (no LISTEN, SET or session locks), so skip the reset query."""

    def get_reset_query(self) -> str:
        return ""


async def ping(pool: asyncpg.Pool) -> None:
    """Raise unless the database answers."""
    await pool.fetchval("SELECT 1")


async def create_pool(dsn: str, size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """Open a pool of connections to dsn with the service's codecs."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        init=_init_connection,
        connection_class=_Connection,
        command_timeout=30,
        **kwargs,
    )
    return pool
