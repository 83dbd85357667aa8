"""SQL for the day partitions of the append-only tables: created ahead, emptied from the default, dropped when old."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from service.db import Conn

# Each partitioned table (schema.sql) and its partition key. A day's partitions are created together;
# deliveries are keyed by their event's time, so a day's deliveries go with the day's events.
TABLES = {
    "events": "created_at",
    "webhook_deliveries": "event_created_at",
    "webhook_attempts": "at",
    "provider_reports": "received_at",
    "audit_log": "at",
}
# The order tables' old days are dropped in (deliveries before their events); each has its own retention.
DROP_ORDER = ("webhook_deliveries", "webhook_attempts", "events", "provider_reports", "audit_log")
# A day's partition is kept past its retention while it holds a row matching this (a report still pending:
# the sweeper settles it first), found through the partition's index of such rows.
_KEEP = {"provider_reports": "outcome = 'pending'"}
# Run on each new day partition: the audit log's TRUNCATE guard (a statement trigger, which PostgreSQL does
# not clone onto partitions as it does the row trigger).
_AFTER_CREATE = {
    "audit_log": "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON {name}"
    " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
}
# The audit log refuses every DELETE but the one its transaction-local cut-off allows: moving a day's rows
# out of the default partition into the day's new one sets the cut-off to the day's end, in create_day's
# own transaction only.
_ALLOW_AUDIT_MOVE = "SELECT set_config('masking.audit_purge_before', $1, true)"
_DAY_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")
# Any fixed number: partition maintenance by several processes at once takes turns.
_LOCK = 7_305_118_423
# A drop or create needs a short exclusive lock on the table: wait at most this long behind a running
# query (and keep the queue behind it short), then give up until the next pass. Shorter than PostgreSQL's
# deadlock_timeout (1 s by default): when a request's statement and this DDL wait on each other (a new
# partition locks the tables its foreign keys name), this side gives up first, and the request goes on;
# with 2 s the request's deadlock check came first and it answered 500 (seen in CI: a webhook Test).
LOCK_TIMEOUT = "500ms"


_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1 AND relnamespace = current_schema()::regnamespace)"


def day_name(table: str, day: date) -> str:
    """The name of a table's partition for one UTC day: events_p20261207."""
    return f"{table}_p{day:%Y%m%d}"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


async def day_partitions(conn: Conn) -> dict[str, list[date]]:
    """The day partitions that exist, per partitioned table, oldest first."""
    rows = await conn.fetch(
        """
        SELECT parent.relname AS parent, child.relname AS child FROM pg_inherits i
        JOIN pg_class parent ON parent.oid = i.inhparent JOIN pg_class child ON child.oid = i.inhrelid
        WHERE parent.relname = ANY($1::text[]) AND parent.relnamespace = current_schema()::regnamespace
        """,
        list(TABLES),
    )
    found: dict[str, list[date]] = {table: [] for table in TABLES}
    for r in rows:
        match = _DAY_NAME.match(r["child"])
        if match and match["table"] == r["parent"]:
            found[r["parent"]].append(datetime.strptime(match["day"], "%Y%m%d").date())
    return {table: sorted(days) for table, days in found.items()}


async def create_day(conn: Conn, table: str, day: date) -> bool:
    """Create one table's partition for one day (its own transaction); False if it already existed.

    Rows of that day already in the default partition (written while the partition was missing) are
    moved into the new one in the same transaction: PostgreSQL refuses the partition otherwise.
    """
    key, name = TABLES[table], day_name(table, day)
    start, end = _bounds(day)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        if await conn.fetchval(_EXISTS, name):
            return False
        # The lock the CREATE takes anyway, taken before the look for strays: a row of the day written to the
        # default partition between the look and the CREATE made PostgreSQL refuse the partition (CheckViolation).
        # The parent first, as every insert locks it before its partition.
        await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        in_range = f"{key} >= $1 AND {key} < $2"
        stray = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table}_default WHERE {in_range})", start, end)
        if stray:
            await conn.execute(f"CREATE TEMPORARY TABLE partition_moving (LIKE {table}) ON COMMIT DROP")
            if table == "audit_log":
                await conn.execute(_ALLOW_AUDIT_MOVE, end.isoformat())
            await conn.execute(
                f"WITH m AS (DELETE FROM {table}_default WHERE {in_range} RETURNING *)"
                " INSERT INTO partition_moving SELECT * FROM m",
                start,
                end,
            )
        await conn.execute(
            f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        if table in _AFTER_CREATE:
            await conn.execute(_AFTER_CREATE[table].format(name=name))
        if stray:
            await conn.execute(f"INSERT INTO {table} OVERRIDING SYSTEM VALUE SELECT * FROM partition_moving")
            if table == "audit_log":
                await conn.execute(_ALLOW_AUDIT_MOVE, "")
    return True


async def drop_day(conn: Conn, table: str, day: date) -> bool:
    """Drop one table's partition for one day (its own transaction); False if it was gone already, or is kept
    for a row it must not lose yet (a pending report)."""
    name = day_name(table, day)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        if table in _KEEP and await conn.fetchval(_EXISTS, name):
            # the drop's lock first, so that nothing is written to it between the look and the drop
            await conn.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name} WHERE {_KEEP[table]})"):
                return False
        status = await conn.execute(f"DROP TABLE IF EXISTS {name}")
    return status == "DROP TABLE"


async def create_ahead(conn: Conn, today: date, days_ahead: int) -> list[str]:
    """Create every missing day partition from today to `days_ahead` days after it; the names created.

    A partition whose lock is not granted within LOCK_TIMEOUT is left for the next pass.
    """
    existing = await day_partitions(conn)
    created = []
    for offset in range(days_ahead + 1):
        day = today + timedelta(days=offset)
        for table in TABLES:
            if day in existing[table]:
                continue
            try:
                if await create_day(conn, table, day):
                    created.append(day_name(table, day))
            except asyncpg.LockNotAvailableError:
                pass
    return created


async def drop_before(conn: Conn, before: Mapping[str, datetime]) -> list[str]:
    """Drop every day partition of each table in `before` whose whole day is older than the table's time there;
    the names dropped.

    Deliveries go before their events; a partition whose lock is not granted in time is left for the next pass.
    """
    existing = await day_partitions(conn)
    dropped = []
    for table in DROP_ORDER:
        if table not in before:
            continue
        for day in existing[table]:
            if _bounds(day)[1] > before[table]:
                break
            try:
                if await drop_day(conn, table, day):
                    dropped.append(day_name(table, day))
            except asyncpg.LockNotAvailableError:
                break
    return dropped


def retention_cutoffs(events: datetime, reports: datetime, audit: datetime) -> dict[str, datetime]:
    """Each partitioned table's retention cut-off: the event retention's for events, deliveries and attempts."""
    return {
        "events": events,
        "webhook_deliveries": events,
        "webhook_attempts": events,
        "provider_reports": reports,
        "audit_log": audit,
    }


# Rows in a default partition (written while their day had no partition) are purged as before: in
# batches, SKIP LOCKED. The default is empty in steady state, so these read next to nothing.
_DELETE_DEFAULT = {
    "events": """
DELETE FROM events_default e USING (
    SELECT id FROM events_default WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE e.id = due.id""",
    "webhook_deliveries": """
DELETE FROM webhook_deliveries_default d USING (
    SELECT event_id, endpoint_id FROM webhook_deliveries_default WHERE event_created_at < $1
    LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id""",
    "webhook_attempts": """
DELETE FROM webhook_attempts_default a USING (
    SELECT id FROM webhook_attempts_default WHERE at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE a.id = due.id""",
}


async def delete_from_default(conn: Conn, table: str, before: datetime, batch: int) -> int:
    """Delete one batch of a table's default-partition rows older than `before`."""
    return int((await conn.execute(_DELETE_DEFAULT[table], before, batch)).rsplit(" ", 1)[-1])
