"""Migrations: a new database and an upgraded one end identical; concurrent starts are safe; no DDL when current."""

import asyncio
from pathlib import Path

import asyncpg
import pytest

from service.db import schema, sealed
from service.db.schema import SchemaTooNew, latest_version, migrate
from tests.helpers import dsn_for

V1 = Path(__file__).with_name("schema_v1.sql").read_text()

# Everything a schema is made of, as comparable text: columns, constraints, indexes, functions.
CATALOG = """
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable
       || ' default=' || coalesce(column_default, '-') FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'function ' || pg_get_functiondef(p.oid) FROM pg_proc p WHERE pronamespace = 'public'::regnamespace
"""


async def _fresh(server_dsn: str, name: str) -> asyncpg.Connection:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return await asyncpg.connect(dsn_for(server_dsn, name))


async def _catalog(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch(CATALOG)}


async def test_a_version_1_database_migrated_forward_equals_one_made_from_schema_sql(server_dsn: str) -> None:
    """Version 1's schema plus every migration gives exactly the tables, columns, indexes and functions of schema.sql."""
    old, new = await _fresh(server_dsn, "mig_old"), await _fresh(server_dsn, "mig_new")
    try:
        await old.execute(V1)
        upgraded = await migrate(old)
        made = await migrate(new)
        assert made.created and upgraded.schema_version == made.schema_version == latest_version()
        assert upgraded.applied == [m.name for m in schema.migrations()]
        only_old, only_new = await _catalog(old) - await _catalog(new), await _catalog(new) - await _catalog(old)
        assert not only_old and not only_new, f"migrated only: {sorted(only_old)}\nschema.sql only: {sorted(only_new)}"
        versions = [r[0] for r in await old.fetch("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, latest_version() + 1))
    finally:
        await old.close()
        await new.close()


async def test_concurrent_migrations_all_succeed_and_record_one_version(server_dsn: str) -> None:
    """Eight connections migrating a new database at once (twice over) all succeed and leave one version row."""
    first = await _fresh(server_dsn, "mig_race")
    conns = [first, *[await asyncpg.connect(dsn_for(server_dsn, "mig_race")) for _ in range(7)]]
    try:
        for _ in range(2):
            results = await asyncio.gather(*(migrate(c) for c in conns))
            assert {r.schema_version for r in results} == {latest_version()}
        assert sum(r.created for r in results) == 0
        assert await first.fetchval("SELECT count(*) FROM schema_version") == 1
    finally:
        for c in conns:
            await c.close()


async def test_migrating_a_current_database_takes_no_lock(dsn: str) -> None:
    """On a current database, migrate() runs no DDL: it succeeds while another session holds every table locked."""
    locker, conn = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE sessions, calls, dids, bindings IN ACCESS EXCLUSIVE MODE")
        await locker.execute("SELECT pg_advisory_lock(7305118422)")
        done = await asyncio.wait_for(migrate(conn), 5)
        assert done.applied == [] and not done.created
        await tx.rollback()
    finally:
        await locker.close()
        await conn.close()


async def test_a_database_newer_than_the_code_is_refused(dsn: str) -> None:
    """A database stamped by a newer release is refused with a sentence saying what to do."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", latest_version() + 1)
        with pytest.raises(SchemaTooNew, match="newer than this service"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_the_database_refuses_a_number_on_one_did_twice(db: asyncpg.Connection) -> None:
    """The bindings key itself, not only the code, keeps a number off a DID it is already on."""
    tenant = await db.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
    await db.execute(
        "INSERT INTO dids (number, tenant_id, pool, country) VALUES ('+918068200000', $1, 'p', 'IN')", tenant
    )
    insert = (
        "INSERT INTO bindings (number_ix, did, peer_ix, session_id, ends_at)"
        " VALUES ($1, '+918068200000', $2, gen_random_uuid(), now())"
    )
    number, peer, other_peer = sealed.indexes(tenant, ["+919870000000", "+919870000001", "+919870000002"])
    await db.execute(insert, number, peer)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, number, other_peer)
