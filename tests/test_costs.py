"""Costs over real HTTP with the simulator: per-pool calls, minutes and cost in /v1/stats, the CSV export, the sweep."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from datetime import datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from service.broker import costs
from service.broker.costs import CostSweep, CostTally
from service.db import reconcile as reconcile_q
from service.db.pool import create_pool
from service.provider.calllog import CallLog
from service.provider.simulator import Fault
from tests.factories import open_session
from tests.helpers import Keys
from tests.live import Live, live_service
from tests.test_reconcile import place, settled

DID = "+918068281234"
IST = ZoneInfo("Asia/Kolkata")
# Several calls per session in a test (the default allows 3 per 10 minutes).
CALLS = {"session_calls_per_window": 10}


async def reported_calls(live: Live, keys: Keys, count: int) -> list[dict[str, Any]]:
    """A session's calls, each completed by its callback report (so without a cost), a second apart, oldest first."""
    session = await open_session(live.http, keys.a, dids=[DID], max_calls=count)
    done = []
    for _ in range(count):
        # The simulator's conversations start on the whole second after the click: one click per second keeps
        # two calls from having the very same conversation (which the sweep would rightly leave unpriced).
        await asyncio.sleep(1 - time.time() % 1)
        call = await place(live, keys, session, Fault(report="answered"))
        done.append(await settled(live, keys, call["id"]))
    return done


async def sweep_costs(live: Live, dsn: str, at: datetime) -> CostTally | None:
    """One run of a fresh process's daily cost sweep at `at`, reading the simulator's call log."""
    async with httpx.AsyncClient() as http:
        log = CallLog(http, live.sim_url + "/api/v2/", "provider-token-xyz", IST, 5, 50)
        pool = await create_pool(dsn, 1)
        try:
            async with pool.acquire() as worker:
                return await CostSweep(log, IST).run(worker, at)
        finally:
            await pool.close()


def tomorrow_at_3() -> datetime:
    """03:00 tomorrow in the provider's zone: today's calls are then yesterday's, and their log settled."""
    return datetime.combine(datetime.now(IST).date() + timedelta(days=1), dt_time(3), IST)


async def calls_with_costs(live: Live, keys: Keys, dsn: str, unpriced: int, priced: int) -> list[dict[str, Any]]:
    """`unpriced` calls the call log does not show, then `priced` calls the cost sweep priced from it."""
    calls = await reported_calls(live, keys, unpriced + priced)
    hidden = [r for r in live.sim.call_log if r["mid"] in {c["id"] for c in calls[:unpriced]}]
    for row in hidden:
        live.sim.call_log.remove(row)
    assert await sweep_costs(live, dsn, tomorrow_at_3()) == CostTally(priced=priced, not_found=unpriced)
    return [(await live.http.get(f"/v1/calls/{c['id']}", headers=keys.a)).json() for c in calls]


async def test_stats_show_each_pools_calls_minutes_and_known_cost_of_the_last_day_and_month(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """Calls without a known cost count as calls but add nothing to the cost; a call 2 days old is only in
    the 30 days, one 40 days old in neither; the sum is exact decimal."""
    async with live_service(dsn, **CALLS) as live:
        calls = await calls_with_costs(live, keys, dsn, unpriced=2, priced=2)
        assert [c["cost"] is not None for c in calls] == [False, False, True, True]
        old, older = calls[0]["id"], calls[1]["id"]
        await db.execute("UPDATE calls SET created_at = now() - interval '2 days' WHERE id = $1::uuid", old)
        await db.execute("UPDATE calls SET created_at = now() - interval '40 days' WHERE id = $1::uuid", older)
        r = await live.http.get("/v1/stats", headers=keys.a)
        assert r.status_code == 200, r.text
        other = await live.http.get("/v1/stats", headers=keys.b)
    (pool,) = r.json()["pools"]
    assert pool["dids"] == 1 and "headroom" in pool and "active_sessions" in pool
    priced = calls[2:]
    cost = str(sum((Decimal(c["cost"]) for c in priced), Decimal(0)))
    day_seconds = sum(c["billing_seconds"] for c in priced)
    assert pool["last_24h"] == {
        "calls": 2,
        "minutes": round(day_seconds / 60, 2),
        "cost": cost,
        "priced_calls": 2,
    }
    assert pool["last_30d"] == {
        "calls": 3,
        "minutes": round((day_seconds + calls[0]["billing_seconds"]) / 60, 2),
        "cost": cost,
        "priced_calls": 2,
    }
    assert all(p["last_30d"]["calls"] == 0 for p in other.json()["pools"])


async def test_the_csv_export_streams_a_tenants_calls_in_range_with_costs_and_no_party_numbers(
    dsn: str, keys: Keys, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows come oldest first in batches (keyset over created_at ties), only the range's, only the tenant's,
    with cost and pulse, and neither party's number anywhere in the file."""
    monkeypatch.setattr(costs, "CSV_BATCH", 2)
    async with live_service(dsn, **CALLS) as live:
        calls = await calls_with_costs(live, keys, dsn, unpriced=1, priced=3)
        tied = "2026-11-20T10:00:00+00:00"
        await db.execute(
            "UPDATE calls SET created_at = $1::text::timestamptz WHERE id = ANY($2::uuid[])",
            tied,
            [c["id"] for c in calls[:3]],
        )
        await db.execute("UPDATE calls SET created_at = '2026-10-01T00:00:00Z' WHERE id = $1::uuid", calls[3]["id"])
        async with live.http.stream(
            "GET", "/v1/calls.csv", params={"from": "2026-11-20", "to": "2026-11-20"}, headers=keys.a
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/csv")
            body = (await r.aread()).decode()
        other = await live.http.get(
            "/v1/calls.csv", params={"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}, headers=keys.b
        )
        session = (await live.http.get(f"/v1/sessions/{calls[0]['session_id']}", headers=keys.a)).json()
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == list(costs.CSV_COLUMNS)
    by_id = {c["id"]: c for c in calls[:3]}
    assert sorted(r[0] for r in rows[1:]) == sorted(by_id) and len(rows) == 4
    assert [r[0] for r in rows[1:]] == sorted(by_id)  # ties on created_at ordered by id
    for r in rows[1:]:
        c = by_id[r[0]]
        assert r[1:] == [
            c["session_id"],
            session["order_id"],
            "2026-11-20T10:00:00Z",
            c["status"],
            str(c["duration_seconds"]),
            str(c["billing_seconds"]),
            c["cost"] or "",
            str(c["billing_pulse_seconds"] or ""),
            DID,
        ]
    for number in (calls[0]["from"], calls[0]["to"]):
        assert number not in body and number.lstrip("+") not in body
    assert other.status_code == 200 and other.text.splitlines() == [",".join(costs.CSV_COLUMNS)]


async def test_the_csv_exports_bounds_are_required_parsed_and_at_most_31_days_apart(dsn: str, keys: Keys) -> None:
    """Each refused bound is a 422 problem naming its field; the sessions key may not export."""
    async with live_service(dsn) as live:
        cases = {
            "from": {"to": "2026-11-02"},
            "to": {"from": "2026-11-02"},
        }
        for field, params in cases.items():
            r = await live.http.get("/v1/calls.csv", params=params, headers=keys.a)
            assert (r.status_code, r.json()["code"], r.json()["field"]) == (422, "invalid_request", field)
        refused = [
            ({"from": "yesterday", "to": "2026-11-02"}, "from"),
            ({"from": "2026-11-01T00:00:00", "to": "2026-11-02"}, "from"),
            ({"from": "2026-11-01", "to": "2026-12-02"}, "to"),
            ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
        ]
        for params, field in refused:
            r = await live.http.get("/v1/calls.csv", params=params, headers=keys.a)
            assert r.status_code == 422 and r.json()["field"] == field, (params, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        month = await live.http.get("/v1/calls.csv", params={"from": "2026-11-01", "to": "2026-12-01"}, headers=keys.a)
        assert month.status_code == 200
        sessions_key = await live.http.get(
            "/v1/calls.csv", params={"from": "2026-11-01", "to": "2026-11-02"}, headers=keys.auth(keys.a_sessions)
        )
        assert sessions_key.status_code == 403


async def test_the_daily_sweep_prices_yesterdays_reported_calls_from_one_unambiguous_log_row(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """Under the call-log lease, once per day: a call with one matching log row gets its cost and pulse; one
    with two rows or none stays unpriced; a second run that day reads nothing."""
    async with live_service(dsn, **CALLS) as live:
        calls = await reported_calls(live, keys, 3)
        assert [c["cost"] for c in calls] == [None, None, None]
        rows = {r["mid"]: r for r in live.sim.call_log}
        one, two, none = (rows[c["id"]] for c in calls)
        live.sim.call_log.append({**two, "id": str(uuid.uuid4())})
        live.sim.call_log.remove(none)
        today = datetime.now(IST).date()
        after = tomorrow_at_3()
        async with httpx.AsyncClient() as http:
            log = CallLog(http, live.sim_url + "/api/v2/", "provider-token-xyz", IST, 5, 50)
            sweep = CostSweep(log, IST)
            pool = await create_pool(dsn, 1)
            try:
                async with pool.acquire() as worker:
                    assert sweep.day_due(datetime.combine(today + timedelta(days=1), dt_time(1), IST)) != today
                    assert await reconcile_q.take_lease(db)
                    busy = await sweep.run(worker, after)
                    await reconcile_q.give_lease(db)
                    done = await sweep.run(worker, after)
                    again = await sweep.run(worker, after + timedelta(hours=5))
            finally:
                await pool.close()
        other_process = await sweep_costs(live, dsn, after)
        after_sweep = [(await live.http.get(f"/v1/calls/{c['id']}", headers=keys.a)).json() for c in calls]
    assert (busy, again) == (None, None)
    assert done == CostTally(priced=1, ambiguous=1, not_found=1)
    assert other_process == CostTally(priced=0, ambiguous=1, not_found=1)
    assert [(c["cost"], c["billing_pulse_seconds"]) for c in after_sweep] == [
        (one["charges"], 30),
        (None, None),
        (None, None),
    ]
    assert [c["source"] for c in after_sweep] == ["report"] * 3


async def test_a_sessions_cost_is_the_sum_of_its_priced_calls_and_null_while_none_is(dsn: str, keys: Keys) -> None:
    """The session resource's `cost` is null while no call is priced, then the decimal sum of its calls' known costs
    (an unpriced call adds nothing), in GET and in the session list."""
    async with live_service(dsn, **CALLS) as live:
        calls = await reported_calls(live, keys, 3)
        session_id = calls[0]["session_id"]
        before = (await live.http.get(f"/v1/sessions/{session_id}", headers=keys.a)).json()
        hidden = next(r for r in live.sim.call_log if r["mid"] == calls[0]["id"])
        live.sim.call_log.remove(hidden)
        assert await sweep_costs(live, dsn, tomorrow_at_3()) == CostTally(priced=2, not_found=1)
        priced = [(await live.http.get(f"/v1/calls/{c['id']}", headers=keys.a)).json()["cost"] for c in calls[1:]]
        after = (await live.http.get(f"/v1/sessions/{session_id}", headers=keys.a)).json()
        listed = (await live.http.get("/v1/sessions", headers=keys.a)).json()["items"]
    assert before["cost"] is None and None not in priced
    assert Decimal(after["cost"]) == sum(Decimal(c) for c in priced) and isinstance(after["cost"], str)
    assert [s["cost"] for s in listed if s["id"] == session_id] == [after["cost"]]
