"""Benchmark (issue 24 item 9): retiring a day of provider reports by DELETE (before 0018) and by DROP (now).

Standalone: `python -m tests.bench_purge_reports [--reports 500000]`. It starts an embedded PostgreSQL, migrates
it, and loads a day of `--reports` settled reports (bodies shaped like the provider's) plus a quarter as many
newer ones, twice: into the table as it was before 0018, purged by the sweeper's batched DELETE of then, and
into today's partitioned table, purged by the sweeper's drop_before(). Prints both times and sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from service.db import partitions
from service.db.schema import migrate
from service.embedded import EmbeddedPostgres
from tests.bench_purge import _size

BATCH = 500
OLD_LAYOUT = """
CREATE TABLE old_reports (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(),
    body bytea NOT NULL, outcome text NOT NULL DEFAULT 'pending', bridge text, tenant_id bigint, call_id uuid,
    reason text);
CREATE INDEX old_reports_pending ON old_reports (id) WHERE outcome = 'pending';
CREATE INDEX old_reports_unmatched ON old_reports (tenant_id, id) WHERE outcome = 'unmatched';
"""
# The sweeper's purge before 0018 (service/db/retention.py).
OLD_DELETE = """
DELETE FROM old_reports r USING (
    SELECT id FROM old_reports WHERE outcome <> 'pending' AND received_at < $1
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE r.id = due.id
"""
BODY = """convert_to(json_build_object('bridge', 918068200000, 'from', 919876500000 + i, 'to', 918765400000 + i,
    'source', 'C2C', 'start_at', '2026-12-01 10:00:00', 'end_at', '2026-12-01 10:01:00', 'duration', '60',
    'billing', '55', 'status', 'COMPLETED', 'status1', 'RECEIVED', 'status2', 'ANSWER', 'recording_url', '',
    'hangup_by', 'caller')::text, 'UTF8')"""


async def _fill(conn: asyncpg.Connection, table: str, count: int, at: datetime) -> None:
    await conn.execute(
        f"""INSERT INTO {table} (body, received_at, outcome, bridge)
        SELECT {BODY}, $2::timestamptz + (i % 3600) * interval '1 second', 'matched', '+918068200000'
        FROM generate_series(1, $1) i""",
        count,
        at,
    )


async def scenario(dsn: str, reports: int) -> dict[str, object]:
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        old_day, new_day, cutoff = now - timedelta(days=31), now - timedelta(days=1), now - timedelta(days=30)
        await conn.execute(OLD_LAYOUT)
        await _fill(conn, "old_reports", reports, old_day)
        await _fill(conn, "old_reports", reports // 4, new_day)
        await conn.execute("ANALYZE old_reports")
        loaded = await _size(conn, "old_reports")
        started, batches = time.perf_counter(), 0
        while True:
            async with conn.transaction():
                n = int((await conn.execute(OLD_DELETE, cutoff, BATCH)).rsplit(" ", 1)[-1])
            batches += 1
            if n < BATCH:
                break
        delete_s = time.perf_counter() - started
        after_delete = await _size(conn, "old_reports")
        started = time.perf_counter()
        await conn.execute("VACUUM old_reports")
        vacuum_s = time.perf_counter() - started

        await partitions.create_ahead(conn, old_day.date(), 0)
        await partitions.create_ahead(conn, new_day.date(), 0)
        await _fill(conn, "provider_reports", reports, old_day)
        await _fill(conn, "provider_reports", reports // 4, new_day)
        await conn.execute("ANALYZE provider_reports")
        loaded_partitioned = await _size(conn, "provider_reports")
        started = time.perf_counter()
        dropped = await partitions.drop_before(conn, {"provider_reports": cutoff})
        drop_s = time.perf_counter() - started
        return {
            "reports": reports,
            "delete": {
                "seconds": round(delete_s, 2),
                "transactions": batches,
                "mb_before": loaded >> 20,
                "mb_after": after_delete >> 20,
                "vacuum_seconds": round(vacuum_s, 2),
            },
            "drop": {
                "seconds": round(drop_s, 3),
                "partitions": dropped,
                "mb_before": loaded_partitioned >> 20,
                "mb_after": await _size(conn, "provider_reports") >> 20,
            },
        }
    finally:
        await conn.close()


async def main(reports: int) -> None:
    root = tempfile.mkdtemp(prefix="masking-bench-purge-reports-")
    server = EmbeddedPostgres(root)
    try:
        dsn = server.start()
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        print(json.dumps(await scenario(dsn, reports), indent=2))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=500_000)
    asyncio.run(main(parser.parse_args().reports))
