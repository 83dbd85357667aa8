"""Benchmark (issue 24 item 9): retiring a day of events and their deliveries by DELETE (before) and by DROP (now).

Standalone: `python -m tests.bench_purge [--events 1000000]`. It starts an embedded PostgreSQL, migrates it,
and loads the same rows twice: a day of `--events` events (each with one webhook delivery) plus a quarter
as many newer ones,
- into the layout before migration 0014 (unpartitioned events, deliveries with a cascading foreign key),
  purged the way the sweeper did: batches of 500 events (deliveries by the cascade), one transaction each;
- into today's partitioned tables, with a day partition per day, purged by the sweeper's drop_before().
It prints the time each purge took, the longest an event insert waited meanwhile (the drop takes a brief
exclusive lock), and the tables' size on disk after it (a DELETE frees nothing until
VACUUM; the drop gives the files back at once) and the VACUUM a DELETE then needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from service.db import partitions
from service.db.schema import migrate
from service.embedded import EmbeddedPostgres

BATCH = 500

# The events and deliveries tables as they were before migration 0014 (schema.sql at version 13).
OLD_LAYOUT = """
CREATE TABLE old_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    type text NOT NULL, created_at timestamptz NOT NULL, data jsonb NOT NULL,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE INDEX old_events_feed ON old_events (tenant_id, txid, id);
CREATE INDEX old_events_subject ON old_events (tenant_id, (coalesce(data->>'session_id', data->>'id')), id)
    WHERE type LIKE 'session.%' OR type LIKE 'call.%';
CREATE TABLE old_deliveries (
    event_id bigint NOT NULL REFERENCES old_events ON DELETE CASCADE,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL, created_at timestamptz NOT NULL,
    PRIMARY KEY (event_id, endpoint_id));
CREATE INDEX old_deliveries_due ON old_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX old_deliveries_endpoint ON old_deliveries (endpoint_id, created_at) WHERE status = 'pending';
CREATE INDEX old_deliveries_endpoint_due ON old_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
"""

# The sweeper's purge before partitioning (service/db/events.py at version 13).
OLD_DELETE = """
DELETE FROM old_events e USING (
    SELECT id FROM old_events WHERE created_at < $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE e.id = due.id
"""

EVENT_DATA = """jsonb_build_object('id', gen_random_uuid(), 'order_id', 'ORD-' || i, 'status', 'active',
    'did', '+918068200000', 'pool', 'default', 'expires_at', $2::timestamptz + interval '1 hour')"""


async def _fill(
    conn: asyncpg.Connection, tenant: int, events: str, deliveries: str, extra: str, count: int, at: datetime
) -> None:
    """`count` session.created events spread over the hour after `at`, each with one delivered delivery."""
    ids = await conn.fetch(
        f"""INSERT INTO {events} (tenant_id, type, created_at, data)
        SELECT $3, 'session.created', $2::timestamptz + (i % 3600) * interval '1 second', {EVENT_DATA}
        FROM generate_series(1, $1) i RETURNING id, created_at""",
        count,
        at,
        tenant,
    )
    columns = "event_id, endpoint_id, status, attempts, next_attempt_at, created_at" + extra
    values = "$1, 'delivered', 1, c, c" + (", c" if extra else "")
    await conn.execute(
        f"INSERT INTO {deliveries} ({columns}) SELECT e, {values} FROM unnest($2::bigint[], $3::timestamptz[]) AS t(e, c)",
        uuid.UUID(int=1),
        [r["id"] for r in ids],
        [r["created_at"] for r in ids],
    )


async def _size(conn: asyncpg.Connection, *tables: str) -> int:
    sizes = await conn.fetch(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c WHERE c.relname = ANY($1::text[])"
        " OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent::regclass::text = ANY($1::text[]))",
        list(tables),
    )
    return int(sizes[0][0])


async def scenario(dsn: str, events: int) -> dict[str, Any]:
    """Load a day of `events` events (and a quarter as many newer) in each layout, purge the day, time it."""
    conn = await asyncpg.connect(dsn)
    try:
        tenant = await conn.fetchval("INSERT INTO tenants (name) VALUES ('bench') RETURNING id")
        now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        old_day, new_day = now - timedelta(days=31), now - timedelta(days=1)
        await conn.execute(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret, created_at, updated_at)"
            " VALUES ($1, $2, 'http://127.0.0.1:9/', ARRAY['*'], 'x', $3, $3)",
            uuid.UUID(int=1),
            tenant,
            now,
        )
        cutoff = now - timedelta(days=30)

        # Before: one table, batched DELETE with the cascade to deliveries.
        await conn.execute(OLD_LAYOUT)
        await _fill(conn, tenant, "old_events", "old_deliveries", "", events, old_day)
        await _fill(conn, tenant, "old_events", "old_deliveries", "", events // 4, new_day)
        await conn.execute("ANALYZE old_events; ANALYZE old_deliveries")
        loaded = await _size(conn, "old_events", "old_deliveries")
        started = time.perf_counter()
        deleted, batches = 0, 0
        while True:
            async with conn.transaction():
                n = int((await conn.execute(OLD_DELETE, cutoff, BATCH)).rsplit(" ", 1)[-1])
            deleted, batches = deleted + n, batches + 1
            if n < BATCH:
                break
        delete_s = time.perf_counter() - started
        after_delete = await _size(conn, "old_events", "old_deliveries")
        started = time.perf_counter()
        await conn.execute("VACUUM old_events, old_deliveries")
        vacuum_s = time.perf_counter() - started
        await conn.execute("DROP TABLE old_deliveries, old_events")

        # Now: day partitions, dropped.
        await partitions.create_ahead(conn, old_day.date(), 0)
        await partitions.create_ahead(conn, new_day.date(), 0)
        await _fill(conn, tenant, "events", "webhook_deliveries", ", event_created_at", events, old_day)
        await _fill(conn, tenant, "events", "webhook_deliveries", ", event_created_at", events // 4, new_day)
        await conn.execute("ANALYZE events; ANALYZE webhook_deliveries")
        loaded_partitioned = await _size(conn, "events", "webhook_deliveries")
        # meanwhile another connection writes an event every 5 ms: how long does the drop make it wait?
        writer, stop, worst = await asyncpg.connect(dsn), asyncio.Event(), [0.0]

        async def write() -> None:
            while not stop.is_set():
                began = time.perf_counter()
                await writer.execute(
                    "INSERT INTO events (tenant_id, type, created_at, data) VALUES ($1, 'x', now(), '{}')", tenant
                )
                worst[0] = max(worst[0], time.perf_counter() - began)
                await asyncio.sleep(0.005)

        writing = asyncio.create_task(write())
        try:
            await asyncio.sleep(0.5)
            worst[0] = 0.0
            started = time.perf_counter()
            dropped = await partitions.drop_before(
                conn, {t: cutoff for t in ("events", "webhook_deliveries", "webhook_attempts")}
            )
            drop_s = time.perf_counter() - started
        finally:
            stop.set()
            await writing
            await writer.close()
        after_drop = await _size(conn, "events", "webhook_deliveries")
        return {
            "events_purged": events,
            "deliveries_purged": events,
            "rows_kept": events // 4,
            "delete": {
                "seconds": round(delete_s, 3),
                "events_per_s": round(deleted / delete_s),
                "transactions": batches,
                "mb_before": loaded >> 20,
                "mb_after": after_delete >> 20,
                "vacuum_seconds": round(vacuum_s, 3),
            },
            "drop": {
                "seconds": round(drop_s, 3),
                "partitions": dropped,
                "worst_concurrent_insert_ms": round(worst[0] * 1000),
                "mb_before": loaded_partitioned >> 20,
                "mb_after": after_drop >> 20,
            },
        }
    finally:
        await conn.close()


async def _standalone(events: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="masking-bench-purge-")
    server = EmbeddedPostgres(root)
    try:
        dsn = server.start()
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return await scenario(dsn, events)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_standalone(args.events)), indent=2))


if __name__ == "__main__":
    main()
