"""Cost caps answer 429 with Retry-After; retention masks the numbers of long-ended sessions."""

from datetime import timedelta
from typing import Any

import asyncpg

from service.broker.sweeps import redact_old_sessions
from tests.factories import create_session, open_session, open_sessions, pool
from tests.helpers import Keys, call_status, did_numbers, opened_body
from tests.live import live_service


async def _sessions(live: Any, keys: Keys, count: int) -> list[dict[str, Any]]:
    await pool(live.http, keys.a, dids=count)
    return await open_sessions(live.http, keys.a, count)


async def test_a_session_may_place_only_so_many_calls_per_window(dsn: str, keys: Keys) -> None:
    """Per-session cap: the third click within the window is 429 rate_limited with Retry-After."""
    async with live_service(dsn, session_calls_per_window=2, session_call_window_seconds=600) as live:
        (session,) = await _sessions(live, keys, 1)
        for _ in range(2):
            r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
            assert r.status_code == 202
            await call_status(live, keys, r.json()["id"], "completed")
        refused = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert 590 <= int(refused.headers["retry-after"]) <= 600
        assert len(live.sim.requests) == 2


async def test_a_tenant_may_place_only_so_many_calls_per_minute(dsn: str, keys: Keys) -> None:
    """Per-tenant cap: the fourth click in a minute, on any session, is refused before the provider sees it."""
    async with live_service(dsn, calls_per_minute=3) as live:
        sessions = await _sessions(live, keys, 4)
        answers = [await live.http.post(f"/v1/sessions/{s['id']}/calls", headers=keys.a) for s in sessions]
        assert [a.status_code for a in answers] == [202, 202, 202, 429]
        assert 1 <= int(answers[3].headers["retry-after"]) <= 60
        assert len(live.sim.requests) == 3


async def test_session_creation_is_rate_limited_per_tenant(dsn: str, keys: Keys) -> None:
    """Past the per-minute budget a create is 429; another tenant is unaffected."""
    async with live_service(dsn, sessions_per_minute=3) as live:
        await pool(live.http, keys.a, dids=5)
        await pool(live.http, keys.b, dids=did_numbers(1, start=90))
        statuses = []
        for i in range(4):
            r = await create_session(live.http, keys.a, f"o{i}", f"+9198700000{i:02d}", "+918760000000")
            statuses.append(r.status_code)
        assert statuses == [201, 201, 201, 429]
        await open_session(live.http, keys.b, order="b", customer="+919870000099", agent="+918760000099")


async def test_retention_masks_numbers_and_drops_recordings_but_keeps_counts(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """After the retention period an ended session, its calls and reports keep no real number."""
    async with live_service(dsn) as live:
        old, recent = await _sessions(live, keys, 2)
        for s in (old, recent):
            r = await live.http.post(f"/v1/sessions/{s['id']}/calls", json={"record": True}, headers=keys.a)
            await call_status(live, keys, r.json()["id"], "completed")
            await live.http.post(f"/v1/sessions/{s['id']}/close", headers=keys.a)
        now = await db.fetchval("SELECT now()")
        await db.execute("UPDATE sessions SET closed_at = $2 WHERE id = $1::uuid", old["id"], now - timedelta(days=31))
        assert await redact_old_sessions(db, now, days=30) == 1
        assert await redact_old_sessions(db, now, days=30) == 0
        masked = (await live.http.get(f"/v1/sessions/{old['id']}", headers=keys.a)).json()
        assert masked["customer"] == old["customer"][:3] + "******" + old["customer"][-4:]
        assert masked["agent"].count("*") == 6 and masked["calls_made"] == 1
        call = (await live.http.get(f"/v1/sessions/{old['id']}/calls", headers=keys.a)).json()["items"][0]
        assert "*" in call["from"] and "*" in call["to"] and call["recording_url"] is None
        # its recording reference went with the numbers, and the call says so (contract: deleted_at)
        assert call["recording"]["available"] is False and call["recording"]["deleted_at"]
        assert call["status"] == "completed" and call["billing_seconds"] > 0
        body = opened_body(await db.fetchval("SELECT body FROM provider_reports WHERE call_id = $1::uuid", call["id"]))
        assert old["customer"][1:] not in body.decode() and old["agent"][1:] not in body.decode()
        erased = await db.fetchrow(
            "SELECT customer_ct, customer_ix, agent_ct, agent_ix FROM sessions WHERE id = $1::uuid", old["id"]
        )
        assert set(erased.values()) == {None}, "retention clears the ciphertexts and blind indexes"
        kept = (await live.http.get(f"/v1/sessions/{recent['id']}", headers=keys.a)).json()
        assert kept["customer"] == recent["customer"]
