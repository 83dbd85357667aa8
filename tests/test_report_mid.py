"""Reports with and without `mid`, as the provider may send them, from the simulator over real HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import msgspec
import pytest

from service.provider.simulator import Fault
from tests.factories import open_session, place_call
from tests.helpers import Keys, call_status
from tests.live import live_service

DID = "+918068281234"


def parse(value: str) -> datetime:
    return msgspec.json.decode(f'"{value}"'.encode(), type=datetime)


@pytest.mark.parametrize("send_mid", [False, True], ids=["without-mid", "with-mid"])
async def test_the_simulators_report_completes_the_call_and_tells_it_from_its_placement(
    dsn: str, keys: Keys, db: asyncpg.Connection, send_mid: bool
) -> None:
    """The report (with `mid` or without) matches; it starts no earlier than the call was placed, ends duration later."""
    async with live_service(dsn) as live:
        r = await live.http.post(live.sim_url + "/_sim/settings", json={"send_mid": send_mid})
        assert r.status_code == 204, r.text
        call = await place_call(live.http, keys.a, await open_session(live.http, keys.a, dids=[DID]))
        done = await call_status(live, keys, call["id"], "completed")
        report = live.sim.reports_sent[-1]
    assert (report.get("mid") == call["id"]) is send_mid and ("mid" in report) is send_mid
    placed = parse(done["created_at"]).replace(microsecond=0)  # the provider's times are whole seconds
    started, ended = parse(done["started_at"]), parse(done["ended_at"])
    assert started >= placed, f"the report says the call started {placed - started} before it was placed"
    assert ended - started == timedelta(seconds=done["duration_seconds"])
    assert await db.fetchval("SELECT outcome FROM provider_reports") == "matched"


async def test_a_different_report_naming_a_finished_call_by_mid_leaves_the_call_in_flight_alone(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """Call 1 reported (with its mid), call 2 in flight: another report naming call 1 by mid is not applied to call 2."""
    async with live_service(dsn) as live:
        live.sim.send_mid = True
        session = await open_session(live.http, keys.a, dids=[DID], max_calls=3)
        first = await place_call(live.http, keys.a, session)
        await call_status(live, keys, first["id"], "completed")
        live.sim.inject(Fault(report="none"))
        second = await place_call(live.http, keys.a, session)
        other = {**live.sim.reports_sent[-1], "billing": "7", "duration": "9"}  # call 1 told again, differently
        assert other["mid"] == first["id"]
        assert (await live.http.post(live.callback, json=other)).status_code == 200
        assert (await live.http.get(f"/v1/calls/{second['id']}", headers=keys.a)).json()["status"] == "initiated"
        assert (await live.http.get(f"/v1/calls/{first['id']}", headers=keys.a)).json()["billing_seconds"] != 7
    rows = await db.fetch("SELECT outcome, reason FROM provider_reports ORDER BY id")
    assert [(r["outcome"], r["reason"]) for r in rows] == [("matched", None), ("duplicate", "call_already_reported")]
