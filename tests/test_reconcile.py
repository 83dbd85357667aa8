"""Reconciliation over real HTTP: calls whose report was lost are completed from the simulator's call log."""

import asyncio
import json
import re
from collections import Counter
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from service.broker.reconcile import Reconciler
from service.broker.reports import Matching
from service.db import reconcile as reconcile_q
from service.db.pool import create_pool
from service.provider.calllog import CallLog, date_range, hms, parse_row
from service.provider.simulator import Fault
from tests.factories import open_session, pool
from tests.helpers import Keys, did_numbers, mobile_numbers, wait_for
from tests.live import Live, live_service

IST = ZoneInfo("Asia/Kolkata")
DID = "+918068281234"
FAST = {"reconcile_after_seconds": 1, "sweep_interval_seconds": 0.2, "reconcile_requests_per_second": 50}


def test_call_log_durations_dates_and_rows_are_read_as_the_provider_writes_them() -> None:
    """HH:MM:SS durations, the `Apr 01, 2021 - Apr 12, 2021` range, a documented row; odd values are missing."""
    assert (hms("00:00:12"), hms("01:02:03"), hms("12"), hms("00:61:00"), hms("1:x:3"), hms(None)) == (
        12,
        3723,
        12,
        None,
        None,
        None,
    )
    assert date_range(date(2021, 4, 1), date(2021, 4, 12)) == "Apr 01, 2021 - Apr 12, 2021"
    raw = {
        "id": "c839b4c4-8c0d-11e9-bb88-6c2b59c79f5a",
        "call_from": "917989532456",
        "call_to": "918068287601",
        "bridge": "918068287601",
        "status": "RECEIVED",
        "duration": "00:00:12",
        "billing": "00:00:12",
        "pulsing": "30",
        "charges": "0.0150",
        "start_at": "2019-06-11 05:57:24",
        "end_at": "2019-06-11 05:57:36",
        "hangup_by": "caller",
        "audio": None,
    }
    row = parse_row(raw, IST)
    assert row is not None
    assert row.route == ("+918068287601", "+917989532456", "+918068287601")
    assert (row.duration_seconds, row.billing_seconds, row.pulse_seconds, row.charges) == (12, 12, 30, "0.0150")
    assert row.started_at is not None and row.started_at.isoformat() == "2019-06-11T00:27:24+00:00"
    assert parse_row({**raw, "charges": "NaN"}, IST).charges is None  # type: ignore[union-attr]
    assert parse_row({**raw, "call_to": ""}, IST) is None


async def lookups(live: Live, outcome: str) -> float:
    """The service's count of call-log lookups with that outcome (the counter is the process's: compare deltas)."""
    text = (await live.http.get("/metrics")).text
    found = re.search(rf'^masking_reconcile_lookups_total{{outcome="{outcome}"}} (\S+)$', text, flags=re.M)
    return float(found.group(1)) if found else 0.0


async def place(live: Live, keys: Keys, session: dict[str, Any], fault: Fault | None = None) -> dict[str, Any]:
    if fault is not None:
        live.sim.inject(fault)
    r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
    assert r.status_code == 202, r.text
    result: dict[str, Any] = r.json()
    return result


async def settled(live: Live, keys: Keys, call_id: str, within: float = 20) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        call: dict[str, Any] = (await live.http.get(f"/v1/calls/{call_id}", headers=keys.a)).json()
        return call if call["status"] != "initiated" else None

    result: dict[str, Any] = await wait_for(done, within=within, interval=0.1)
    return result


async def test_a_lost_report_is_completed_from_the_call_log_and_the_late_report_is_a_duplicate(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """The call log's row completes the call as a report would (event, source call_log, cost); the real report later is a duplicate."""
    async with live_service(dsn, background=True, **FAST) as live:
        session = await open_session(live.http, keys.a, dids=[DID], max_calls=3)
        reconciled_before = await lookups(live, "reconciled")
        reported = await place(live, keys, session, Fault(report="answered"))
        by_report = await settled(live, keys, reported["id"])
        assert (by_report["source"], by_report["cost"], by_report["billing_pulse_seconds"]) == ("report", None, None)
        live.sim.lose_callbacks = 1.0
        lost = await place(live, keys, session, Fault(report="answered"))
        call = await settled(live, keys, lost["id"])
        row = next(r for r in live.sim.call_log if r["mid"] == lost["id"])
        assert (call["status"], call["source"]) == ("completed", "call_log")
        assert call["billing_seconds"] == hms(row["billing"]) and call["duration_seconds"] == hms(row["duration"])
        assert (call["cost"], call["billing_pulse_seconds"]) == (row["charges"], 30)
        event = await db.fetchval(
            "SELECT data FROM events WHERE type = 'call.completed' AND data->>'id' = $1", lost["id"]
        )
        data = json.loads(event) if isinstance(event, str) else event
        same = ("status", "source", "cost", "billing_pulse_seconds", "billing_seconds", "duration_seconds")
        assert {k: data[k] for k in same} == {k: call[k] for k in same} and data.keys() == call.keys()
        late = await live.http.post(live.callback, json=live.sim.lost[0])
        assert late.status_code == 200
        assert (await live.http.get(f"/v1/calls/{lost['id']}", headers=keys.a)).json() == call
        reconciled = await lookups(live, "reconciled") - reconciled_before
    outcomes = Counter(
        (r["outcome"], r["reason"]) for r in await db.fetch("SELECT outcome, reason FROM provider_reports")
    )
    assert outcomes == {("matched", None): 2, ("duplicate", "call_already_reported"): 1}
    assert reconciled == 1


async def test_two_rows_that_could_be_the_call_leave_it_waiting_and_counted(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """A second log row on the same route in the call's window makes the lookup ambiguous: nothing is guessed."""
    async with live_service(dsn, background=True, **FAST) as live:
        session = await open_session(live.http, keys.a, dids=[DID])
        ambiguous_before = await lookups(live, "ambiguous")
        live.sim.lose_callbacks = 1.0
        call = await place(live, keys, session, Fault(report="answered"))
        twin = dict(live.sim.call_log[0], id="other", mid=None, start_at=live.sim.call_log[0]["end_at"])
        live.sim.call_log.append(twin)

        async def counted() -> bool:
            return await lookups(live, "ambiguous") > ambiguous_before

        await wait_for(counted, within=20, interval=0.1)
        assert (await live.http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()["status"] == "initiated"
    row = await db.fetchrow("SELECT lookups, lookup_at, report_id FROM calls WHERE id = $1", call["id"])
    assert row["lookups"] >= 1 and row["lookup_at"] is not None and row["report_id"] is None


async def test_a_call_not_in_the_log_is_asked_again_with_a_growing_wait(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """A call the log does not show is deferred, each wait twice the last, and stays initiated."""
    async with live_service(dsn, background=True, **FAST) as live:
        session = await open_session(live.http, keys.a, dids=[DID])
        call = await place(live, keys, session, Fault(report="none"))

        async def looked_up_twice() -> asyncpg.Record | None:
            row = await db.fetchrow("SELECT lookups, lookup_at FROM calls WHERE id = $1", call["id"])
            return row if row["lookups"] >= 2 else None

        await wait_for(looked_up_twice, within=20, interval=0.1)
        assert (await live.http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()["status"] == "initiated"
        metrics = (await live.http.get("/metrics")).text
    assert 'masking_reconcile_lookups_total{outcome="not_found"}' in metrics
    reconciler = Reconciler(
        log=None, matching=Matching(zone=IST, timeout_seconds=7200, tolerance_seconds=300), after=timedelta(seconds=600)
    )  # type: ignore[arg-type]
    waits = [reconciler.backoff(n) for n in range(5)]
    assert [w.total_seconds() for w in waits] == [600, 1200, 2400, 3600, 3600]


async def test_only_the_process_holding_the_lease_asks_the_call_log(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """While another connection holds the reconciliation lease a round does nothing; once it is given back, it runs."""
    async with live_service(dsn, **FAST) as live:
        session = await open_session(live.http, keys.a, dids=[DID])
        live.sim.lose_callbacks = 1.0
        call = await place(live, keys, session, Fault(report="answered"))
        await asyncio.sleep(1.2)
        matching = Matching(zone=IST, timeout_seconds=7200, tolerance_seconds=300)
        async with httpx.AsyncClient() as http:
            log = CallLog(http, live.sim_url + "/api/v2/", "provider-token-xyz", IST, 5, 50)
            reconciler = Reconciler(log, matching, timedelta(seconds=1))
            pool = await create_pool(dsn, 1)
            try:
                async with pool.acquire() as worker:
                    assert await reconcile_q.take_lease(db)
                    busy = await reconciler.run(worker, await db.fetchval("SELECT now()"))
                    await reconcile_q.give_lease(db)
                    free = await reconciler.run(worker, await db.fetchval("SELECT now()"))
            finally:
                await pool.close()
    assert (busy.reconciled, busy.not_found, free.reconciled) == (0, 0, 1)
    assert await db.fetchval("SELECT source FROM calls WHERE id = $1", call["id"]) == "call_log"


@pytest.mark.parametrize("calls", [200])
async def test_with_a_fifth_of_reports_lost_every_call_reaches_the_simulators_outcome_once(
    dsn: str, keys: Keys, db: asyncpg.Connection, calls: int
) -> None:
    """20 % of callbacks lost over many calls: every call ends as the simulator decided, with one effect each."""
    async with live_service(dsn, background=True, calls_per_minute=10_000, **FAST) as live:
        dids = did_numbers(20)
        customers, agents = mobile_numbers(calls, 0, "+91987"), mobile_numbers(calls, 0, "+91876")
        await pool(live.http, keys.a, dids=dids)
        live.sim.lose_callbacks = 0.2
        placed: list[dict[str, Any]] = []
        for i in range(calls):
            session = await open_session(live.http, keys.a, order=f"O-{i}", customer=customers[i], agent=agents[i])
            live.sim.inject(Fault(report=["answered", "missed", "busy"][i % 3]))
            placed.append(await place(live, keys, session))

        async def all_settled() -> bool:
            left = await db.fetchval("SELECT count(*) FROM calls WHERE status = 'initiated'")
            return left == 0

        await wait_for(all_settled, within=120, interval=0.5)
        truth = {row["mid"]: row for row in live.sim.call_log}
        lost = len(live.sim.lost)
    assert calls * 0.1 < lost < calls * 0.3
    rows = await db.fetch("SELECT id::text, status, billing_seconds, duration_seconds, source FROM calls")
    assert len(rows) == calls
    for row in rows:
        want = truth[row["id"]]
        assert row["billing_seconds"] == hms(want["billing"]) and row["duration_seconds"] == hms(want["duration"])
        assert row["status"] == ("completed" if hms(want["billing"]) else "missed")
    assert Counter(r["source"] for r in rows) == {"report": calls - lost, "call_log": lost}
    effects = await db.fetch(
        "SELECT data->>'id' AS id, count(*) AS n FROM events WHERE type IN ('call.completed', 'call.missed') GROUP BY 1"
    )
    assert len(effects) == calls and {e["n"] for e in effects} == {1}
    assert await db.fetchval("SELECT count(*) FROM provider_reports WHERE outcome = 'matched'") == calls
