"""Day partitions of events, deliveries and attempts: created ahead and dropped by the sweeper, read as one table."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from service.broker import sweeps
from service.db import events as events_q
from service.db import partitions as partitions_q
from service.db import schema
from service.db import webhooks as webhooks_q
from service.db.schema import migrate
from tests.helpers import FakeClock, Keys, add_dids, did_numbers, dsn_for, index_names, make_settings, session_body

DAY = 86_400
TABLES = tuple(partitions_q.TABLES)


def days(start: date, count: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(count)]


async def where(db: asyncpg.Connection, table: str) -> list[str]:
    """The partition each row of a table is in, by id order."""
    order = "event_id" if table == "webhook_deliveries" else "id"
    return [r[0] for r in await db.fetch(f"SELECT tableoid::regclass::text FROM {table} ORDER BY {order}")]


async def make_endpoint(db: asyncpg.Connection, tenant_id: int, now: datetime) -> uuid.UUID:
    endpoint = uuid.uuid4()
    await db.execute(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret, created_at, updated_at)"
        " VALUES ($1, $2, 'http://127.0.0.1:9/hook', ARRAY['*'], 'whsec_x', $3, $3)",
        endpoint,
        tenant_id,
        now,
    )
    return endpoint


async def test_the_sweeper_creates_day_partitions_ahead_and_drops_those_past_the_event_retention(
    db: asyncpg.Connection, dsn: str, clock: FakeClock
) -> None:
    """Today and 3 days ahead exist after a sweep; 40 days on, the next 4 exist and every day older than 30 is dropped
    (but the audit log's)."""
    sweeper = sweeps.Sweeper(make_settings(dsn, event_retention_days=30))
    today = clock().date()
    await sweeper.sweep_once(db, clock())
    assert await partitions_q.day_partitions(db) == {t: days(today, 4) for t in TABLES}

    tenant = await db.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
    await make_endpoint(db, tenant, clock())
    await events_q.insert_events(db, clock(), [(tenant, "session.created", b"{}")])
    assert await where(db, "events") == [partitions_q.day_name("events", today)]
    assert await where(db, "webhook_deliveries") == [partitions_q.day_name("webhook_deliveries", today)]

    clock.advance(40 * DAY)
    await sweeper.sweep_once(db, clock())
    # the days from today to today + 3 are all older than 30 days now: dropped with their rows (the audit log's
    # kept: its retention is 400 days)
    later = days(today + timedelta(days=40), 4)
    assert await partitions_q.day_partitions(db) == {
        t: days(today, 4) + later if t == "audit_log" else later for t in TABLES
    }
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


async def test_a_day_partition_is_dropped_only_once_its_whole_day_is_past_the_retention(
    db: asyncpg.Connection, clock: FakeClock
) -> None:
    """With the cut-off inside a day, that day's partition stays; the day before it goes."""
    today = clock().date()
    await partitions_q.create_ahead(db, today, 1)
    midday_tomorrow = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=12)
    assert await partitions_q.drop_before(db, {t: midday_tomorrow for t in TABLES}) == [
        partitions_q.day_name(t, today) for t in partitions_q.DROP_ORDER
    ]
    assert await partitions_q.day_partitions(db) == {t: [today + timedelta(days=1)] for t in TABLES}


async def test_rows_written_before_their_days_partition_existed_move_into_it_when_it_is_created(
    db: asyncpg.Connection, clock: FakeClock
) -> None:
    """An event and its delivery in the default partitions move, ids kept, into the day's partitions when made."""
    tenant = await db.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
    await make_endpoint(db, tenant, clock())
    ids = await events_q.insert_events(db, clock(), [(tenant, "session.created", b'{"n": 1}')])
    assert await where(db, "events") == ["events_default"]
    created = await partitions_q.create_ahead(db, clock().date(), 0)
    assert sorted(created) == sorted(partitions_q.day_name(t, clock().date()) for t in TABLES)
    assert await where(db, "events") == [partitions_q.day_name("events", clock().date())]
    assert await where(db, "webhook_deliveries") == [partitions_q.day_name("webhook_deliveries", clock().date())]
    assert [r["id"] for r in await db.fetch("SELECT id FROM events")] == ids
    # a second pass (another process, say) finds nothing to do
    assert await partitions_q.create_ahead(db, clock().date(), 0) == []


async def test_events_spread_over_day_partitions_page_in_order_and_their_deliveries_are_claimed_and_recorded(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """Sessions made on three days: the feed pages their events one by one in order; each delivery claims and records."""
    await partitions_q.create_ahead(db, clock().date(), 3)
    tenant = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    endpoint = await make_endpoint(db, tenant, clock())
    await add_dids(client, keys.a, did_numbers(3))
    for i in range(3):
        body = session_body(order=f"d{i}", agent=f"+9187654320{i:02d}")
        assert (await client.post("/v1/sessions", json=body, headers=keys.a)).status_code == 201
        clock.advance(DAY)
    assert len(set(await where(db, "events"))) == 3 and "events_default" not in await where(db, "events")

    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {"limit": 1, **({"after": cursor} if cursor else {})}
        page = (await client.get("/v1/events", params=params, headers=keys.a)).json()
        seen += [e["data"]["order_id"] for e in page["items"]]
        if not page["items"]:
            break
        cursor = page["next_cursor"]
    assert seen == ["d0", "d1", "d2"]

    claimed = await webhooks_q.claim(db, clock(), {}, 10, {}, 10, 10, clock() + timedelta(minutes=1))
    assert sorted(c.data["order_id"] for c in claimed) == ["d0", "d1", "d2"]
    outcomes = [
        webhooks_q.Outcome(
            event_id=c.event_id,
            event_created_at=c.created_at,
            endpoint_id=endpoint,
            attempt=c.attempt,
            status="delivered",
            status_code=200,
            error=None,
            duration_ms=1,
            at=clock(),
            next_attempt_at=None,
        )
        for c in claimed
    ]
    await webhooks_q.record(db, outcomes, timedelta(days=1))
    assert [r[0] for r in await db.fetch("SELECT status FROM webhook_deliveries")] == ["delivered"] * 3
    # a redelivery finds its row by the full key (event, endpoint, event time): pending again, not a second row
    assert await webhooks_q.redeliver(db, tenant, claimed[0].event_id, clock()) == 1
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'") == 1
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 3


async def test_migration_0014_keeps_every_event_delivery_and_attempt_and_their_ids(server_dsn: str) -> None:
    """A version 13 database with rows: after 0014 the rows are all there, deliveries know their event's time."""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS mig_rows WITH (FORCE)")
        await admin.execute("CREATE DATABASE mig_rows")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_for(server_dsn, "mig_rows"))
    try:
        await conn.execute(Path(__file__).with_name("schema_v1.sql").read_text())
        for m in schema.migrations():
            if m.version < 14:
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", m.version)
        now = datetime.now(UTC)
        tenant = await conn.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
        endpoint = await make_endpoint(conn, tenant, now)
        for age in (40, 2, 0):
            event = await conn.fetchval(
                "INSERT INTO events (tenant_id, type, created_at, data) VALUES ($1, 'x', $2, '{}') RETURNING id",
                tenant,
                now - timedelta(days=age),
            )
            await conn.execute(
                "INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at) VALUES ($1, $2, $3, $3)",
                event,
                endpoint,
                now,
            )
            await conn.execute(
                "INSERT INTO webhook_attempts (endpoint_id, event_id, attempt, status, duration_ms, at)"
                " VALUES ($1, $2, 1, 'failed', 5, $3)",
                endpoint,
                event,
                now - timedelta(days=age),
            )
        before = {t: await conn.fetch(f"SELECT * FROM {t} ORDER BY 1") for t in ("events", "webhook_attempts")}
        assert "0014_partition_events.sql" in (await migrate(conn)).applied
        for table, rows in before.items():
            assert [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1")] == [dict(r) for r in rows]
        joined = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
            " AND e.created_at = d.event_created_at"
        )
        assert joined == 3
        # new rows continue the identities, after the old ones
        new_id = await conn.fetchval(
            "INSERT INTO events (tenant_id, type, created_at, data) VALUES ($1, 'x', now(), '{}') RETURNING id", tenant
        )
        assert new_id > before["events"][-1]["id"]
        await partitions_q.create_ahead(conn, now.date(), 0)
        assert (
            await where(conn, "events")
            == ["events_default", "events_default"] + [partitions_q.day_name("events", now.date())] * 2
        )
    finally:
        await conn.close()


def node_types(plan: dict[str, object]) -> list[str]:
    """Every node type of an EXPLAIN (FORMAT JSON) plan."""
    children = plan.get("Plans", [])
    assert isinstance(children, list)
    return [str(plan["Node Type"]), *(t for child in children for t in node_types(child))]


async def test_the_feed_reads_each_day_partitions_feed_index_in_order_without_sorting(
    db: asyncpg.Connection, clock: FakeClock
) -> None:
    """With 20,000 events over five day partitions, a feed page merges the partitions' events_feed indexes: no Sort."""
    first = clock().date()
    await partitions_q.create_ahead(db, first, 4)
    tenant = await db.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
    await db.execute(
        """INSERT INTO events (tenant_id, type, created_at, data)
        SELECT $1, 'session.created', $2::timestamptz + (i % 5) * interval '1 day', '{}'
        FROM generate_series(1, 20000) i""",
        tenant,
        datetime.combine(first, datetime.min.time(), UTC) + timedelta(hours=1),
    )
    await db.execute("ANALYZE events")
    plan = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + events_q.SELECT_FEED, tenant, None, "1", 1, 50))[0][
        "Plan"
    ]
    of_feed = {
        r[0]
        for r in await db.fetch(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'events_feed'::regclass"
        )
    }
    assert "Sort" not in node_types(plan) and "Merge Append" in node_types(plan), plan
    assert set(index_names(plan)) == of_feed, plan


async def test_the_feed_orders_transactions_by_number_not_by_their_text(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """Events of transactions 99…9 and 10…0 (say 999 and 1000) page in that order, one a page, neither skipped."""
    tenant = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    # a power of ten below every running transaction, so the feed shows both
    now_txid = int(await db.fetchval("SELECT pg_current_xact_id()::text"))
    boundary = 10 ** (len(str(now_txid)) - 1)
    boundary = boundary if now_txid - boundary > 100 else boundary // 10
    for txid, name in ((str(boundary - 1), "first"), (str(boundary), "second")):
        await db.execute(
            "INSERT INTO events (tenant_id, type, created_at, data, txid) VALUES ($1, 'x', $2, $3::text::jsonb, $4::text::xid8)",
            tenant,
            clock(),
            json.dumps({"name": name}),
            txid,
        )
    seen, cursor = [], None
    for _ in range(3):
        params: dict[str, str | int] = {"limit": 1, **({"after": cursor} if cursor else {})}
        page = (await client.get("/v1/events", params=params, headers=keys.a)).json()
        seen += [e["data"]["name"] for e in page["items"]]
        cursor = page["next_cursor"] or cursor
    assert seen == ["first", "second"]


async def test_four_processes_creating_partitions_at_once_all_succeed_and_make_each_once(
    dsn: str, clock: FakeClock
) -> None:
    """Four connections running create_ahead at the same moment: no error, every day partition made exactly once."""
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        made = await asyncio.gather(*(partitions_q.create_ahead(c, clock().date(), 3) for c in conns))
        assert sorted(name for names in made for name in names) == sorted(
            partitions_q.day_name(t, d) for t in TABLES for d in days(clock().date(), 4)
        )
        assert await partitions_q.day_partitions(conns[0]) == {t: days(clock().date(), 4) for t in TABLES}
    finally:
        for c in conns:
            await c.close()


async def test_a_day_partition_created_while_rows_of_its_day_arrive_takes_them_all_without_an_error(
    dsn: str, clock: FakeClock
) -> None:
    """Events (and their deliveries) of a day keep arriving while that day's partitions are made: every creation
    succeeds and every row ends in its day's partition. Before, a row that reached the default partition between
    the look for strays and the CREATE failed the creation (CheckViolation, seen in CI as sweep_failed)."""
    writer, maker = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        tenant = await writer.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
        await make_endpoint(writer, tenant, clock())
        for day in days(clock().date() + timedelta(days=10), 6):
            at = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)
            stop = asyncio.Event()

            async def write(at: datetime = at, stop: asyncio.Event = stop) -> int:
                written = 0
                while not stop.is_set():
                    await events_q.insert_events(writer, at, [(tenant, "session.created", b"{}")])
                    written += 1
                return written

            task = asyncio.create_task(write())
            await asyncio.sleep(0.05)
            try:
                assert sorted(await partitions_q.create_ahead(maker, day, 0)) == sorted(
                    partitions_q.day_name(t, day) for t in TABLES
                )
            finally:
                stop.set()
                assert await task > 0
        for table in ("events", "webhook_deliveries"):
            assert "default" not in " ".join(set(await where(maker, table))), table
    finally:
        await writer.close()
        await maker.close()
