"""Bringing a database to this version's schema: schema.sql for a new one, numbered migrations for an old one."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import asyncpg
import msgspec

from service.db import Conn, backfill

# Any fixed number: the advisory lock that makes concurrent migrations take turns.
_MIGRATION_LOCK = 7_305_118_422
# A migration waits this long for a table lock, then rolls back and tries again, rather than
# queueing behind (and in front of) live traffic or deadlocking with it.
LOCK_TIMEOUT = "2s"
ATTEMPTS = 30
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Version 1 is the schema the first release shipped; every later version is a file in migrations/.
BASELINE = 1


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer version of the service than this one."""


class Migration(msgspec.Struct, frozen=True):
    """One numbered SQL file of service/db/migrations/."""

    version: int
    name: str
    sql: str


class Migrated(msgspec.Struct, frozen=True):
    """What bringing a database up to date did."""

    schema_version: int
    applied: list[str]
    created: bool


def _package_file(*parts: str) -> Traversable:
    return resources.files("service").joinpath(*parts)


def schema_sql() -> str:
    """The schema shipped inside the package (the checkout's copy in an editable install)."""
    packaged = _package_file("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "schema.sql").read_text(encoding="utf-8")


def migrations() -> list[Migration]:
    """Every migration this version ships, in order."""
    found = []
    for entry in _package_file("db", "migrations").iterdir():
        if match := _MIGRATION_NAME.match(entry.name):
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    assert versions == list(range(BASELINE + 1, BASELINE + 1 + len(found))), (
        f"migrations must be numbered in turn: {versions}"
    )
    return found


def latest_version() -> int:
    """The schema version this code expects."""
    return BASELINE + len(migrations())


async def current_version(conn: Conn) -> int | None:
    """The database's schema version; None for a database the service has never touched."""
    # A plain catalog query, not to_regclass(): its cache may not yet see a table that another process
    # created while this one waited on the advisory lock.
    exists = (
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_version')"
    )
    if not await conn.fetchval(exists):
        return None
    version: int | None = await conn.fetchval("SELECT max(version) FROM schema_version")
    return version


def _check_not_newer(version: int | None, latest: int) -> None:
    if version is not None and version > latest:
        raise SchemaTooNew(
            f"The database is at schema version {version}, newer than this service's {latest}: "
            "run the newer version of the service (or roll the database back from a backup)."
        )


async def migrate(conn: Conn) -> Migrated:
    """Bring the database to this version's schema; on a current database take no lock and run no DDL.

    A new database gets schema.sql in one transaction; an older one gets each missing migration in a
    transaction of its own, all under an advisory lock so that concurrent starts take turns.
    """
    latest = latest_version()
    version = await current_version(conn)
    _check_not_newer(version, latest)
    created, applied = version is None, []
    while version != latest:
        if version == backfill.SEALED_FROM:  # the clear numbers are sealed (online, in batches) before 0016 drops them
            await backfill.fill(conn)
        step = await _with_retries(conn, latest)
        if step is not None:
            applied.append(step)
        version = await current_version(conn)
    if created:
        applied = []
    return Migrated(schema_version=latest, applied=applied, created=created)


async def _with_retries(conn: Conn, latest: int) -> str | None:
    for attempt in range(ATTEMPTS):
        try:
            return await _one_step(conn, latest)
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


async def _one_step(conn: Conn, latest: int) -> str | None:
    """Under the lock: create the schema, or apply the next migration; None when nothing was left to do."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        # Another process may have done the work while this one waited for the lock.
        version = await current_version(conn)
        _check_not_newer(version, latest)
        if version is None:
            await conn.execute(schema_sql())
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", latest)
            return "schema.sql"
        if version == latest:
            return None
        migration = next(m for m in migrations() if m.version == version + 1)
        if migration.version == backfill.SEALED_FROM + 1:  # what was written since fill(), under the tables' locks
            await backfill.final_round(conn)
        await conn.execute(migration.sql)
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", migration.version)
        return migration.name
