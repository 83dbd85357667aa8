"""docs/webhooks.md cannot drift: its example of each event type has the keys the service really sends.

The service emits every one of the 12 types for real (sessions through the API, calls through the provider
simulator, a stray report, the headroom check, a webhook test send); each type's example in the guide must
have the same top-level keys and, recursively, the same `data` keys as the real event.
DUMP_EVENTS=1 (with -s) prints the real events, to copy a changed shape into the guide.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from service.broker import events, pools, sweeps
from service.provider.simulator import Fault
from tests.factories import open_session, pair, pool
from tests.helpers import Keys, call_status, did_numbers
from tests.live import Live, live_service
from tests.receiver import Receiver

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "webhooks.md"


def documented_examples(page: str) -> dict[str, list[dict[str, Any]]]:
    """Every ```json block of the page that is an event, grouped by its type."""
    found: dict[str, list[dict[str, Any]]] = {}
    for block in re.findall(r"```json\n(.*?)```", page, flags=re.S):
        example = json.loads(block)
        if isinstance(example, dict) and "type" in example:
            found.setdefault(example["type"], []).append(example)
    return found


# Objects whose keys are the client's own (a session's metadata, echoed back as given): their keys are no shape.
OPAQUE = {"metadata"}


def shape(value: Any) -> Any:
    """The keys of a JSON value, recursively through nested objects (lists by their first item); leaves are None."""
    if isinstance(value, dict):
        return {k: None if k in OPAQUE else shape(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [shape(value[0])]
    return None


async def new_session(live: Live, keys: Keys, i: int, **extra: Any) -> dict[str, Any]:
    """Session i of the guide's walk-through: order ORD-{i}, pair(i)."""
    return await open_session(live.http, keys.a, order=f"ORD-{i}", **pair(i), **extra)


async def call(live: Live, keys: Keys, session: dict[str, Any], status: int) -> str:
    r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
    assert r.status_code == status, r.text
    call_id: str = r.json()["id" if status == 202 else "call_id"]
    return call_id


def stray_report(bridge: str) -> bytes:
    """A provider report on the tenant's DID between numbers no call was placed for."""
    start = datetime.now(ZoneInfo("Asia/Kolkata")) - timedelta(seconds=30)
    return json.dumps(
        {
            "bridge": int(bridge.lstrip("+")),
            "from": 919812345670,
            "to": 919898765432,
            "source": "C2C",
            "start_at": start.strftime("%Y-%m-%d %H:%M:%S"),
            "end_at": (start + timedelta(seconds=12)).strftime("%Y-%m-%d %H:%M:%S"),
            "status": "COMPLETED",
            "billing": "9",
            "duration": "12",
        }
    ).encode()


async def every_event(dsn: str, keys: Keys, db: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """Make the service emit each type once for real; the first event of each type, as the feed carries it."""
    async with (
        Receiver() as receiver,
        live_service(dsn, webhook_allow_http=True, webhook_allow_private=True) as live,
    ):
        http = live.http
        dids = did_numbers(3)
        await pool(http, keys.a, dids=dids)

        # session.created, session.updated (TTL, then a party), session.closed
        s = await new_session(live, keys, 0, metadata={"hub": "BLR-2"})
        assert (await http.patch(f"/v1/sessions/{s['id']}", json={"ttl_seconds": 3600}, headers=keys.a)).is_success
        moved = await http.patch(f"/v1/sessions/{s['id']}", json={"agent": "+918765432100"}, headers=keys.a)
        assert moved.status_code == 200, moved.text
        assert (await http.post(f"/v1/sessions/{s['id']}/close", headers=keys.a)).status_code == 200

        # call.initiated then call.completed (and session.closed with max_calls_reached)
        done = await call(live, keys, await new_session(live, keys, 1, max_calls=1), 202)
        await call_status(live, keys, done, "completed")
        # call.missed: the provider's report says nobody answered
        live.sim.inject(Fault(report="missed"))
        missed = await call(live, keys, await new_session(live, keys, 2), 202)
        await call_status(live, keys, missed, "missed")
        # call.recording_ready: a recorded call whose report carries a recording
        recorded = await call(live, keys, await new_session(live, keys, 5, record=True), 202)
        await call_status(live, keys, recorded, "completed")
        # call.failed: the provider refuses the click
        live.sim.inject(Fault(answer="reject", report="none"))
        await call(live, keys, await new_session(live, keys, 3), 502)
        # call.unknown: the provider accepts the click but no report comes within the report timeout
        live.sim.inject(Fault(report="none"))
        await call(live, keys, await new_session(live, keys, 4), 202)
        later = datetime.now(UTC) + timedelta(seconds=7201)
        assert await sweeps.time_out_calls(db, later, 7200) == 1

        # report.unmatched: a report on our DID that matches no call
        assert (await http.post(live.callback, content=stray_report(dids[2]))).status_code == 200

        # pool.low_headroom: three DIDs, the two busiest parties hold a session each: headroom 1
        assert await pools.check_headroom(db, datetime.now(UTC)) >= 1

        # webhook.test
        hook = await http.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=keys.a)
        assert hook.status_code == 201, hook.text
        test = await http.post(f"/v1/webhooks/{hook.json()['id']}/test", headers=keys.a)
        assert test.status_code == 200 and test.json()["status"] == "delivered", test.text
        sent = receiver.events[test.json()["event_id"]]

        seen: dict[str, dict[str, Any]] = {}
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"after": after} if after else {})}
            page = (await http.get("/v1/events", params=params, headers=keys.a)).json()
            if not page["items"]:
                break
            for event in page["items"]:
                seen.setdefault(event["type"], event)
            after = page["next_cursor"]
    assert sent == seen["webhook.test"]  # the feed carries what a webhook delivers
    if os.environ.get("DUMP_EVENTS"):
        print(json.dumps(seen, indent=1))
    return seen


async def test_the_guide_shows_every_event_type_with_the_keys_the_service_sends(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """One complete example per type, no elisions; its keys (data's recursively) are those of the real event."""
    real = await every_event(dsn, keys, db)
    assert sorted(real) == sorted(events.TYPES)
    documented = documented_examples(GUIDE.read_text())
    assert sorted(documented) == sorted(events.TYPES)
    assert {t: len(v) for t, v in documented.items() if len(v) != 1} == {}, "one example per type"
    for type_, [example] in documented.items():
        assert "..." not in json.dumps(example), f"{type_}: the example elides something"
        assert set(example) == {"id", "type", "created_at", "data"}, type_
        assert set(example) == set(real[type_]), type_
        assert shape(example["data"]) == shape(real[type_]["data"]), type_
        assert re.fullmatch(r"evt_\d+", example["id"]), type_
        datetime.fromisoformat(example["created_at"])


def test_the_shape_check_sees_nested_keys() -> None:
    """A missing nested key (provider.message) or an extra top-level one is a different shape."""
    call = {"id": "x", "provider": {"status": "COMPLETED", "message": None}, "metadata": {}}
    assert shape(call) == shape({**call, "id": "y"})
    assert shape(call) != shape({**call, "provider": {"status": "COMPLETED"}})
    assert shape(call) != shape({**call, "extra": 1})
