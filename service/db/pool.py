"""Connection pools: one asyncpg pool per process, jsonb decoded by msgspec, re-targeted when the primary moves."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import asyncpg
import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy

log = structlog.get_logger("service.db.pool")

# What a failover looks like from a client (DESIGN rule 13): the node is gone, shutting down or starting
# (08*, 57P01, 57P02, 57P03, a reset socket), or it answers as a standby (25006). A connection that saw one
# is useless, and so probably are its siblings to the same node: the whole pool is expired and re-made
# against whichever host of the DSN is now a writable primary (target_session_attrs=read-write).
FAILOVER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.ReadOnlySQLTransactionError,
    # A connection cut mid-operation: "connection was closed in the middle of operation", "cannot call
    # Transaction.__aexit__(): the underlying connection is closed", "another operation is in progress".
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # and TargetServerAttributeNotMatched: no host is writable
)
# Failures to *open* a connection: nothing was sent, so trying again is always safe.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)
# How long acquire() keeps trying to open a connection while no host is a writable primary: a switchover
# takes about 3 s, so a request arriving in its middle often still succeeds; bounded by acquire's timeout.
CONNECT_PATIENCE = 2.0
# The name our connections carry in pg_stat_activity (the failover test counts them per node).
APPLICATION_NAME = "masking"


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


class _Acquire:
    """pool.acquire(): retries opening a connection briefly, and expires the pool when a failover shows."""

    __slots__ = ("conn", "pool", "timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout
        self.conn: PoolConnectionProxy | None = None

    async def __aenter__(self) -> PoolConnectionProxy:
        patience = CONNECT_PATIENCE if self.timeout is None else min(CONNECT_PATIENCE, self.timeout)
        deadline = time.monotonic() + patience
        pause = 0.05
        while True:
            started = time.monotonic()
            try:
                self.conn = await self.pool.acquire_raw(self.timeout)
                return self.conn
            except CONNECT_ERRORS:
                await self.pool.failed_over()
                if time.monotonic() + pause > deadline:
                    raise
            if self.timeout is not None:
                self.timeout = max(0.0, self.timeout - (time.monotonic() - started) - pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self.conn = self.conn, None
        # asyncpg's DataError (a value it cannot encode) is an InterfaceError too, but says nothing of the server.
        if isinstance(exc, FAILOVER_ERRORS) and not isinstance(exc, asyncpg.DataError):
            await self.pool.failed_over(exc)
        if conn is not None:
            await self.pool.release(conn)


class Pool(asyncpg.Pool):
    """asyncpg's pool, re-targeted on a failover: connections that met one are replaced by new ones."""

    def acquire(self, *, timeout: float | None = None) -> Any:
        """A pooled connection (async with); opening one is retried for a moment while no primary answers."""
        return _Acquire(self, timeout)

    async def acquire_raw(self, wait: float | None) -> PoolConnectionProxy:
        """asyncpg's own acquire."""
        conn: PoolConnectionProxy = await super().acquire(timeout=wait)
        return conn

    siblings: tuple[Pool, ...] = ()

    def share_failovers(self, other: Pool) -> None:
        """A failover either pool sees replaces the connections of both: they reach the same hosts."""
        self.siblings, other.siblings = (*self.siblings, other), (*other.siblings, self)

    async def failed_over(self, exc: BaseException | None = None) -> None:
        """Replace every connection (its siblings' too): idle ones at their next acquire, busy ones when released."""
        if exc is not None:
            log.warning("database_failover_suspected", error=type(exc).__name__, message=str(exc)[:200])
        for pool in (self, *self.siblings):
            await pool.expire_connections()


async def ping(pool: asyncpg.Pool) -> None:
    """Raise unless a writable primary answers (a standby, or a node draining to become one, does not count)."""
    writable = await pool.fetchval(
        "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"
    )
    if not writable:
        if isinstance(pool, Pool):
            await pool.failed_over()
        raise asyncpg.ReadOnlySQLTransactionError("the database answers, but as a read-only standby")


async def create_pool(dsn: str, size: int = 10, **kwargs: Any) -> Pool:
    """Open a pool to dsn (one host, or several with target_session_attrs=read-write) with the service's codecs."""
    settings = {"application_name": APPLICATION_NAME, **kwargs.pop("server_settings", {})}
    pool = Pool(
        dsn,
        min_size=1,
        max_size=size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        setup=None,
        init=_init_connection,
        reset=None,
        connection_class=_Connection,
        record_class=asyncpg.Record,
        connect=None,
        loop=None,
        command_timeout=30,
        server_settings=settings,
        **kwargs,
    )
    await pool
    return pool
