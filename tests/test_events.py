"""Events: written with their change (none for a change that rolled back), paged oldest first by GET /v1/events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from service.broker import events, pools, sweeps
from service.db import events as events_q
from tests.factories import bare_tenant, create_session, open_session, place_call
from tests.helpers import (
    CUSTOMER,
    FakeClock,
    Keys,
    add_dids,
    assert_problem,
    did_numbers,
    index_names,
    wait_for,
)
from tests.live import live_service


async def feed(client: httpx.AsyncClient, keys: Keys, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/events", params=params, headers=keys.a)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def all_events(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = (await client.get("/v1/events", params=params, headers=headers)).json()
        if not page["items"]:
            return items
        items += page["items"]
        after = page["next_cursor"]


async def test_a_sessions_life_is_told_as_events_whose_data_is_what_get_returns(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock
) -> None:
    """Created, TTL changed, closed: three events oldest first, each carrying the session as GET showed it then."""
    await add_dids(client, keys.a, did_numbers(3))
    created = (await create_session(client, keys.a)).json()
    sid = created["id"]
    updated = (await client.patch(f"/v1/sessions/{sid}", json={"ttl_seconds": 600}, headers=keys.a)).json()
    closed = (await client.post(f"/v1/sessions/{sid}/close", headers=keys.a)).json()
    again = await client.post(f"/v1/sessions/{sid}/close", headers=keys.a)  # already closed: no second event
    assert again.status_code == 200
    items = (await feed(client, keys))["items"]
    assert [e["type"] for e in items] == ["session.created", "session.updated", "session.closed"]
    assert [e["data"] for e in items] == [created, updated, closed]
    assert all(e["id"].startswith("evt_") for e in items)
    assert items[2]["data"]["close_reason"] == "closed_by_client"


async def test_the_feed_pages_oldest_first_after_a_cursor_and_filters_by_type(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Pages of two walk every event once in order; the last cursor waits for what comes next; types filter."""
    await add_dids(client, keys.a, did_numbers(5))
    for i in range(5):
        r = await create_session(client, keys.a, order=f"o{i}", agent=f"+9187654321{i:02d}")
        assert r.status_code == 201
    walked = await all_events(client, keys.a)
    assert [e["data"]["order_id"] for e in walked] == [f"o{i}" for i in range(5)]
    first = await feed(client, keys, limit=5)
    assert first["items"] == walked
    tail = await feed(client, keys, after=first["next_cursor"])
    assert tail == {"items": [], "next_cursor": first["next_cursor"]}
    sid = walked[0]["data"]["id"]
    await client.post(f"/v1/sessions/{sid}/close", headers=keys.a)
    later = await feed(client, keys, after=first["next_cursor"])
    assert [e["type"] for e in later["items"]] == ["session.closed"]
    only = await feed(client, keys, type="session.closed")
    assert [e["data"]["id"] for e in only["items"]] == [sid]
    assert_problem(await client.get("/v1/events", params={"type": "nope"}, headers=keys.a), 422, "invalid_request")
    assert_problem(await client.get("/v1/events", params={"after": "x"}, headers=keys.a), 422, "invalid_request")


async def test_tenants_never_see_each_others_events(client: httpx.AsyncClient, keys: Keys) -> None:
    """Tenant B's feed stays empty while A's fills; B cannot redeliver A's event."""
    await add_dids(client, keys.a, did_numbers(2))
    await create_session(client, keys.a)
    assert (await client.get("/v1/events", headers=keys.b)).json()["items"] == []
    event = (await feed(client, keys))["items"][0]
    assert_problem(await client.post(f"/v1/events/{event['id']}/redeliver", headers=keys.b), 404, "not_found")
    assert (await client.post(f"/v1/events/{event['id']}/redeliver", headers=keys.a)).status_code == 202


async def test_a_create_that_rolls_back_emits_nothing(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """pool_exhausted (the one DID already carries the customer) leaves no event; the committed create has one."""
    await add_dids(client, keys.a, did_numbers(1))
    assert (await create_session(client, keys.a)).status_code == 201
    refused = await create_session(client, keys.a, order="o2", agent="+918765400000")
    assert_problem(refused, 409, "pool_exhausted")
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    repeat = await create_session(client, keys.a)  # a repeat: no new event
    assert repeat.status_code == 200
    assert [e["type"] for e in (await feed(client, keys))["items"]] == ["session.created"]


async def test_expiry_by_the_sweeper_and_by_ops_in_bulk_each_emit_session_closed(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """TTL expiry (sweeper) says close_reason ttl; a bulk expire says expired_by_ops, one event per session."""
    await add_dids(client, keys.a, did_numbers(4))
    await open_session(client, keys.a, order="short", ttl_seconds=60)
    for i in range(2):
        await open_session(client, keys.a, order="bulk", agent=f"+9187654300{i:02d}")
    clock.advance(61)
    assert await sweeps.sweep_expired(db, clock()) == 1
    r = await client.post("/v1/sessions/expire", json={"order_id": "bulk"}, headers=keys.a)
    assert r.json() == {"expired": 2}
    closed = (await feed(client, keys, type="session.closed"))["items"]
    assert sorted((e["data"]["order_id"], e["data"]["close_reason"]) for e in closed) == [
        ("bulk", "expired_by_ops"),
        ("bulk", "expired_by_ops"),
        ("short", "ttl"),
    ]


async def test_a_pool_alerts_once_each_time_its_headroom_falls_to_the_alert_level(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """Four DIDs, one customer with two agents: headroom 4 - 2 - 1 = 1 alerts once; checks again say nothing; a new fall alerts."""
    await add_dids(client, keys.a, did_numbers(4))
    assert await pools.check_headroom(db, clock()) == 0  # headroom 4
    for i in range(2):
        await open_session(client, keys.a, order=f"h{i}", agent=f"+9187654300{i:02d}")
    assert await pools.check_headroom(db, clock()) == 1
    assert await pools.check_headroom(db, clock()) == 0
    alerts = (await feed(client, keys, type="pool.low_headroom"))["items"]
    assert len(alerts) == 1 and alerts[0]["data"]["headroom"] == 1 and alerts[0]["data"]["pool"] == "default"
    await client.post("/v1/sessions/expire", json={"customer": CUSTOMER}, headers=keys.a)
    assert await pools.check_headroom(db, clock()) == 0  # back above: re-armed
    for i in range(2):
        await open_session(client, keys.a, order=f"j{i}", agent=f"+9187654310{i:02d}")
    assert await pools.check_headroom(db, clock()) == 1


async def test_a_pools_own_alert_level_decides_when_it_alerts(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """With headroom_alert 0 a pool at headroom 1 says nothing; at -1 (the two busiest need more DIDs) it alerts."""
    await add_dids(client, keys.a, did_numbers(4))
    r = await client.put("/v1/pools/default", json={"headroom_alert": 0}, headers=keys.a)
    assert r.status_code == 200, r.text
    for i in range(2):
        await open_session(client, keys.a, order=f"h{i}", agent=f"+9187654300{i:02d}")
    assert await pools.check_headroom(db, clock()) == 0  # headroom 1, level 0
    await open_session(client, keys.a, order="h2", agent="+918765430002")
    assert await pools.check_headroom(db, clock()) == 1  # headroom 4 - 3 - 1 = 0
    alerts = (await feed(client, keys, type="pool.low_headroom"))["items"]
    assert [(a["data"]["headroom"], a["data"]["alert_level"]) for a in alerts] == [(0, 0)]


async def test_calls_and_reports_emit_their_events_in_the_same_statement(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """A call placed and reported: call.initiated then call.completed; a report naming no call: report.unmatched."""
    async with live_service(dsn) as live:
        s = await open_session(live.http, keys.a, dids=["+918068281234"], max_calls=1)
        call = await place_call(live.http, keys.a, s)

        async def completed() -> list[dict[str, Any]] | None:
            page = (await live.http.get("/v1/events", headers=keys.a)).json()["items"]
            return page if any(e["type"] == "call.completed" for e in page) else None

        items = await wait_for(completed)
        types = [e["type"] for e in items]
        assert types[:2] == ["session.created", "call.initiated"]
        assert set(types[2:]) == {"call.completed", "session.closed"}  # max_calls=1 closes it in the same statement
        final = (await live.http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()
        assert next(e for e in items if e["type"] == "call.completed")["data"] == final
        closed = next(e for e in items if e["type"] == "session.closed")["data"]
        assert closed == (await live.http.get(f"/v1/sessions/{s['id']}", headers=keys.a)).json()
        assert closed["close_reason"] == "max_calls_reached"

        now = datetime.now(UTC)
        stray = {
            "bridge": 918068281234,
            "from": 919999999999,
            "to": 918888888888,
            "source": "C2C",
            "start_at": (now - timedelta(seconds=30)).astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            "status": "COMPLETED",
            "billing": "5",
            "duration": "6",
        }
        assert (await live.http.post(live.callback, content=json.dumps(stray).encode())).status_code == 200
        unmatched = (await live.http.get("/v1/events", params={"type": "report.unmatched"}, headers=keys.a)).json()
        assert len(unmatched["items"]) == 1
        report = unmatched["items"][0]["data"]
        listed = (await live.http.get("/v1/reports", headers=keys.a)).json()["items"][0]
        assert report == listed and report["reason"] == "no_call"  # as GET /v1/reports shows it, times included


async def test_events_and_attempts_past_the_retention_are_deleted_by_the_sweeper(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """MASKING_EVENT_RETENTION_DAYS (30): older events (with their deliveries) and attempts go; newer stay."""
    from service.settings import Settings

    await add_dids(client, keys.a, did_numbers(3))
    for i in range(3):
        await open_session(client, keys.a, order=f"r{i}", agent=f"+9187654320{i:02d}")
    await db.execute("UPDATE events SET created_at = created_at - interval '31 days' WHERE data->>'order_id' <> 'r2'")
    settings = Settings(database_url="postgresql://unused", event_retention_days=30)
    done = await sweeps.tidy(db, settings, clock())
    assert done["events_deleted"] == 2
    assert [e["data"]["order_id"] for e in (await feed(client, keys))["items"]] == ["r2"]


async def test_a_sessions_events_are_its_own_and_its_calls_newest_first(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """events.of_session: the session's session.* and its calls' call.* events, newest first, no other session's."""
    async with live_service(dsn) as live:
        s = await open_session(live.http, keys.a, dids=2, max_calls=1)
        other = await open_session(live.http, keys.a, order="o-2", agent="+918765432199")
        await live.http.post(f"/v1/sessions/{s['id']}/calls", headers=keys.a)

        async def ended() -> list[events.Event] | None:
            tenant_id = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
            found = await events.of_session(db, tenant_id, s["id"])
            return found if any(e.type == "call.completed" for e in found) else None

        found = await wait_for(ended)
    assert [e.type for e in found][-2:] == ["call.initiated", "session.created"]
    assert {e.type for e in found[:2]} == {"call.completed", "session.closed"}
    assert [int(e.id[4:]) for e in found] == sorted((int(e.id[4:]) for e in found), reverse=True)
    assert all(getattr(e.data, "session_id", getattr(e.data, "id", None)) == UUID(s["id"]) for e in found)
    tenant_a = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    assert [e.type for e in await events.of_session(db, tenant_a, other["id"])] == ["session.created"]
    tenant_b = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-b'")
    assert await events.of_session(db, tenant_b, s["id"]) == []  # another tenant sees none of them


async def test_a_sessions_events_are_read_through_the_subject_index(db: asyncpg.Connection) -> None:
    """With 40,000 events of 4,000 sessions, the query for one session's events scans events_subject (in each
    partition), not the table."""
    tenant_id = await bare_tenant(db, "many-events")
    await db.execute(
        """
        INSERT INTO events (tenant_id, type, created_at, data)
        SELECT $1, (ARRAY['session.created', 'call.initiated', 'call.completed', 'report.unmatched'])[1 + i / 4000 % 4],
               now(), CASE WHEN i / 4000 % 4 = 0 THEN jsonb_build_object('id', 'session-' || i % 4000)
                           ELSE jsonb_build_object('id', 'call-' || i, 'session_id', 'session-' || i % 4000) END
        FROM generate_series(0, 39999) AS i
        """,
        tenant_id,
    )
    await db.execute("ANALYZE events")
    plan = json.loads(
        await db.fetchval("EXPLAIN (FORMAT JSON) " + events_q.SELECT_OF_SESSION, tenant_id, "session-7", 50)
    )
    # events is partitioned by day: each partition scans its own copy of events_subject
    of_subject = {
        r[0]
        for r in await db.fetch(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'events_subject'::regclass"
        )
    }
    used = index_names(plan[0]["Plan"])
    assert used and set(used) <= of_subject, plan
    rows = await events_q.select_of_session(db, tenant_id, "session-7", 50)
    # Ten events name session-7; two of them are report.unmatched, which is no session's event.
    assert len(rows) == 8 and all(r.type != "report.unmatched" for r in rows)
    assert [r.id for r in rows] == sorted((r.id for r in rows), reverse=True)
