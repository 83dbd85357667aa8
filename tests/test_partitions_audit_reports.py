"""Day partitions of the audit log and provider reports: created ahead, dropped past their own retention by the
sweeper, read as one table, the audit log still append-only, and every lookup of a report by its id on an index."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.broker import audit, sweeps
from service.broker.audit import Actor, Target
from service.db import partitions as partitions_q
from service.db import reports as reports_q
from service.db import schema
from service.db.schema import migrate
from tests.helpers import FakeClock, Keys, dsn_for, index_names, make_settings, sealed_body

DAY = 86_400
NEW = ("provider_reports", "audit_log")


def days(start: date, count: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(count)]


def midday(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)


async def record(db: asyncpg.Connection, tenant_id: int | None, at: datetime, target: str = "x") -> int:
    """One audit row, written as an ops action writes it."""
    return await audit.record(
        db, tenant_id, Actor.cli("ops@host"), "did.drain", Target("did", target), None, None, None, at
    )


async def report(db: asyncpg.Connection, tenant_id: int | None, at: datetime, outcome: str = "unmatched") -> int:
    """One stored report of the tenant's (bridge on its DID), received at `at`."""
    report_id: int = await db.fetchval(
        "INSERT INTO provider_reports (body, received_at, outcome, reason, bridge, tenant_id)"
        " VALUES ($4, $1, $2, CASE WHEN $2 = 'unmatched' THEN 'no_call' END, '+918068200000', $3) RETURNING id",
        at,
        outcome,
        tenant_id,
        sealed_body(b"{}"),
    )
    return report_id


async def where(db: asyncpg.Connection, table: str) -> list[str]:
    return [r[0] for r in await db.fetch(f"SELECT tableoid::regclass::text FROM {table} ORDER BY id")]


async def test_the_sweeper_makes_audit_and_report_partitions_ahead_and_drops_each_past_its_own_retention(
    db: asyncpg.Connection, dsn: str, clock: FakeClock
) -> None:
    """Today and 3 days ahead exist after a sweep and take the day's rows; 40 days on, the reports' old days are
    dropped (30 days) and the audit log's kept (60 days); 70 days on, the audit log's first days go too."""
    sweeper = sweeps.Sweeper(make_settings(dsn, report_retention_days=30, audit_retention_days=60))
    today = clock().date()
    await sweeper.sweep_once(db, clock())
    existing = await partitions_q.day_partitions(db)
    assert {t: existing[t] for t in NEW} == {t: days(today, 4) for t in NEW}
    await record(db, 1, clock())
    await report(db, None, clock())
    assert await where(db, "audit_log") == [partitions_q.day_name("audit_log", today)]
    assert await where(db, "provider_reports") == [partitions_q.day_name("provider_reports", today)]

    clock.advance(40 * DAY)
    await sweeper.sweep_once(db, clock())
    existing = await partitions_q.day_partitions(db)
    later = days(today + timedelta(days=40), 4)
    assert existing["provider_reports"] == later and existing["audit_log"] == days(today, 4) + later
    assert await db.fetchval("SELECT count(*) FROM provider_reports") == 0
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 1

    clock.advance(30 * DAY)
    await sweeper.sweep_once(db, clock())
    existing = await partitions_q.day_partitions(db)
    assert existing["audit_log"] == later + days(today + timedelta(days=70), 4)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_a_day_holding_a_pending_report_is_kept_past_the_retention_until_it_is_settled(
    db: asyncpg.Connection, clock: FakeClock
) -> None:
    """A report still pending (not yet matched) keeps its day's partition; once settled, the day is dropped."""
    today = clock().date()
    await partitions_q.create_ahead(db, today, 1)
    pending = await reports_q.insert_report(db, b"{}", clock())
    await report(db, None, midday(today + timedelta(days=1)))
    cutoffs = partitions_q.retention_cutoffs(clock(), midday(today + timedelta(days=5)), clock())
    assert await partitions_q.drop_before(db, cutoffs) == [
        partitions_q.day_name("provider_reports", today + timedelta(days=1))
    ]
    assert [r["id"] for r in await db.fetch("SELECT id FROM provider_reports")] == [pending]
    await reports_q.settle_report(db, pending, "unparseable", None)
    assert await partitions_q.drop_before(db, cutoffs) == [partitions_q.day_name("provider_reports", today)]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {p} SET reason = 'nothing to see'",
        "DELETE FROM {p}",
        "TRUNCATE {p}",
        "UPDATE audit_log SET at = at + interval '1 day'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "TRUNCATE audit_log_default",
    ],
)
async def test_a_day_partition_of_the_audit_log_refuses_change_and_delete_like_the_table(
    db: asyncpg.Connection, clock: FakeClock, statement: str
) -> None:
    """UPDATE, DELETE and TRUNCATE sent to the audit log, its default partition or a day's partition itself all
    raise in the database."""
    await partitions_q.create_ahead(db, clock().date(), 0)
    await record(db, 1, clock())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(statement.format(p=partitions_q.day_name("audit_log", clock().date())))
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE reason IS NULL") == 1


async def test_audit_rows_written_before_their_days_partition_move_into_it_and_stay_append_only(
    db: asyncpg.Connection, clock: FakeClock
) -> None:
    """An audit row in the default partition moves, id kept, into its day's partition when it is made; nothing
    else may delete it afterwards."""
    written = await record(db, 1, clock())
    assert await where(db, "audit_log") == ["audit_log_default"]
    await partitions_q.create_ahead(db, clock().date(), 0)
    assert await where(db, "audit_log") == [partitions_q.day_name("audit_log", clock().date())]
    assert [r["id"] for r in await db.fetch("SELECT id FROM audit_log")] == [written]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM audit_log")


async def test_audit_rows_and_reports_over_several_day_partitions_page_over_http_without_gaps(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """GET /v1/audit and GET /v1/reports page, two at a time, through rows spread over four day partitions and
    the default one: every row once, in order."""
    tenant = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    first = clock().date()
    await partitions_q.create_ahead(db, first, 3)
    spread = [midday(first - timedelta(days=2))] + [midday(d) for d in days(first, 4)] * 2
    audited = [await record(db, tenant, at, f"t{i}") for i, at in enumerate(spread)]
    reported = [await report(db, tenant, at) for at in spread]
    assert "audit_log_default" in await where(db, "audit_log")

    seen: list[int] = []
    cursor = None
    for _ in range(20):
        page = (
            await client.get("/v1/audit", params={"limit": 2, **({"after": cursor} if cursor else {})}, headers=keys.a)
        ).json()
        if not page["items"]:
            break
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [f"aud_{i}" for i in audited]

    listed: list[int] = []
    cursor = None
    for _ in range(20):
        r = await client.get(
            "/v1/reports", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=keys.a
        )
        assert r.status_code == 200, r.text
        listed += [item["id"] for item in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert listed == sorted(reported, reverse=True)


def scans(plan: dict[str, Any]) -> list[str]:
    """Every node type of an EXPLAIN (FORMAT JSON) plan, a Seq Scan with its table: `Seq Scan on t`."""
    node = str(plan["Node Type"])
    if node == "Seq Scan":
        node += " on " + str(plan["Relation Name"])
    return [node, *(t for child in plan.get("Plans", []) for t in scans(child))]


def whole_reads(plan: dict[str, Any]) -> list[str]:
    """The report partitions a plan reads whole, but for the (empty) default one."""
    return [s for s in scans(plan) if s.startswith("Seq Scan on provider_reports") and not s.endswith("_default")]


async def plan_of(db: asyncpg.Connection, sql: str, *args: object) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))[0]["Plan"]
    return plan


async def test_every_lookup_of_a_report_by_its_id_alone_reads_an_index_of_each_partition(
    db: asyncpg.Connection, clock: FakeClock
) -> None:
    """With 20,000 reports over five day partitions: locking, settling and re-matching a pending report, listing
    pending ones, a page of GET /v1/reports and the re-send check's join from calls.report_id read indexes, no
    partition is scanned whole, and the join reads only the days from the earlier call's on."""
    first = clock().date()
    await partitions_q.create_ahead(db, first, 4)
    tenant = await db.fetchval("INSERT INTO tenants (name) VALUES ('t') RETURNING id")
    await db.execute(
        """INSERT INTO provider_reports (body, received_at, outcome, tenant_id)
        SELECT '{}', $1::timestamptz + (i % 5) * interval '1 day',
               CASE WHEN i % 1000 = 0 THEN 'pending' ELSE 'matched' END, $2
        FROM generate_series(1, 20000) i""",
        midday(first),
        tenant,
    )
    await db.execute("ANALYZE provider_reports")
    pending = await db.fetchval("SELECT id FROM provider_reports WHERE outcome = 'pending' LIMIT 1")
    plans = [
        await plan_of(db, reports_q.LOCK_REPORT, pending),
        await plan_of(db, reports_q.SETTLE_REPORT, pending, "unmatched", "no_call"),
        await plan_of(
            db,
            reports_q.GIVE_UP.sql,
            *reports_q.GIVE_UP.args(
                {"report_id": pending, "reason": "matching_failed", "bridge": None, "body_text": "", "now": clock()}
            ),
        ),
        await plan_of(
            db,
            "SELECT id FROM provider_reports WHERE outcome = 'pending' AND received_at <= $1 ORDER BY id LIMIT $2",
            clock(),
            100,
        ),
    ]
    for plan in plans:
        assert not whole_reads(plan) and index_names(plan), plan
        # each partition's provider_reports_pending (named <partition>_id_idx): only pending rows are in it
        assert all(n.endswith("_id_idx") for n in index_names(plan) if n.startswith("provider_reports")), plan
    page = await plan_of(
        db,
        """SELECT id FROM provider_reports WHERE outcome = ANY($2::text[])
           AND (tenant_id = $1 OR ($1::bigint IS NULL AND tenant_id IS NULL)) AND ($3::bigint IS NULL OR id < $3)
           ORDER BY id DESC LIMIT $4""",
        tenant,
        ["matched", "duplicate"],
        None,
        50,
    )
    assert not whole_reads(page) and "Sort" not in scans(page), page
    # the re-send check's join, from a call of the last day: only that day's report partition (and the default)
    joined = await plan_of(
        db,
        """SELECT r.received_at FROM (SELECT $1::bigint AS report_id, $2::timestamptz AS created_at) p
           LEFT JOIN provider_reports r ON r.id = p.report_id AND r.received_at > p.created_at - interval '1 day'""",
        pending,
        midday(first + timedelta(days=4)),
    )
    assert not whole_reads(joined), joined
    assert set(index_names(joined)) <= {
        f"{partitions_q.day_name('provider_reports', first + timedelta(days=d))}_pkey" for d in (3, 4)
    } | {"provider_reports_default_pkey"}, joined


async def test_the_migration_keeps_every_audit_row_and_report_with_their_ids(server_dsn: str) -> None:
    """A database one version older with audit rows and reports: after the migration every row is there with its
    id, new rows continue the ids, and the audit log is still append-only."""
    migration = next(m for m in schema.migrations() if m.name.endswith("_partition_audit_reports.sql"))
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS mig_audit_reports WITH (FORCE)")
        await admin.execute("CREATE DATABASE mig_audit_reports")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_for(server_dsn, "mig_audit_reports"))
    try:
        await conn.execute(Path(__file__).with_name("schema_v1.sql").read_text())
        for m in schema.migrations():
            if m.version < migration.version:
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", m.version)
        now = datetime.now(UTC)
        for age in (40, 2, 0):
            await record(conn, 1, now - timedelta(days=age), f"age-{age}")
            await report(conn, None, now - timedelta(days=age))
        before = {t: await conn.fetch(f"SELECT * FROM {t} ORDER BY id") for t in NEW}
        assert migration.name in (await migrate(conn)).applied
        for table, rows in before.items():
            assert [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY id")] == [dict(r) for r in rows]
            assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = $1", table) == "p"
        assert await record(conn, 1, now) > before["audit_log"][-1]["id"]
        assert await report(conn, None, now) > before["provider_reports"][-1]["id"]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_log")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE audit_log_default")
    finally:
        await conn.close()
