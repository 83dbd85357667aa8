"""Recordings over real HTTP with the simulator: ready event, streaming with Range, signed links, deletion,
retention, pools that forbid recording, and the audit log of every access."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from service.broker import recordings, sweeps, tenants
from service.provider.simulator import Fault, recording_bytes
from tests.factories import open_session, pool
from tests.helpers import Keys, assert_problem, did_numbers, wait_for
from tests.live import Live, live_service
from tests.test_reconcile import FAST, place, settled

PUBLIC = "https://masking.example"
DID = "+918068281234"


async def recorded_call(live: Live, keys: Keys, order: str = "ORD-REC", pool_name: str = "default") -> dict[str, Any]:
    """A session asking for recording, and its call answered and reported (with a recording)."""
    dids = [did_numbers(1, start=len(order))[0]] if pool_name != "default" else [DID]
    session = await open_session(live.http, keys.a, dids=dids, pool_name=pool_name, order_id=order, record=True)
    call = await place(live, keys, session, Fault(report="answered"))
    done = await settled(live, keys, call["id"])
    assert done["status"] == "completed" and done["recording"] is not None, done
    return done


def recording_name(live: Live, call_id: str) -> tuple[str, int]:
    """The simulator's name and size of the call's recording."""
    name = next(n for n in live.sim.recordings if n.startswith(call_id))
    return name, live.sim.recordings[name]


async def _ended_short(live: Live, before: int, size: int) -> bool:
    """A recording answer begun after the first `before` ended with fewer than `size` bytes sent."""
    return any(sent < size for sent in live.sim.recording_sends[before:])


def local(url: str, live: Live) -> str:
    """A public URL of the service as this test reaches it."""
    assert url.startswith(PUBLIC), url
    return live.url + url.removeprefix(PUBLIC)


async def test_a_recorded_call_shows_the_services_own_url_and_its_ready_event_is_written_with_the_outcome(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """The call shows recording {available, duration_seconds} and the service's URL; call.recording_ready (data: the
    call as GET shows it) is written in the same transaction as call.completed; the provider's URL is nowhere."""
    async with live_service(dsn, public_url=PUBLIC) as live:
        call = await recorded_call(live, keys)
        assert call["recording"] == {"available": True, "duration_seconds": call["billing_seconds"]}
        assert call["recording_url"] == f"{PUBLIC}/v1/calls/{call['id']}/recording"
        rows = await db.fetch(
            "SELECT type, data, txid::text AS txid FROM events WHERE data->>'id' = $1 AND type <> 'call.initiated' "
            "ORDER BY id",
            call["id"],
        )
        assert [r["type"] for r in rows] == ["call.completed", "call.recording_ready"]
        assert rows[0]["txid"] == rows[1]["txid"]
        ready = rows[1]["data"]
        assert ready.keys() == call.keys() and ready["recording"] == call["recording"]
        assert ready["recording_url"] == call["recording_url"]
        provider_url = live.sim.reports_sent[-1]["recording_url"]
        assert provider_url.startswith(live.sim_url)
        listed = (await live.http.get(f"/v1/sessions/{call['session_id']}/calls", headers=keys.a)).text
        assert provider_url not in listed and provider_url not in str([r["data"] for r in rows])
        unrecorded = await open_session(
            live.http, keys.a, order_id="ORD-PLAIN", customer="+919876500009", agent="+918765400009"
        )
        plain = await settled(live, keys, (await place(live, keys, unrecorded, Fault(report="answered")))["id"])
        assert (plain["recording"], plain["recording_url"]) == (None, None)
        assert_problem(
            await live.http.get(f"/v1/calls/{plain['id']}/recording", headers=keys.a), 404, "recording_unavailable"
        )
        assert_problem(await live.http.get(f"/v1/calls/{call['id']}/recording", headers=keys.b), 404, "not_found")
        assert_problem(await live.http.get(f"/v1/calls/{uuid.uuid4()}/recording", headers=keys.a), 404, "not_found")


async def test_a_call_completed_from_the_call_log_takes_its_recording_from_the_rows_audio(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """A recorded call whose callback was lost is completed by reconciliation with the log row's `audio` as its
    recording: available, call.recording_ready written, and it streams."""
    async with live_service(dsn, background=True, public_url=PUBLIC, **FAST) as live:
        session = await open_session(live.http, keys.a, dids=[DID], record=True)
        live.sim.lose_callbacks = 1.0
        call = await settled(live, keys, (await place(live, keys, session, Fault(report="answered")))["id"])
        assert (call["source"], call["recording"]) == (
            "call_log",
            {"available": True, "duration_seconds": call["billing_seconds"]},
        )
        row = next(r for r in live.sim.call_log if r["mid"] == call["id"])
        assert row["audio"] and row["audio"] not in str(call)
        types = await db.fetch("SELECT type FROM events WHERE data->>'id' = $1 ORDER BY id", call["id"])
        assert [t["type"] for t in types] == ["call.initiated", "call.completed", "call.recording_ready"]
        name, size = recording_name(live, call["id"])
        played = await live.http.get(f"/v1/calls/{call['id']}/recording", headers=keys.a)
        assert played.status_code == 200 and played.content == recording_bytes(name, 0, size)


async def test_the_recording_streams_through_the_service_with_range_requests_and_the_providers_content_type(
    dsn: str, keys: Keys
) -> None:
    """The whole recording (200) and byte ranges (206, Content-Range) come byte for byte from the provider, the Range
    passed on, its content type kept; an unsatisfiable range is 416; the first bytes arrive before the provider has
    sent the rest (no buffering)."""
    async with live_service(dsn, public_url=PUBLIC) as live:
        call = await recorded_call(live, keys)
        name, size = recording_name(live, call["id"])
        path = f"/v1/calls/{call['id']}/recording"
        whole = await live.http.get(path, headers=keys.auth(keys.a_sessions))
        assert whole.status_code == 200 and whole.content == recording_bytes(name, 0, size)
        assert whole.headers["content-type"] == "audio/mpeg" and whole.headers["content-length"] == str(size)
        assert whole.headers["accept-ranges"] == "bytes"

        part = await live.http.get(path, headers={**keys.a, "Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == recording_bytes(name, 100, 1100)
        assert part.headers["content-range"] == f"bytes 100-1099/{size}"
        assert live.sim.recording_requests[-1]["range"] == "bytes=100-1099"
        tail = await live.http.get(path, headers={**keys.a, "Range": "bytes=-10"})
        assert (tail.status_code, tail.content) == (206, recording_bytes(name, size - 10, size))
        beyond = await live.http.get(path, headers={**keys.a, "Range": f"bytes={size}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"

        live.sim.recording_type = "audio/wav"
        assert (await live.http.get(path, headers=keys.a)).headers["content-type"] == "audio/wav"

        # Chunks smaller than the shortest recording (5 s, 10,000 bytes), so that the gate holds back the rest.
        live.sim.recording_chunk = 1000
        live.sim.recording_gate = gate = asyncio.Event()
        async with live.http.stream("GET", path, headers=keys.a) as streamed:
            chunks = streamed.aiter_raw()
            first = await asyncio.wait_for(anext(chunks), timeout=10)
            assert first and recording_bytes(name, 0, size).startswith(first)
            gate.set()
            rest = b"".join([chunk async for chunk in chunks])
        assert first + rest == recording_bytes(name, 0, size)

        # A listener who leaves mid-way: the service lets go of the provider's answer too (no connection left
        # hanging on a provider that waits), and the provider never sent the rest.
        live.sim.recording_gate = asyncio.Event()
        ends = len(live.sim.recording_sends)
        async with live.http.stream("GET", path, headers=keys.a) as streamed:
            await asyncio.wait_for(anext(streamed.aiter_raw()), timeout=10)
        # The earlier full plays may still be closing on the provider's side (their sends end at `size`); the one
        # this listener left must end short of it.
        await wait_for(lambda: _ended_short(live, ends, size), within=10)


async def test_a_signed_link_plays_without_a_key_until_it_expires_and_a_forged_one_never(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """POST recording-links gives a URL under the public address that plays (with Range) without a key; a token
    changed by one character is 404; one past its expiry, or made by a key since revoked, 410 link_expired."""
    async with live_service(dsn, public_url=PUBLIC) as live:
        call = await recorded_call(live, keys)
        name, size = recording_name(live, call["id"])
        before = datetime.now(UTC)
        made = await live.http.post(
            f"/v1/calls/{call['id']}/recording-links", json={"ttl_seconds": 60}, headers=keys.auth(keys.a_sessions)
        )
        assert made.status_code == 201, made.text
        link = made.json()
        assert link["url"].startswith(f"{PUBLIC}/r/")
        expires = datetime.fromisoformat(link["expires_at"])
        assert before + timedelta(seconds=58) < expires < datetime.now(UTC) + timedelta(seconds=61)
        async with httpx.AsyncClient() as anonymous:
            played = await anonymous.get(local(link["url"], live))
            assert played.status_code == 200 and played.content == recording_bytes(name, 0, size)
            ranged = await anonymous.get(local(link["url"], live), headers={"Range": "bytes=0-9"})
            assert (ranged.status_code, ranged.content) == (206, recording_bytes(name, 0, 10))
            token = link["url"].rsplit("/", 1)[1]
            forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
            assert_problem(await anonymous.get(f"{live.url}/r/{forged}"), 404, "not_found")
            assert_problem(await anonymous.get(f"{live.url}/r/not-a-token"), 404, "not_found")
            # A link signed with the service's own secret, its expiry a second ago.
            secret = await db.fetchval("SELECT value FROM service_secrets WHERE name = $1", recordings.LINK_SECRET_NAME)
            tenant_id = await db.fetchval("SELECT tenant_id FROM calls WHERE id = $1", uuid.UUID(call["id"]))
            claim = recordings.Claim(
                tenant_id=tenant_id,
                call_id=uuid.UUID(call["id"]),
                expires=int(datetime.now(UTC).timestamp()) - 1,
                key_id=1,
            )
            expired = recordings.LinkSigner(secret).sign(claim)
            assert_problem(await anonymous.get(f"{live.url}/r/{expired}"), 410, "link_expired")
        # A link stops with the key that made it (the first link's, a sessions key), not another key's.
        by_ops_key = (await live.http.post(f"/v1/calls/{call['id']}/recording-links", headers=keys.a)).json()
        key_id = await db.fetchval(
            "SELECT id FROM api_keys WHERE tenant_id = $1 AND 'sessions' = ANY(scopes)", tenant_id
        )
        assert await tenants.revoke_key(db, key_id) is not None
        async with httpx.AsyncClient() as anonymous:
            assert_problem(await anonymous.get(local(link["url"], live)), 410, "link_expired")
            assert (await anonymous.get(local(by_ops_key["url"], live))).status_code == 200
        too_short = await live.http.post(
            f"/v1/calls/{call['id']}/recording-links", json={"ttl_seconds": 1}, headers=keys.a
        )
        assert_problem(too_short, 422, "invalid_request")


async def test_deleting_a_recording_destroys_the_reference_at_once_and_every_access_is_audited(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """DELETE (ops) is 204; then the call shows {available: false, deleted_at}, streaming, links and the link made
    before answer 410; the audit log holds each access (stream, link made, link played) and the delete."""
    async with live_service(dsn, public_url=PUBLIC) as live:
        call = await recorded_call(live, keys)
        path = f"/v1/calls/{call['id']}/recording"
        assert (await live.http.get(path, headers=keys.a)).status_code == 200
        link = (await live.http.post(f"/v1/calls/{call['id']}/recording-links", headers=keys.a)).json()
        async with httpx.AsyncClient() as anonymous:
            assert (await anonymous.get(local(link["url"], live))).status_code == 200
            assert_problem(await live.http.delete(path, headers=keys.auth(keys.a_sessions)), 403, "forbidden")
            assert_problem(await live.http.delete(path, headers=keys.b), 404, "not_found")
            deleted = await live.http.delete(path, headers=keys.a)
            assert deleted.status_code == 204, deleted.text
            after = (await live.http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()
            assert after["recording_url"] is None and after["recording"]["available"] is False
            assert set(after["recording"]) == {"available", "deleted_at"}
            assert await db.fetchval("SELECT recording_url FROM calls WHERE id = $1", uuid.UUID(call["id"])) is None
            assert_problem(await live.http.get(path, headers=keys.a), 410, "recording_unavailable")
            assert_problem(await anonymous.get(local(link["url"], live)), 410, "recording_unavailable")
            again = await live.http.post(f"/v1/calls/{call['id']}/recording-links", headers=keys.a)
            assert_problem(again, 410, "recording_unavailable")
            assert_problem(await live.http.delete(path, headers=keys.a), 410, "recording_unavailable")
        audit = (await live.http.get("/v1/audit", params={"limit": 200}, headers=keys.a)).json()["items"]
    rows = [(a["action"], a["target"], a["reason"]) for a in audit if a["action"].startswith("recording.")]
    target = {"type": "call", "id": call["id"]}
    assert rows == [
        ("recording.access", target, None),
        ("recording.access", target, "signed link made"),
        ("recording.access", target, "played through a signed link"),
        ("recording.delete", target, None),
    ]
    played = next(a for a in audit if a["reason"] == "played through a signed link")
    made = next(a for a in audit if a["reason"] == "signed link made")
    assert played["actor"]["key_id"] == made["actor"]["key_id"] and played["client_address"] == "127.0.0.1"


async def test_the_retention_sweep_destroys_references_older_than_their_pools_retention_only(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """A pool keeping recordings 1 day loses a 2-day-old call's reference to the sweep; a pool keeping them 30 days and
    a pool with no retention keep theirs."""
    async with live_service(dsn, public_url=PUBLIC) as live:
        await pool(live.http, keys.a, "short", dids=did_numbers(1, start=10), recording_retention_days=1)
        await pool(live.http, keys.a, "long", dids=did_numbers(1, start=20), recording_retention_days=30)
        shown = (await live.http.get("/v1/pools/short", headers=keys.a)).json()
        assert (shown["recording_allowed"], shown["recording_retention_days"]) == (True, 1)
        short = await recorded_call(live, keys, "ORD-SHORT", "short")
        long = await recorded_call(live, keys, "ORD-LONG", "long")
        kept = await recorded_call(live, keys, "ORD-KEEP")
        now = datetime.now(UTC)
        assert await sweeps.end_recording_retention(db, now) == 0
        assert await sweeps.end_recording_retention(db, now + timedelta(days=2)) == 1
        calls = {
            c["id"]: c
            for c in [(await live.http.get(f"/v1/calls/{x['id']}", headers=keys.a)).json() for x in (short, long, kept)]
        }
        assert calls[short["id"]]["recording"] == {
            "available": False,
            "deleted_at": (now + timedelta(days=2)).isoformat().replace("+00:00", "Z"),
        }
        assert calls[long["id"]]["recording"]["available"] and calls[kept["id"]]["recording"]["available"]
        assert_problem(
            await live.http.get(f"/v1/calls/{short['id']}/recording", headers=keys.a), 410, "recording_unavailable"
        )


async def test_a_pool_that_forbids_recording_refuses_record_on_sessions_and_clicks(dsn: str, keys: Keys) -> None:
    """With recording_allowed false, `record: true` on a session or a click is 422 recording_not_allowed naming
    `record`; a session made recording before the pool forbade it places its calls unrecorded."""
    async with live_service(dsn, public_url=PUBLIC) as live:
        await pool(live.http, keys.a, "quiet", dids=did_numbers(2, start=30))
        earlier = await open_session(live.http, keys.a, pool_name="quiet", order_id="ORD-EARLIER", record=True)
        bad = await live.http.put("/v1/pools/quiet", json={"recording_retention_days": 0}, headers=keys.a)
        assert assert_problem(bad, 422, "invalid_request")["errors"][0]["field"] == "recording_retention_days"
        not_bool = await live.http.put("/v1/pools/quiet", json={"recording_allowed": 0}, headers=keys.a)
        assert assert_problem(not_bool, 422, "invalid_request")["errors"][0]["field"] == "recording_allowed"
        r = await live.http.put("/v1/pools/quiet", json={"recording_allowed": False}, headers=keys.a)
        assert r.status_code == 200 and r.json()["recording_allowed"] is False
        body = {"order_id": "ORD-Q", "customer": "+919876500001", "agent": "+918765400001", "pool": "quiet"}
        refused = await live.http.post("/v1/sessions", json={**body, "record": True}, headers=keys.a)
        assert assert_problem(refused, 422, "recording_not_allowed")["field"] == "record"
        created = await live.http.post("/v1/sessions", json=body, headers=keys.a)
        assert created.status_code == 201, created.text
        click = await live.http.post(
            f"/v1/sessions/{created.json()['id']}/calls", json={"record": True}, headers=keys.a
        )
        assert assert_problem(click, 422, "recording_not_allowed")["field"] == "record"
        assert live.sim.requests == []
        call = await place(live, keys, earlier, Fault(report="answered"))
        assert call["record"] is False and live.sim.requests[-1]["record"] == "0"
