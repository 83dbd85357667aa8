"""Reassigning a party: the session keeps its id and, when the rules allow, its DID; rule 1 holds under load."""

import asyncio
import itertools
import json
import random
from collections import Counter

import asyncpg
import httpx
import pytest

from tests.factories import calls_for_every_session, create_session, open_session
from tests.helpers import (
    AGENT,
    CROSSED_LINES,
    CUSTOMER,
    ROUTE_TOKEN,
    FakeClock,
    Keys,
    add_dids,
    assert_problem,
    did_numbers,
    index_in,
    make_settings,
    mobile_numbers,
    route,
    session_body,
)
from tests.processes import ServeProcess, masking_env, run_cli

NEW_AGENT = "+918765432100"


@pytest.fixture
def settings(dsn: str):  # type: ignore[no-untyped-def]
    return make_settings(dsn, callback_token=ROUTE_TOKEN)


async def test_a_new_agent_takes_over_and_the_customer_keeps_the_masked_number(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """Same id, same DID; the customer now reaches the new agent, the old agent reaches nobody; history kept."""
    await add_dids(client, keys.a, did_numbers(3))
    s = await open_session(client, keys.a)
    r = await client.patch(f"/v1/sessions/{s['id']}", json={"agent": NEW_AGENT.lstrip("+")}, headers=keys.a)
    assert r.status_code == 200, r.text
    moved = r.json()
    assert (moved["id"], moved["masked_number"], moved["order_id"]) == (s["id"], s["masked_number"], "ORD-1")
    assert (moved["customer"], moved["agent"]) == (CUSTOMER, NEW_AGENT)
    assert (await client.get(f"/v1/sessions/{s['id']}", headers=keys.a)).json() == moved
    did = s["masked_number"]
    assert (await route(client, did, CUSTOMER)).json()["connect_to"] == NEW_AGENT.lstrip("+")
    assert (await route(client, did, NEW_AGENT)).json()["connect_to"] == CUSTOMER.lstrip("+")
    assert_problem(await route(client, did, AGENT), 404, "no_session")
    history = await db.fetch("SELECT party, old_number, new_number, old_did, new_did FROM session_changes")
    assert [tuple(h) for h in history] == [("agent", "+91******2109", "+91******2100", did, did)]
    same = await client.patch(f"/v1/sessions/{s['id']}", json={"agent": NEW_AGENT}, headers=keys.a)
    assert same.json() == moved  # asking for the party it already has changes nothing
    assert await db.fetchval(CROSSED_LINES) == 0


async def test_a_new_customer_can_take_over_too_and_ttl_changes_in_the_same_request(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """PATCH with customer and ttl_seconds: the agent keeps the masked number, the session lives on from now."""
    await add_dids(client, keys.a, did_numbers(2))
    s = await open_session(client, keys.a)
    r = await client.patch(
        f"/v1/sessions/{s['id']}", json={"customer": "+919876543299", "ttl_seconds": 120}, headers=keys.a
    )
    assert r.status_code == 200, r.text
    assert r.json()["customer"] == "+919876543299" and r.json()["masked_number"] == s["masked_number"]
    assert r.json()["expires_at"] != s["expires_at"]


async def test_a_later_ttl_change_does_not_bring_back_the_replaced_agents_binding(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """Agent replaced, then the TTL extended: the old agent's binding stays ended (else it blocks the DID for them)."""
    await add_dids(client, keys.a, did_numbers(3))
    s = await open_session(client, keys.a)
    r = await client.patch(f"/v1/sessions/{s['id']}", json={"agent": NEW_AGENT}, headers=keys.a)
    assert r.status_code == 200, r.text
    agent_ix = await index_in(db, s["id"], AGENT)
    ended = await db.fetchval(
        "SELECT ends_at FROM bindings WHERE number_ix = $1 AND did = $2", agent_ix, s["masked_number"]
    )
    r = await client.patch(f"/v1/sessions/{s['id']}", json={"ttl_seconds": 7200}, headers=keys.a)
    assert r.status_code == 200, r.text
    after = await db.fetchval(
        "SELECT ends_at FROM bindings WHERE number_ix = $1 AND did = $2", agent_ix, s["masked_number"]
    )
    assert after == ended
    live = await db.fetch("SELECT number_ix FROM bindings WHERE session_id = $1::uuid AND ends_at > now()", s["id"])
    assert sorted(b["number_ix"] for b in live) == sorted(
        [await index_in(db, s["id"], n) for n in (CUSTOMER, NEW_AGENT)]
    )


async def test_a_busy_new_agent_is_a_conflict_unless_a_new_number_is_allowed(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """The new agent already serves another order on this DID: 409 reassign_conflict; with allow_new_number the
    session moves to another DID and the old masked number no longer connects the customer."""
    first = did_numbers(1)[0]
    await add_dids(client, keys.a, [first])
    s = await open_session(client, keys.a)
    await open_session(client, keys.a, order="ORD-2", customer="+919876543211", agent=NEW_AGENT)
    second = did_numbers(1, start=1)[0]
    await add_dids(client, keys.a, [second])
    problem = assert_problem(
        await client.patch(f"/v1/sessions/{s['id']}", json={"agent": NEW_AGENT}, headers=keys.a),
        409,
        "reassign_conflict",
    )
    assert problem["reason"] == "party_busy" and "allow_new_number" in problem["detail"]
    assert (await client.get(f"/v1/sessions/{s['id']}", headers=keys.a)).json()["agent"] == AGENT  # nothing changed
    r = await client.patch(
        f"/v1/sessions/{s['id']}", json={"agent": NEW_AGENT, "allow_new_number": True}, headers=keys.a
    )
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["id"] == s["id"] and moved["masked_number"] == second and moved["agent"] == NEW_AGENT
    assert (await route(client, second, CUSTOMER)).json()["connect_to"] == NEW_AGENT.lstrip("+")
    assert_problem(await route(client, first, CUSTOMER), 404, "no_session")
    assert_problem(await route(client, first, AGENT), 404, "no_session")
    assert await db.fetchval(CROSSED_LINES) == 0
    assert await db.fetchval("SELECT count(*) FROM sessions") == 2  # the allocator's placeholder is gone
    live = await db.fetchval("SELECT count(*) FROM bindings WHERE ends_at > now()")
    assert live == 4


async def test_a_new_agent_cooling_off_on_the_did_is_refused_and_the_old_agent_cools_off_from_now(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock
) -> None:
    """Rule 3 both ways: the new agent's recent session with someone else blocks the DID; the replaced agent
    may not get that DID with another customer until the cool-off passes."""
    await add_dids(client, keys.a, did_numbers(1))
    old = await open_session(client, keys.a, order="OLD", customer="+919876543222", agent=NEW_AGENT)
    await client.post(f"/v1/sessions/{old['id']}/close", headers=keys.a)
    s = await open_session(client, keys.a)
    problem = assert_problem(
        await client.patch(f"/v1/sessions/{s['id']}", json={"agent": NEW_AGENT}, headers=keys.a),
        409,
        "reassign_conflict",
    )
    assert problem["reason"] == "cooling_off"
    third = "+918765432133"
    assert (await client.patch(f"/v1/sessions/{s['id']}", json={"agent": third}, headers=keys.a)).status_code == 200
    refused = await create_session(client, keys.a, "X", "+919876543233", AGENT)
    assert assert_problem(refused, 409, "pool_exhausted")["ruled_out"]["cooling_off"] == 1
    clock.advance(3601)
    refused_no_more = await create_session(client, keys.a, "X", "+919876543233", AGENT)
    assert refused_no_more.status_code == 201


async def test_no_reassignment_with_a_call_in_flight_or_on_an_ended_session(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """409 call_in_progress while a call awaits its report; 409 session_not_active once closed; 404 elsewhere."""
    await add_dids(client, keys.a, did_numbers(2))
    s = await open_session(client, keys.a)
    await calls_for_every_session(db)
    patch = {"agent": NEW_AGENT, "allow_new_number": True}
    assert_problem(await client.patch(f"/v1/sessions/{s['id']}", json=patch, headers=keys.a), 409, "call_in_progress")
    await db.execute("UPDATE calls SET in_flight = false, status = 'missed'")
    await client.post(f"/v1/sessions/{s['id']}/close", headers=keys.a)
    assert_problem(await client.patch(f"/v1/sessions/{s['id']}", json=patch, headers=keys.a), 409, "session_not_active")
    assert_problem(await client.patch(f"/v1/sessions/{s['id']}", json=patch, headers=keys.b), 404, "not_found")


async def test_bad_reassignments_are_422_naming_the_field(client: httpx.AsyncClient, keys: Keys) -> None:
    """An invalid number, the other party's own number, or an empty body."""
    await add_dids(client, keys.a, did_numbers(1))
    s = await open_session(client, keys.a)
    url = f"/v1/sessions/{s['id']}"
    assert (
        assert_problem(await client.patch(url, json={"agent": "12"}, headers=keys.a), 422, "invalid_phone_number")[
            "field"
        ]
        == "agent"
    )
    assert (
        assert_problem(await client.patch(url, json={"agent": CUSTOMER}, headers=keys.a), 422, "invalid_request")[
            "field"
        ]
        == "agent"
    )
    assert_problem(await client.patch(url, json={}, headers=keys.a), 422, "invalid_request")
    assert_problem(await client.patch(url, json={"allow_new_number": "yes"}, headers=keys.a), 422, "invalid_request")


async def test_rule_one_holds_under_concurrent_reassignments_and_creates_from_two_processes(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Two `masking serve` processes: 200 reassignments onto a few agents race 200 creates with the same agents;
    no number is ever bound twice to a DID among live sessions, and every live binding belongs to its session."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_LOG_LEVEL="warning", MASKING_SESSIONS_PER_MINUTE="100000")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    services = [ServeProcess(env) for _ in range(2)]
    try:
        for s in services:
            s.start()
        urls = itertools.cycle([s.url for s in services])
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            r = await http.post(next(urls) + "/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(12)]})
            assert r.status_code == 200
            customers = mobile_numbers(60, prefix="+91987")
            agents = mobile_numbers(6, prefix="+91876")
            base = [
                await http.post(next(urls) + "/v1/sessions", json=session_body(f"b{i}", customers[i], agents[i % 6]))
                for i in range(40)
            ]
            ids = [b.json()["id"] for b in base if b.status_code == 201]
            assert len(ids) >= 30
            rng = random.Random(7)

            def reassign(sid: str):  # type: ignore[no-untyped-def]
                body = {"agent": rng.choice(agents), "allow_new_number": rng.random() < 0.5}
                return http.patch(f"{next(urls)}/v1/sessions/{sid}", json=body)

            def create(i: int):  # type: ignore[no-untyped-def]
                body = session_body(f"n{i}", customers[40 + i % 20], rng.choice(agents))
                return http.post(next(urls) + "/v1/sessions", json=body)

            work = [reassign(rng.choice(ids)) for _ in range(200)] + [create(i) for i in range(200)]
            rng.shuffle(work)
            answers = await asyncio.gather(*work)
        codes = Counter((a.request.method, a.status_code, a.json().get("code")) for a in answers)
        print(f"\n{dict(codes)}")
        assert all(status in (200, 201, 409) for _, status, _ in codes), codes
        assert codes[("PATCH", 200, None)] > 0 and codes[("PATCH", 409, "reassign_conflict")] > 0
        assert codes[("POST", 201, None)] > 0
        assert await db.fetchval(CROSSED_LINES) == 0
        # Every live binding is its session's party on its session's DID, and every live session has two.
        orphans = await db.fetchval(
            """
            SELECT count(*) FROM bindings b LEFT JOIN sessions s ON s.id = b.session_id
            WHERE b.ends_at > now() AND (s.id IS NULL OR s.status <> 'active' OR s.did <> b.did
                                         OR b.number_ix NOT IN (s.customer_ix, s.agent_ix))
            """
        )
        assert orphans == 0, await db.fetch(
            """
            SELECT b.*, s.customer_mask, s.agent_mask, s.did AS sdid, s.status, s.order_id,
                   (SELECT array_agg(c.party || c.old_did || '>' || c.new_did) FROM session_changes c
                    WHERE c.session_id = s.id) AS changes
            FROM bindings b LEFT JOIN sessions s ON s.id = b.session_id
            WHERE b.ends_at > now() AND (s.id IS NULL OR s.status <> 'active' OR s.did <> b.did
                                         OR b.number_ix NOT IN (s.customer_ix, s.agent_ix))
            """
        )
        live_sessions = await db.fetchval("SELECT count(*) FROM sessions WHERE status = 'active'")
        assert await db.fetchval("SELECT count(*) FROM bindings WHERE ends_at > now()") == 2 * live_sessions
    finally:
        for s in services:
            s.stop()


async def test_a_draining_did_takes_no_new_pair_so_the_session_moves_only_when_allowed(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Rule 2: a DID being drained keeps its sessions but takes no new party; allow_new_number moves the session."""
    first, second = did_numbers(2)
    await add_dids(client, keys.a, [first])
    s = await open_session(client, keys.a)
    await add_dids(client, keys.a, [second])
    await client.patch(f"/v1/dids/{first}", json={"status": "draining"}, headers=keys.a)
    url = f"/v1/sessions/{s['id']}"
    problem = assert_problem(
        await client.patch(url, json={"agent": NEW_AGENT}, headers=keys.a), 409, "reassign_conflict"
    )
    assert problem["reason"] == "did_not_active" and problem["masked_number"] == first
    moved = await client.patch(url, json={"agent": NEW_AGENT, "allow_new_number": True}, headers=keys.a)
    assert moved.status_code == 200 and moved.json()["masked_number"] == second
    assert (await client.get("/v1/dids?pool=default", headers=keys.a)).json()["items"][0]["active_sessions"] == 0


async def test_an_order_never_gets_two_live_sessions_for_one_pair_by_reassignment(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """The order already has a live session with the new pair: 409 reassign_conflict (duplicate_pair), even
    when a new number is allowed."""
    await add_dids(client, keys.a, did_numbers(3))
    s = await open_session(client, keys.a)
    await open_session(client, keys.a, agent=NEW_AGENT)
    for allow in (False, True):
        body = {"agent": NEW_AGENT, "allow_new_number": allow}
        r = await client.patch(f"/v1/sessions/{s['id']}", json=body, headers=keys.a)
        assert assert_problem(r, 409, "reassign_conflict")["reason"] == "duplicate_pair"


async def test_a_close_that_meets_a_reassignment_in_flight_ends_the_new_partys_binding_too(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, dsn: str
) -> None:
    """A close waiting on a reassignment's transaction ends every binding the session has once it commits."""
    await add_dids(client, keys.a, did_numbers(2))
    session = (await create_session(client, keys.a)).json()
    sid, did = session["id"], session["masked_number"]
    other = await asyncpg.connect(dsn)
    try:
        async with other.transaction():
            # a reassignment's writes, held uncommitted: the session row changed, the new agent bound
            new_ix, old_ix = await index_in(db, sid, NEW_AGENT), await index_in(db, sid, AGENT)
            await other.execute("UPDATE sessions SET agent_ix = $2 WHERE id = $1::uuid", sid, new_ix)
            await other.execute(
                "UPDATE bindings SET ends_at = now() WHERE session_id = $1::uuid AND number_ix = $2", sid, old_ix
            )
            await other.execute(
                "INSERT INTO bindings (number_ix, did, peer_ix, session_id, ends_at)"
                " SELECT $2, did, customer_ix, id, expires_at FROM sessions WHERE id = $1::uuid",
                sid,
                new_ix,
            )
            closing = asyncio.create_task(client.post(f"/v1/sessions/{sid}/close", headers=keys.a))
            await asyncio.sleep(0.5)
            assert not closing.done()  # it waits for the reassignment's row lock
        closed = await closing
    finally:
        await other.close()
    assert closed.status_code == 200, closed.text
    live = await db.fetch(
        "SELECT number_ix FROM bindings WHERE session_id = $1::uuid AND ends_at > $2::text::timestamptz",
        sid,
        closed.json()["closed_at"],
    )
    assert [r["number_ix"] for r in live] == [], f"the new agent stays bound to {did} after the close"
