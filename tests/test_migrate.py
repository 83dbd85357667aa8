"""The schema applies idempotently, from many processes at once, and records its version."""

import asyncio

import asyncpg

from service.db.schema import migrate


async def test_concurrent_migrations_all_succeed_and_record_one_version(dsn: str) -> None:
    """Eight connections migrating at once (twice over) all succeed and leave one schema version."""
    conns = [await asyncpg.connect(dsn) for _ in range(8)]
    try:
        for _ in range(2):
            versions = await asyncio.gather(*(migrate(c) for c in conns))
            assert set(versions) == {1}
        assert await conns[0].fetchval("SELECT count(*) FROM schema_version") == 1
        tables = {
            r["tablename"] for r in await conns[0].fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"tenants", "api_keys", "dids", "sessions", "bindings", "calls", "provider_reports"} <= tables
    finally:
        for c in conns:
            await c.close()


async def test_the_database_refuses_a_number_on_one_did_twice(db: asyncpg.Connection) -> None:
    """The bindings key itself, not only the code, keeps a number off a DID it is already on."""
    tenant = await db.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
    await db.execute(
        "INSERT INTO dids (number, tenant_id, pool, country) VALUES ('+918068200000', $1, 'p', 'IN')", tenant
    )
    insert = (
        "INSERT INTO bindings (number, did, peer, session_id, ends_at)"
        " VALUES ($1, '+918068200000', $2, gen_random_uuid(), now())"
    )
    await db.execute(insert, "+919870000000", "+919870000001")
    try:
        await db.execute(insert, "+919870000000", "+919870000002")
    except asyncpg.UniqueViolationError:
        pass
    else:
        raise AssertionError("a second binding of one number on one DID was accepted")
