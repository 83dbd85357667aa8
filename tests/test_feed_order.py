"""The event feed and the audit log order by transaction id as a number: nothing is skipped where the ids gain a digit."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from service.app import utc_now
from service.broker import audit
from service.broker.audit import Actor, Target
from service.db import audit as audit_q
from tests.helpers import Keys
from tests.test_feed_horizon import write

# Burning transaction ids one subtransaction each: past a power of ten within this many, or the test is skipped.
MOST = 2_000_000


async def next_xid(db: asyncpg.Connection) -> int:
    """The transaction id the next writing transaction gets (roughly: ids are shared by the whole server)."""
    return int(await db.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))


async def burn_to(db: asyncpg.Connection, target: int) -> None:
    """Use up transaction ids (one per subtransaction, in one statement) until the next one is near target."""
    gap = target - await next_xid(db)
    if gap > 0:
        await db.execute("CREATE TEMP TABLE IF NOT EXISTS burn (x int)")
        await db.execute(
            f"DO $$ BEGIN FOR i IN 1..{gap} LOOP BEGIN INSERT INTO burn VALUES (i); "
            "EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$"
        )


async def test_an_event_whose_transaction_id_has_fewer_digits_is_not_skipped(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """E1 is written by transaction id 10^k - 2 or so and E2 by one past 10^k; the feed read one at a time gives E1
    then E2 (sorted as text, '10…' comes before '99…': E2 first, and its cursor passes over E1 for good)."""
    tenant_id = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    power = 10 ** len(str(await next_xid(db)))
    if power - await next_xid(db) > MOST:
        pytest.skip(f"the server's transaction ids are too far from {power}")
    await burn_to(db, power - 4)
    await write(db, tenant_id, "E1")
    await audited(db, tenant_id, "A1")
    await burn_to(db, power + 1)
    await write(db, tenant_id, "E2")
    await audited(db, tenant_id, "A2")
    txids = [r[0] for r in await db.fetch("SELECT txid::text FROM events ORDER BY id")]
    assert len(txids[0]) < len(txids[1]), txids  # the ids gained a digit between the two
    seen, after = [], None
    for _ in range(3):
        r = await client.get("/v1/events", params={"limit": 1, **({"after": after} if after else {})}, headers=keys.a)
        assert r.status_code == 200, r.text
        seen += [e["data"]["name"] for e in r.json()["items"]]
        after = r.json()["next_cursor"]
    assert seen == ["E1", "E2"]
    # The audit log pages the same way, oldest first (the API) and newest first (the console).
    oldest, after_pos = [], None
    for _ in range(2):
        rows = await audit_q.select_page(db, tenant_id, None, None, after_pos, 1)
        oldest += [r.target_id for r in rows]
        after_pos = (rows[-1].txid, rows[-1].id)
    assert oldest == ["A1", "A2"]
    newest, before_pos = [], None
    for _ in range(2):
        rows = await audit_q.select_newest(db, tenant_id, None, before_pos, 1)
        newest += [r.target_id for r in rows]
        before_pos = (rows[-1].txid, rows[-1].id)
    assert newest == ["A2", "A1"]


async def audited(db: asyncpg.Connection, tenant_id: int, name: str) -> None:
    """One audit row in a transaction of its own, its target named name."""
    await audit.record(
        db, tenant_id, Actor.cli("test@host"), "did.add", Target("did", name), None, None, None, utc_now()
    )
