"""Costs over real HTTP with the simulator: per-pool calls, minutes and cost in /v1/stats, the CSV export, the sweep."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from service.provider.simulator import Fault
from tests.factories import open_session
from tests.helpers import Keys
from tests.live import Live, live_service
from tests.test_reconcile import place, settled

DID = "+918068281234"
FAST = {
    "reconcile_after_seconds": 1,
    "sweep_interval_seconds": 0.2,
    "reconcile_requests_per_second": 50,
    "session_calls_per_window": 10,
}


async def calls_with_costs(live: Live, keys: Keys, reported: int, lost: int) -> list[dict[str, Any]]:
    """A session's calls: `reported` completed by their callback (no cost), then `lost` from the call log."""
    session = await open_session(live.http, keys.a, dids=[DID], max_calls=reported + lost)
    done = []
    for i in range(reported + lost):
        live.sim.lose_callbacks = 1.0 if i >= reported else 0.0
        call = await place(live, keys, session, Fault(report="answered"))
        done.append(await settled(live, keys, call["id"]))
    return done


async def test_stats_show_each_pools_calls_minutes_and_known_cost_of_the_last_day_and_month(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """Calls without a known cost count as calls but add nothing to the cost; a call 2 days old is only in
    the 30 days, one 40 days old in neither; the sum is exact decimal."""
    async with live_service(dsn, background=True, **FAST) as live:
        calls = await calls_with_costs(live, keys, reported=2, lost=2)
        assert [c["source"] for c in calls] == ["report", "report", "call_log", "call_log"]
        assert all(c["cost"] is not None for c in calls[2:])
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
