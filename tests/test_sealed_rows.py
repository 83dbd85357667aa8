"""Party numbers are stored sealed: no row of any table holds one, while every read still answers with them."""

from __future__ import annotations

from typing import Any

import asyncpg

from service.db import sealed
from service.provider.simulator import Fault
from tests.factories import open_session, report_for
from tests.helpers import Keys
from tests.live import live_service

DID, DID2 = "+918068281234", "+918068281235"
CUSTOMER, AGENT, NEW_AGENT, STRANGER = "+919812340001", "+919812340002", "+919812340003", "+919812340009"


async def _rows_with(db: asyncpg.Connection, needles: list[str]) -> list[str]:
    """Every (table, row) whose text holds one of these numbers, in E.164 or bare-digit form."""
    tables = [
        r["relname"]
        for r in await db.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
    ]
    found = []
    for table in tables:
        for row in await db.fetch(f'SELECT t::text AS row FROM "{table}" t'):
            # bytea shows as hex in a row's text: look into it too, decoded
            text = row["row"]
            for needle in needles:
                if needle[1:] in text or needle[1:].encode().hex() in text:
                    found.append(f"{table}: {sealed.mask(needle)}")
    return found


async def test_no_table_holds_a_party_number_in_clear_and_reads_still_show_them(keys: Keys, dsn: str) -> None:
    """Sessions, a reassignment, a reported call, an unmatched report and a keyed create leave no number in clear."""
    db = await asyncpg.connect(dsn)
    try:
        async with live_service(dsn) as live:
            session = await open_session(live.http, keys.a, dids=[DID, DID2], customer=CUSTOMER, agent=AGENT)
            r = await live.http.post(
                "/v1/sessions",
                json={"order_id": "keyed", "customer": CUSTOMER, "agent": STRANGER},
                headers={**keys.a, "Idempotency-Key": "k-1"},
            )
            assert r.status_code == 201, r.text
            r = await live.http.patch(f"/v1/sessions/{session['id']}", json={"agent": NEW_AGENT}, headers=keys.a)
            assert r.status_code == 200, r.text
            live.sim.inject(Fault(report="none"))
            r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
            assert r.status_code == 202, r.text
            call: dict[str, Any] = r.json()
            assert (await live.http.post(live.callback, content=report_for(call))).status_code == 200
            stray = report_for({"bridge": DID, "from": STRANGER, "to": CUSTOMER})
            assert (await live.http.post(live.callback, content=stray)).status_code == 200

            # every read answers with the numbers as before
            got = (await live.http.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()
            assert (got["customer"], got["agent"]) == (CUSTOMER, NEW_AGENT)
            got_call = (await live.http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()
            assert got_call["status"] == "completed"
            assert {got_call["from"], got_call["to"]} == {CUSTOMER, NEW_AGENT}
            listed = (await live.http.get(f"/v1/sessions?customer={CUSTOMER}", headers=keys.a)).json()
            assert len(listed["items"]) == 2
            events = (await live.http.get("/v1/events", headers=keys.a)).json()["items"]
            created = [e for e in events if e["type"] == "session.created"]
            assert {e["data"]["customer"] for e in created} == {CUSTOMER}
            unmatched = [e for e in events if e["type"] == "report.unmatched"]
            assert len(unmatched) == 1 and STRANGER[1:] in unmatched[0]["data"]["body"]
            again = await live.http.post(
                "/v1/sessions",
                json={"order_id": "keyed", "customer": CUSTOMER, "agent": STRANGER},
                headers={**keys.a, "Idempotency-Key": "k-1"},
            )
            assert again.status_code == 201 and again.json()["agent"] == STRANGER

        assert await _rows_with(db, [CUSTOMER, AGENT, NEW_AGENT, STRANGER]) == []
    finally:
        await db.close()


async def test_the_scan_finds_a_number_stored_in_clear(db: asyncpg.Connection) -> None:
    """The row scan above bites: a number written in clear on purpose is found."""
    await db.execute("CREATE TABLE scratch (note text)")
    await db.execute("INSERT INTO scratch VALUES ($1)", f"call {CUSTOMER}")
    assert await _rows_with(db, [CUSTOMER]) == [f"scratch: {sealed.mask(CUSTOMER)}"]
