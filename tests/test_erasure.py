"""POST /v1/erasures: a number destroyed in the tenant's ended sessions, calls, reports and events; active ones listed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from service.broker.audit import Actor, Context
from service.broker.erasure import ErasureRequest, erase
from service.db import sealed
from service.logging import mask_number
from tests.factories import close_session, open_session, pool, report_for
from tests.helpers import Keys, assert_problem, did_numbers
from tests.live import Live, live_service
from tests.test_reports import click

NUMBER = "+919876500011"
AGENTS = ["+919811100001", "+919811100002", "+919811100003"]
STRANGER = "+919800099999"


@pytest.fixture
async def live(dsn: str) -> Any:
    async with live_service(dsn) as service:
        yield service


async def _sealed_fields(db: asyncpg.Connection, tenant: int, where: str, *args: Any) -> list[str]:
    """The sealed (`\\x`) fields of the events selected, as type.field."""
    found = []
    for r in await db.fetch(
        f"SELECT type, data::text AS data FROM events WHERE tenant_id = $1 AND {where}", tenant, *args
    ):
        data = json.loads(r["data"])
        found += [
            f"{r['type']}.{f}"
            for f, _ in sealed._event_fields(r["type"], data)
            if str(data.get(f, "")).startswith("\\x")
        ]
    return found


async def test_erasure_destroys_the_number_in_ended_sessions_and_lists_the_active_one(
    live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Two ended sessions (one with a reported call), an unmatched report and an active session: counts, masks, audit."""
    http = live.http
    dids = await pool(http, keys.a, dids=did_numbers(4))
    called = await open_session(http, keys.a, order="E-1", customer=NUMBER, agent=AGENTS[0])
    call = await click(live, keys, called)
    assert (await http.post(live.callback, content=report_for(call))).status_code == 200
    assert (await http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()["status"] == "completed"
    await close_session(http, keys.a, called)
    quiet = await open_session(http, keys.a, order="E-2", customer=NUMBER, agent=AGENTS[1])
    await close_session(http, keys.a, quiet)
    active = await open_session(http, keys.a, order="E-3", customer=NUMBER, agent=AGENTS[2])
    stray = report_for({"bridge": dids[3], "from": NUMBER, "to": STRANGER}, start=datetime(2026, 1, 1, tzinfo=UTC))
    assert (await http.post(live.callback, content=stray)).status_code == 200
    tenant = await db.fetchval("SELECT tenant_id FROM sessions WHERE id = $1", called["id"])
    unmatched = await db.fetchval("SELECT id FROM provider_reports WHERE outcome = 'unmatched'")
    assert unmatched is not None
    ended = [called["id"], quiet["id"]]
    subject = "coalesce(data->>'session_id', data->>'id') = ANY($2::text[])"
    before = await _sealed_fields(db, tenant, subject, ended)
    before_unmatched = await _sealed_fields(db, tenant, "type = 'report.unmatched'")
    assert before and before_unmatched == ["report.unmatched.body"]
    events_with_numbers = await db.fetchval(
        f"SELECT count(*) FROM events WHERE tenant_id = $1 AND ({subject} OR type = 'report.unmatched')"
        " AND '\\x' IN (left(data->>'customer', 2), left(data->>'from', 2), left(data->>'body', 2))",
        tenant,
        ended,
    )

    r = await http.post("/v1/erasures", json={"number": NUMBER}, headers=keys.a)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "erased": {"sessions": 2, "calls": 1, "reports": 2, "events": events_with_numbers},
        "active_sessions": [active["id"]],
    }

    for erased, agent in ((called, AGENTS[0]), (quiet, AGENTS[1])):
        shown = (await http.get(f"/v1/sessions/{erased['id']}", headers=keys.a)).json()
        assert (shown["customer"], shown["agent"]) == (mask_number(NUMBER), mask_number(agent))
    intact = (await http.get(f"/v1/sessions/{active['id']}", headers=keys.a)).json()
    assert (intact["status"], intact["customer"], intact["agent"]) == ("active", NUMBER, AGENTS[2])
    shown_call = (await http.get(f"/v1/calls/{call['id']}", headers=keys.a)).json()
    assert shown_call["status"] == "completed" and NUMBER not in json.dumps(shown_call)

    rows = await db.fetch(
        "SELECT id, customer_ct, customer_ix, agent_ct, agent_ix, redacted_at, customer_mask FROM sessions"
    )
    for row in rows:
        if str(row["id"]) in ended:
            assert (row["customer_ct"], row["customer_ix"], row["agent_ct"], row["agent_ix"]) == (None,) * 4
            assert row["redacted_at"] is not None and row["customer_mask"] == mask_number(NUMBER)
        else:
            assert row["customer_ix"] == sealed.index(tenant, NUMBER) and row["redacted_at"] is None
    erased_call = await db.fetchrow(
        "SELECT from_ct, from_ix, to_ct, to_ix, billing_seconds FROM calls WHERE id = $1", call["id"]
    )
    assert (
        erased_call["billing_seconds"] == 23
        and [erased_call[c] for c in ("from_ct", "from_ix", "to_ct", "to_ix")] == [None] * 4
    )
    assert await db.fetchval("SELECT count(*) FROM bindings WHERE session_id = ANY($1::uuid[])", ended) == 0
    digits = NUMBER[1:]
    for body in await db.fetch("SELECT body FROM provider_reports"):
        assert digits not in sealed.open_bytes(None, sealed.REPORT_BODY, body["body"]).decode()
    assert await _sealed_fields(db, tenant, subject, ended) == []
    assert await _sealed_fields(db, tenant, "type = 'report.unmatched'") == []
    feed = (await http.get("/v1/events?type=report.unmatched", headers=keys.a)).json()
    assert feed["items"] and digits not in json.dumps(feed)

    audit = await db.fetch("SELECT action, target_type, target_id, actor_kind FROM audit_log WHERE action = 'erasure'")
    assert [tuple(a) for a in audit] == [("erasure", "number", mask_number(NUMBER), "api_key")]
    again = await http.post("/v1/erasures", json={"number": NUMBER}, headers=keys.a)
    assert again.json()["erased"] == {"sessions": 0, "calls": 0, "reports": 0, "events": 0}


async def test_erasure_refuses_a_bad_number_and_a_sessions_key(live: Live, keys: Keys, db: asyncpg.Connection) -> None:
    """A number that is not one is a 422 naming the field; a key without scope ops is refused; neither is audited."""
    bad = await live.http.post("/v1/erasures", json={"number": "12ab"}, headers=keys.a)
    assert assert_problem(bad, 422, "invalid_phone_number")["field"] == "number"
    refused = await live.http.post("/v1/erasures", json={"number": NUMBER}, headers=keys.auth(keys.a_sessions))
    assert refused.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'erasure'") == 0


async def test_erasure_goes_in_batches_until_every_ended_session_is_done(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """With batches of one session, three ended sessions naming the number are all erased (and counted) in turn."""
    await pool(client, keys.a, dids=did_numbers(4))
    ended = []
    for i, agent in enumerate(AGENTS):
        session = await open_session(client, keys.a, order=f"B-{i}", customer=NUMBER, agent=agent)
        ended.append((await close_session(client, keys.a, session))["id"])
    tenant = await db.fetchval("SELECT tenant_id FROM sessions LIMIT 1")
    context = Context(tenant_id=tenant, actor=Actor.cli("tester@host"))
    done = await erase(db, context, ErasureRequest(number=NUMBER), datetime.now(UTC), batch=1)
    assert (done.erased.sessions, done.active_sessions) == (3, [])
    assert done.erased.events == await db.fetchval(
        "SELECT count(*) FROM events WHERE coalesce(data->>'session_id', data->>'id') = ANY($1::text[])", ended
    )
    left = await db.fetchval("SELECT count(*) FROM sessions WHERE customer_ct IS NOT NULL OR agent_ix IS NOT NULL")
    assert left == 0
