"""The event feed across overlapping transactions: a cursor handed out never skips an event committed later."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from service.db.events import insert_events
from tests.helpers import Keys


@asynccontextmanager
async def transaction(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own with a transaction open on it (rolled back unless committed)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("BEGIN")
        yield conn
    finally:
        await conn.close()


async def write(conn: asyncpg.Connection, tenant_id: int, name: str) -> None:
    """One event, by the service's own event writer, in the connection's open transaction."""
    await insert_events(conn, datetime.now(UTC), [(tenant_id, "webhook.test", json.dumps({"name": name}).encode())])


async def walk(client: httpx.AsyncClient, keys: Keys, after: str | None) -> tuple[list[str], str | None]:
    """Read the feed two at a time from a cursor until a page comes back empty: the names seen and the cursor."""
    names: list[str] = []
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        r = await client.get("/v1/events", params=params, headers=keys.a)
        assert r.status_code == 200, r.text
        page = r.json()
        if not page["items"]:
            return names, after
        names += [e["data"]["name"] for e in page["items"]]
        after = page["next_cursor"]


async def test_an_event_committed_after_a_cursor_was_handed_out_is_on_the_next_page(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, dsn: str
) -> None:
    """C takes its transaction id, A begins and writes, B writes and commits, C writes and commits; a reader walks
    the feed; A writes again and commits: walking on from the reader's cursor gives A's and B's events, once each.

    Paging by id alone skips A's first event (its id is below C's); without the snapshot-horizon guard the reader
    sees B, whose transaction is younger than A's, and its cursor then passes over everything A commits.
    """
    tenant_id = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    async with transaction(dsn) as c, transaction(dsn) as a, transaction(dsn) as b:
        await c.fetchval("SELECT pg_current_xact_id()")  # C's transaction is the oldest
        await write(a, tenant_id, "A1")  # A's transaction is next; its event takes the lowest id
        await write(b, tenant_id, "B")
        await b.execute("COMMIT")
        await write(c, tenant_id, "C")
        await c.execute("COMMIT")
        before, cursor = await walk(client, keys, None)
        await write(a, tenant_id, "A2")
        await a.execute("COMMIT")
    after, _ = await walk(client, keys, cursor)
    assert sorted(before + after) == ["A1", "A2", "B", "C"], f"before the commit {before}, after it {after}"
