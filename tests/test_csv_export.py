"""The calls CSV over real HTTP: client text cannot become a spreadsheet formula, and a failure mid-export shows."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from tests.factories import open_session, pool
from tests.helpers import Keys
from tests.live import live_service
from tests.processes import ServeProcess, masking_env

DAY = "2026-11-20"
AT = datetime(2026, 11, 20, 10, tzinfo=UTC)


async def calls_of(db: asyncpg.Connection, session: dict[str, Any], count: int) -> None:
    """`count` completed calls of the session on DAY, a second apart (written as a finished call is stored)."""
    await db.execute(
        """
        INSERT INTO calls (id, tenant_id, session_id, first, from_ct, from_ix, from_mask, to_ct, to_ix, to_mask,
                           bridge, status, in_flight, created_at, billing_seconds)
        SELECT gen_random_uuid(), s.tenant_id, s.id, 'agent', s.agent_ct, s.agent_ix, s.agent_mask, s.customer_ct,
               s.customer_ix, s.customer_mask, s.did, 'completed', false,
               $2::timestamptz + i * interval '1 second', 30
        FROM sessions s, generate_series(1, $3) i WHERE s.id = $1::uuid
        """,
        session["id"],
        AT,
        count,
    )


async def test_client_text_starting_like_a_formula_is_quoted_in_the_csv(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """An order id starting with =, +, -, @, a tab or a carriage return comes out prefixed with ' (OWASP's rule),
    and any other order id exactly as given."""
    orders = ['=HYPERLINK("http://x","y")', "+1+1", "-2", "@SUM(A1)", "\tTAB", "\rCR", "ORD-7=1"]
    async with live_service(dsn) as live:
        await pool(live.http, keys.a, dids=len(orders))
        for i, order in enumerate(orders):
            customer, agent = f"+9198765{i:05d}", f"+9187654{i:05d}"
            session = await open_session(live.http, keys.a, order_id=order, customer=customer, agent=agent)
            await calls_of(db, session, 1)
        r = await live.http.get("/v1/calls.csv", params={"from": DAY, "to": DAY}, headers=keys.a)
    assert r.status_code == 200
    rows = list(csv.reader(io.StringIO(r.text, newline="")))
    got = sorted(row[2] for row in rows[1:])
    want = sorted(["'" + o for o in orders[:-1]] + [orders[-1]])
    assert got == want


async def test_a_database_failure_mid_export_ends_the_transfer_incomplete(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """`masking serve`'s export whose database connection is cut after the 200 and the header: the client sees
    an incomplete transfer (no last chunk), never a clean end it could take for the whole file."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_LOG_LEVEL="info")
    with ServeProcess(env) as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            session = await open_session(http, keys.a, dids=1)
            await calls_of(db, session, 3)
            blocker = await asyncpg.connect(dsn)
            try:
                # The export's first read of calls waits behind this lock; its backend is cut meanwhile.
                async with blocker.transaction():
                    await blocker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                    async with http.stream(
                        "GET", "/v1/calls.csv", params={"from": DAY, "to": DAY}, headers=keys.a
                    ) as r:
                        assert r.status_code == 200
                        chunks = r.aiter_raw()
                        assert (await anext(chunks)).startswith(b"call_id,")
                        assert await db.fetchval("SELECT pg_terminate_backend($1)", await wait_for_lock_waiter(db))
                        with pytest.raises(httpx.RemoteProtocolError):
                            async for _ in chunks:
                                pass
            finally:
                await blocker.close()
        assert "csv_export_failed" in service.output


async def wait_for_lock_waiter(db: asyncpg.Connection) -> int:
    """The pid of the backend of this database waiting for a lock (the export's read)."""
    for _ in range(500):
        pid = await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("the export never waited for the lock")
