"""The event types a call's failure and a party change emit: call.failed, call.missed, call.unknown (the provider's
silence, and no report in time) and session.updated, each carrying the resource as its GET route shows it then."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import httpx

from service.broker import sweeps
from service.provider.simulator import Fault
from tests.factories import create_session
from tests.helpers import Keys, add_dids, assert_problem, call_status
from tests.live import Live, live_service
from tests.test_events import all_events

DID, OTHER_DID = "+918068281234", "+918068281235"


async def get(live: Live, keys: Keys, path: str) -> dict[str, Any]:
    r = await live.http.get(path, headers=keys.a)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_failed_missed_and_unknown_calls_emit_their_events_with_the_call_as_get_returns_it(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """Rejected: call.failed; no talk: call.missed; no answer, or no report in time: call.unknown; data = GET call."""
    async with live_service(dsn, session_calls_per_window=10) as live:  # four calls on one session
        await add_dids(live.http, keys.a, [DID])
        session = (await create_session(live.http, keys.a)).json()
        calls = f"/v1/sessions/{session['id']}/calls"
        seen: list[tuple[str, dict[str, Any]]] = []  # (type, the call as GET showed it right after)

        live.sim.inject(Fault(answer="reject", report="none"))
        rejected = assert_problem(await live.http.post(calls, headers=keys.a), 502, "provider_rejected")
        seen.append(("call.failed", await get(live, keys, f"/v1/calls/{rejected['call_id']}")))

        live.sim.inject(Fault(report="missed"))
        placed = await live.http.post(calls, headers=keys.a)
        assert placed.status_code == 202, placed.text
        seen.append(("call.missed", await call_status(live, keys, placed.json()["id"], "missed")))

        live.sim.inject(Fault(report="none"))
        silent = await live.http.post(calls, headers=keys.a)
        assert silent.status_code == 202, silent.text
        now = await db.fetchval("SELECT now()")
        assert await sweeps.time_out_calls(db, now + timedelta(seconds=7201), 7200) == 1
        seen.append(("call.unknown", await get(live, keys, f"/v1/calls/{silent.json()['id']}")))

        # Last: a call whose click got no answer stays unknown and awaits its report (docs/provider.md).
        live.sim.inject(Fault(answer="hang", report="none"))
        hung = assert_problem(await live.http.post(calls, headers=keys.a), 504, "provider_timeout")
        seen.append(("call.unknown", await get(live, keys, f"/v1/calls/{hung['call_id']}")))

        assert [c["status"] for _, c in seen] == ["failed", "missed", "unknown", "unknown"]
        # The report timeout passes for it too: it stops awaiting a report, but it was unknown already.
        assert await sweeps.time_out_calls(db, now + timedelta(seconds=7201), 7200) == 1
        assert seen[-1][1] == await get(live, keys, f"/v1/calls/{hung['call_id']}")
        events = await all_events(live.http, keys.a)
        ends = [(e["type"], e["data"]) for e in events if e["type"] in ("call.failed", "call.missed", "call.unknown")]
        assert ends == seen
        # One outcome event per call, after call.initiated when the provider accepted the click (docs/webhooks.md).
        per_call = [[e["type"] for e in events if e["data"].get("id") == call["id"]] for _, call in seen]
        assert per_call == [
            ["call.failed"],
            ["call.initiated", "call.missed"],
            ["call.initiated", "call.unknown"],
            ["call.unknown"],
        ]


async def test_a_party_change_emits_session_updated_with_the_session_as_get_returns_it(dsn: str, keys: Keys) -> None:
    """A new agent on the same DID, then a new agent only another DID can take (allow_new_number): session.updated each."""
    async with live_service(dsn) as live:
        await add_dids(live.http, keys.a, [DID])
        first = (await create_session(live.http, keys.a)).json()
        busy_agent = "+918765432199"
        # The only DID also carries busy_agent, so giving them the first session needs another DID.
        other = await create_session(live.http, keys.a, order="ORD-2", customer="+919876543299", agent=busy_agent)
        assert other.status_code == 201 and other.json()["masked_number"] == DID, other.text
        await add_dids(live.http, keys.a, [OTHER_DID])
        path = f"/v1/sessions/{first['id']}"
        seen: list[dict[str, Any]] = []

        kept = await live.http.patch(path, json={"agent": "+918765432100"}, headers=keys.a)
        assert kept.status_code == 200, kept.text
        seen.append(await get(live, keys, path))
        assert kept.json() == seen[-1] and seen[-1]["masked_number"] == DID

        conflict = await live.http.patch(path, json={"agent": busy_agent}, headers=keys.a)
        assert_problem(conflict, 409, "reassign_conflict")  # refused: no event
        moved = await live.http.patch(path, json={"agent": busy_agent, "allow_new_number": True}, headers=keys.a)
        assert moved.status_code == 200, moved.text
        seen.append(await get(live, keys, path))
        assert moved.json() == seen[-1] and seen[-1]["masked_number"] == OTHER_DID

        customer = await live.http.patch(path, json={"customer": "+919876543211"}, headers=keys.a)
        assert customer.status_code == 200, customer.text
        seen.append(await get(live, keys, path))

        events = await all_events(live.http, keys.a)
        assert [e["data"] for e in events if e["type"] == "session.updated"] == seen
        assert [e["data"]["agent"] for e in events if e["type"] == "session.updated"] == [
            "+918765432100",
            busy_agent,
            busy_agent,
        ]


async def test_a_party_and_ttl_change_in_one_patch_emits_one_session_updated_with_the_final_session(
    dsn: str, keys: Keys
) -> None:
    """PATCH {customer, ttl_seconds}: one change, one session.updated, whose data is what GET returns after it."""
    async with live_service(dsn) as live:
        await add_dids(live.http, keys.a, [DID])
        session = (await create_session(live.http, keys.a)).json()
        path = f"/v1/sessions/{session['id']}"
        r = await live.http.patch(path, json={"customer": "+919876543211", "ttl_seconds": 600}, headers=keys.a)
        assert r.status_code == 200, r.text
        after = await get(live, keys, path)
        assert r.json() == after
        updates = [e["data"] for e in await all_events(live.http, keys.a) if e["type"] == "session.updated"]
        assert updates == [after]


async def test_a_cursor_with_a_non_ascii_digit_is_refused_as_any_bad_cursor(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """GET /v1/events?after=1.² (a superscript two, which str.isdigit accepts) is 422 invalid_request, not a 500."""
    for bad in ("x.1", "1.²"):
        assert_problem(await client.get("/v1/events", params={"after": bad}, headers=keys.a), 422, "invalid_request")
