"""The database fails over under load (pg_auto_failover, one switchover): nothing acknowledged is lost, no 500."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from service.cli import describe_database
from service.db.pool import create_pool
from service.settings import Settings
from tests.factories import create_session, open_session, pool
from tests.failover import Cluster, broken, run, why_not
from tests.helpers import Keys, assert_problem


@contextlib.asynccontextmanager
async def read_only(db: asyncpg.Connection) -> AsyncIterator[None]:
    """The server turns read-only under open connections, as a primary being demoted to a standby does."""
    await db.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    await db.execute("SELECT pg_reload_conf()")
    try:
        await asyncio.sleep(0.3)  # backends take the reloaded setting at their next command
        yield
    finally:
        await db.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await db.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.3)


async def test_a_write_refused_as_read_only_is_503_with_retry_after_and_readyz_says_503(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """On a node turned read-only (25006) a write answers 503 database_unavailable with Retry-After, never 500."""
    assert (await client.get("/readyz")).status_code == 200
    await pool(client, keys.a, dids=["+918068281234"])
    async with read_only(db):
        r = await create_session(client, keys.a)
        assert_problem(r, 503, "database_unavailable")
        assert int(r.headers["retry-after"]) >= 1
        assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/readyz")).status_code == 200
    await open_session(client, keys.a)


async def test_a_connection_that_met_a_standby_is_replaced_with_all_its_siblings(
    dsn: str, db: asyncpg.Connection
) -> None:
    """A 25006 expires the pool: once a writable primary answers again, the pool's connections are new ones."""
    pool = await create_pool(dsn, 2)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        async with read_only(db):
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await pool.execute("CREATE TEMP TABLE t (x int)")
        after = await pool.fetchval("SELECT pg_backend_pid()")
        assert after != before
    finally:
        await pool.close()


async def test_a_standby_met_by_the_hot_routes_pool_replaces_the_main_pools_connections_too(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Pools that share failovers (the app's main pool and its hot routes' pool): one meeting a 25006 renews both."""
    main, hot = await create_pool(dsn, 2), await create_pool(dsn, 2)
    main.share_failovers(hot)
    try:
        before = await main.fetchval("SELECT pg_backend_pid()")
        async with read_only(db):
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await hot.execute("CREATE TEMP TABLE t (x int)")
        assert await main.fetchval("SELECT pg_backend_pid()") != before
    finally:
        await hot.close()
        await main.close()


def test_a_multi_host_dsn_is_described_by_all_its_hosts_without_credentials() -> None:
    """`masking migrate` and `serve` name every host of a multi-host DSN, and never its password."""
    dsn = "postgresql://app:s3cret@db1:5432,db2:5433/masking?target_session_attrs=read-write"
    assert describe_database(Settings(database_url=dsn)) == "PostgreSQL at db1:5432,db2:5433/masking"
    assert describe_database(Settings(database_url="postgresql://db/masking")) == "PostgreSQL at db:5432/masking"


@pytest.mark.skipif(why_not() is not None, reason=str(why_not()))
def test_a_switchover_under_load_loses_nothing_and_the_service_follows_the_new_primary() -> None:
    """Under load on a multi-host DSN, a planned switchover gives 503s only, loses nothing, and leaves no process."""
    cluster = Cluster()
    try:
        cluster.start()
        figures = asyncio.run(run(cluster, seconds=30, switchovers=1, crashes=0, workers=3))
    finally:
        cluster.stop()
    assert cluster.processes() == []
    print(figures)
    assert broken(figures) == []
    assert figures["creates answered 2xx"] > 10 and figures["reports answered 200"] > 0
    assert figures["switches"][0]["primary after"] != figures["switches"][0]["primary before"]


def test_the_ha_compose_runs_a_monitor_two_nodes_and_two_replicas_on_a_multi_host_dsn() -> None:
    """deploy/ha/compose.yaml parses; both replicas use one DSN naming both nodes, read-write only."""
    compose = yaml.safe_load((Path(__file__).parent.parent / "deploy" / "ha" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"monitor", "node1", "node2", "service-1", "service-2", "proxy"} <= set(services)
    assert "create monitor" in services["monitor"]["command"]
    dsns = {services[s]["environment"]["MASKING_DATABASE_URL"] for s in ("service-1", "service-2", "migrate")}
    assert len(dsns) == 1
    (dsn,) = dsns
    assert "@node1:5432,node2:5432/" in dsn and "target_session_attrs=read-write" in dsn


async def test_a_value_the_driver_cannot_encode_keeps_the_pool(dsn: str) -> None:
    """asyncpg's DataError is an InterfaceError too, but says nothing of the server: the connections stay."""
    pool = await create_pool(dsn, 1)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.DataError):
            await pool.fetchval("SELECT $1::int", "not a number")
        assert await pool.fetchval("SELECT pg_backend_pid()") == before
    finally:
        await pool.close()
