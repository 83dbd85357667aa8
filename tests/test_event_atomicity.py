"""Rule 8 for every kind of change: the event row is written by the very transaction that made the change."""

from __future__ import annotations

import asyncpg
import httpx

from service.provider.simulator import Fault
from tests.factories import open_session, place_call, pool, report_for
from tests.helpers import Keys
from tests.live import live_service

# The event's writing transaction (xid8) next to the xmin (the last writing transaction, a 32-bit xid) of the
# row it describes: the two are the same transaction exactly when the low 32 bits of txid equal xmin.
SAME_XACT = """
SELECT e.type, (e.txid::text::bigint % 4294967296) AS event_xact, r.xmin::text::bigint AS row_xact
FROM events e JOIN {table} r ON r.id::text = e.data->>'id'
WHERE e.type = $1 AND r.id = $2::uuid
"""


async def written_with(db: asyncpg.Connection, table: str, row_id: str, event_type: str) -> None:
    """Exactly one event of this type about the row, written by the transaction that last wrote the row."""
    rows = await db.fetch(SAME_XACT.format(table=table), event_type, row_id)
    assert len(rows) == 1, f"{event_type}: {len(rows)} events about {table} {row_id}"
    assert rows[0]["event_xact"] == rows[0]["row_xact"], (
        f"{event_type} was written by transaction {rows[0]['event_xact']}, "
        f"the change by {rows[0]['row_xact']}: not one transaction"
    )


async def test_a_close_a_ttl_change_and_a_bulk_expiry_each_write_their_event_in_their_own_transaction(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """session.updated (PATCH TTL), session.closed (close, expire by order) share the change's transaction id."""
    await pool(client, keys.a, dids=3)
    first = await open_session(client, keys.a, order="o1")
    await written_with(db, "sessions", first["id"], "session.created")
    r = await client.patch(f"/v1/sessions/{first['id']}", json={"ttl_seconds": 600}, headers=keys.a)
    assert r.status_code == 200, r.text
    await written_with(db, "sessions", first["id"], "session.updated")
    assert (await client.post(f"/v1/sessions/{first['id']}/close", headers=keys.a)).status_code == 200
    await written_with(db, "sessions", first["id"], "session.closed")
    second = await open_session(client, keys.a, order="o2")
    r = await client.post("/v1/sessions/expire", json={"order_id": "o2"}, headers=keys.a)
    assert r.json() == {"expired": 1}
    await written_with(db, "sessions", second["id"], "session.closed")


async def test_a_click_and_its_report_each_write_their_call_event_in_their_own_transaction(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """call.initiated is written by the transaction that records the provider's answer; call.completed by the report's."""
    async with live_service(dsn) as live:
        session = await open_session(live.http, keys.a, dids=["+918068281234"])
        live.sim.inject(Fault(report="none"))
        call = await place_call(live.http, keys.a, session)
        assert call["status"] == "initiated"
        await written_with(db, "calls", call["id"], "call.initiated")
        assert (
            await live.http.post(live.callback, content=report_for(call, billing=15, seconds=20))
        ).status_code == 200
        assert (await live.http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()["status"] == "completed"
        await written_with(db, "calls", call["id"], "call.completed")
