"""The event feed's horizon: what holds it back, the gauge of its lag, and the proposed guard that ignores other
databases' transactions without skipping an event."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg

from service import metrics
from service.broker.horizon import HorizonWatch
from service.broker.sweeps import Sweeper
from service.db.events import SELECT_FEED, insert_events
from service.db.horizon import CLUSTER_HORIZON, DATABASE_HORIZON, FEED_HORIZON, read_horizon
from service.settings import Settings
from tests.factories import bare_tenant


@asynccontextmanager
async def transaction(dsn: str, isolation: str = "read committed") -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own with a transaction open on it (rolled back unless committed)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        yield conn
    finally:
        await conn.close()


async def write(conn: asyncpg.Connection, tenant_id: int, name: str) -> None:
    """One event, by the service's own event writer, on the connection (in its open transaction, if any)."""
    await insert_events(conn, datetime.now(UTC), [(tenant_id, "webhook.test", json.dumps({"name": name}).encode())])


async def feed(conn: asyncpg.Connection, tenant_id: int, horizon: str, after: tuple[str, int] | None = None) -> list:
    """The feed's own statement, with its guard set to this horizon: the page's rows after a position."""
    assert FEED_HORIZON in SELECT_FEED
    sql = SELECT_FEED.replace(FEED_HORIZON, horizon)
    return list(await conn.fetch(sql, tenant_id, None, after[0] if after else None, after[1] if after else None, 100))


def names(rows: list) -> list[str]:
    return [json.loads(r["data"])["name"] if isinstance(r["data"], str) else r["data"]["name"] for r in rows]


def test_the_gauge_measures_the_guard_the_feed_uses() -> None:
    """The feed's statement contains the horizon expression the gauge reads (switching one switches both)."""
    assert FEED_HORIZON in SELECT_FEED


async def test_a_transaction_open_in_another_database_holds_back_the_old_cluster_wide_guard_but_not_the_feed(
    db: asyncpg.Connection, server_dsn: str
) -> None:
    """While a transaction with an id stays open in another database for 2 s, each event committed here meanwhile
    is at once on the feed under the proposed guard, and on none under the cluster-wide one."""
    tenant_id = await bare_tenant(db, "horizon")
    seen_proposed: list[list[str]] = []
    seen_today: list[list[str]] = []
    async with transaction(server_dsn) as other:  # the server's own `postgres` database, not the test's
        await other.fetchval("SELECT pg_current_xact_id()")
        for i in range(4):
            await write(db, tenant_id, f"E{i}")
            seen_proposed.append(names(await feed(db, tenant_id, DATABASE_HORIZON)))
            seen_today.append(names(await feed(db, tenant_id, CLUSTER_HORIZON)))
            await asyncio.sleep(0.5)
        assert await other.fetchval("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")  # still open
    assert seen_proposed == [[f"E{j}" for j in range(i + 1)] for i in range(4)]
    assert seen_today == [[]] * 4
    assert names(await feed(db, tenant_id, CLUSTER_HORIZON)) == ["E0", "E1", "E2", "E3"]  # once it ended


async def test_an_open_transaction_of_this_database_that_wrote_an_event_still_holds_the_proposed_feed(
    db: asyncpg.Connection, dsn: str, server_dsn: str
) -> None:
    """With a transaction open in another database throughout: C takes its id, A writes and stays open, B and C write
    and commit; the reader under the proposed guard sees C's event but nothing of A's age or younger; A writes again and commits; reading on from
    the reader's position gives every event once (none skipped, as with the cluster-wide guard)."""
    tenant_id = await bare_tenant(db, "horizon")
    async with (
        transaction(server_dsn) as other,
        transaction(dsn) as c,
        transaction(dsn) as a,
        transaction(dsn) as b,
    ):
        await other.fetchval("SELECT pg_current_xact_id()")  # the oldest transaction of the cluster
        await c.fetchval("SELECT pg_current_xact_id()")  # C is the oldest of this database
        await write(a, tenant_id, "A1")
        await write(b, tenant_id, "B")
        await b.execute("COMMIT")
        assert names(await feed(db, tenant_id, DATABASE_HORIZON)) == []  # C holds it
        await write(c, tenant_id, "C")
        await c.execute("COMMIT")
        before = await feed(db, tenant_id, DATABASE_HORIZON)
        await write(a, tenant_id, "A2")
        await a.execute("COMMIT")
        last = before[-1] if before else None
        after = await feed(db, tenant_id, DATABASE_HORIZON, (last["txid"], last["id"]) if last else None)
        assert names(before) == ["C"]  # C is older than A; A holds B back
        assert sorted(names(after)) == ["A1", "A2", "B"]  # every event once: none skipped
        assert names(await feed(db, tenant_id, CLUSTER_HORIZON)) == []  # today: the other database holds all


async def test_only_a_transaction_with_an_id_holds_the_horizon_and_its_age_is_the_lag(
    db: asyncpg.Connection, dsn: str, server_dsn: str
) -> None:
    """A read-only repeatable-read transaction holds nothing; one with an id in another database, once a younger one
    committed, holds the cluster horizon for at least as long as it has been open, and not the proposed one; one
    here holds both."""
    tenant_id = await bare_tenant(db, "horizon")
    async with transaction(dsn, "repeatable read") as reader:
        await reader.fetchval("SELECT count(*) FROM events")  # a snapshot (backend_xmin), no transaction id
        await write(db, tenant_id, "while reading")
        assert (await read_horizon(db, CLUSTER_HORIZON)).held is False
    async with transaction(server_dsn) as other:
        await other.fetchval("SELECT pg_current_xact_id()")
        # Until a younger transaction commits, nothing is behind the horizon: it is the snapshot's xmax.
        assert (await read_horizon(db, CLUSTER_HORIZON)).held is False
        await write(db, tenant_id, "behind the other database's")
        await asyncio.sleep(1.0)
        cluster = await read_horizon(db, CLUSTER_HORIZON)
        own = await read_horizon(db, DATABASE_HORIZON)
        async with transaction(dsn) as here:
            xid = await here.fetchval("SELECT pg_current_xact_id()::text")
            await write(db, tenant_id, "behind this database's")
            here_held = await read_horizon(db, DATABASE_HORIZON)
    assert cluster.held and cluster.seconds is not None and cluster.seconds >= 1.0
    assert not own.held and own.seconds == 0.0
    assert here_held.held and here_held.xid == xid and here_held.seconds is not None


async def test_each_sweep_sets_the_horizon_lag_gauge(db: asyncpg.Connection, dsn: str, settings: Settings) -> None:
    """A transaction here that wrote an event stays open 1 s while a younger one's event waits behind it: the sweep's
    gauge reads at least 1 s; once it commits, the next sweep's reads 0."""
    tenant_id = await bare_tenant(db, "horizon")
    sweeper = Sweeper(settings)
    async with transaction(dsn) as open_one:
        await write(open_one, tenant_id, "late")
        await write(db, tenant_id, "held back")
        await asyncio.sleep(1.0)
        await sweeper.sweep_once(db, datetime.now(UTC))
        held = metrics.EVENT_FEED_HORIZON_LAG._value.get()
        await open_one.execute("COMMIT")
    await sweeper.sweep_once(db, datetime.now(UTC))
    assert held >= 1.0
    assert metrics.EVENT_FEED_HORIZON_LAG._value.get() == 0.0


async def test_without_rights_to_see_the_holders_start_the_lag_counts_from_first_sighting(
    db: asyncpg.Connection, dsn: str
) -> None:
    """Read by a role without pg_read_all_stats, another role's transaction holding the horizon has no start to see:
    the watch counts the lag from when it first saw that transaction hold it (0, then 30 s on a clock moved 30 s)."""
    tenant_id = await bare_tenant(db, "horizon")
    role = "horizon_" + uuid.uuid4().hex[:8]
    await db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        plain = await asyncpg.connect(dsn, user=role)
        try:
            watch = HorizonWatch()
            async with transaction(dsn) as holder:
                await write(holder, tenant_id, "held")
                await write(db, tenant_id, "behind it")
                reading = await read_horizon(plain, DATABASE_HORIZON)
                t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
                first = await watch.observe(plain, t0)
                later = await watch.observe(plain, t0 + timedelta(seconds=30))
            done = await watch.observe(plain, t0 + timedelta(seconds=31))
        finally:
            await plain.close()
    finally:
        await db.execute(f"DROP ROLE {role}")
    assert reading.held and reading.seconds is None
    assert (first, later, done) == (0.0, 30.0, 0.0)
