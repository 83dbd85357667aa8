"""What every command shares: the database it opens, its one-line errors, who runs it."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import asyncpg

from service.db import Conn
from service.settings import Settings

if TYPE_CHECKING:
    from service.broker.audit import Action, Context, Target


T = TypeVar("T")


class CliError(Exception):
    """A command cannot go on for a reason a person can fix: one line on stderr, and this exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The DSN to use: MASKING_DATABASE_URL, or an embedded PostgreSQL started (or joined) for the duration."""
    if settings.database_url:
        yield settings.database_url
        return
    from service.embedded import EmbeddedPostgres

    with EmbeddedPostgres(settings.data_dir) as dsn:
        yield dsn


def describe_database(settings: Settings) -> str:
    """Where the data lives, without credentials."""
    if not settings.database_url:
        return f"embedded PostgreSQL in {Path(settings.data_dir).resolve() / 'pg'}"
    url = urlsplit(settings.database_url)
    hosts = [h if ":" in h else f"{h}:5432" for h in url.netloc.rpartition("@")[2].split(",") if h]
    return f"PostgreSQL at {','.join(hosts) or 'local socket'}{url.path}"


async def open_pool(settings: Settings, dsn: str, size: int) -> asyncpg.Pool:
    """A pool on the database, or a CliError naming the variable that points at a database that does not answer."""
    from service.db.pool import create_pool

    try:
        return await create_pool(dsn, size, timeout=_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        variable = "MASKING_DATABASE_URL" if settings.database_url else "MASKING_DATA_DIR"
        reason = " ".join(str(exc).replace(dsn, "[dsn]").split()) or type(exc).__name__
        raise CliError(f"{variable}: cannot connect to {describe_database(settings)}: {reason}") from None


_CONNECT_TIMEOUT = 10.0


def run_with_db(settings: Settings, work: Callable[[Conn], Awaitable[T]], *, migrated: bool = True) -> T:
    """Open the database (migrated first, unless the work is the migration), run work on one connection."""
    from service.db.schema import migrate

    async def main(dsn: str) -> T:
        pool = await open_pool(settings, dsn, 2)
        try:
            async with pool.acquire() as conn:
                if migrated:
                    await migrate(conn)
                return await work(conn)
        finally:
            await pool.close()

    with database(settings) as dsn:
        from service import crypto

        crypto.ensure(settings)  # numbers are sealed under these keys (service/db/sealed.py)
        return asyncio.run(main(dsn))


def cli_user() -> str:
    """Who runs this command, as the audit log names a command-line actor: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def cli_context(tenant_id: int) -> Context:
    """The audit context of a command: the actor is the person at the terminal (user@host)."""
    from service.broker.audit import Actor, Context

    return Context(tenant_id=tenant_id, actor=Actor.cli(cli_user()))


async def record_action(conn: Conn, tenant_id: int, action: Action, target: Target) -> None:
    """Write a command's audit row (in the caller's transaction, with the action)."""
    from service.app import utc_now
    from service.broker.audit import Actor, record

    await record(conn, tenant_id, Actor.cli(cli_user()), action, target, None, None, None, utc_now())
