"""Sessions over REST: create, repeat, read, list, TTL, close, expire, and the broker's rules."""

import asyncpg
import httpx

from service.app import create_app
from tests.factories import close_session, create_session, open_session, pool
from tests.helpers import (
    AGENT,
    CUSTOMER,
    FakeClock,
    Keys,
    add_dids,
    assert_problem,
    did_numbers,
    mobile_numbers,
)


async def create(client: httpx.AsyncClient, keys: Keys, **body: object) -> httpx.Response:
    return await create_session(client, keys.a, **body)  # type: ignore[arg-type]


async def test_a_session_is_created_on_a_did_of_the_pool(client: httpx.AsyncClient, keys: Keys) -> None:
    """201 with the contract's fields; numbers normalized to E.164; metadata returned as given."""
    await add_dids(client, keys.a, did_numbers(2))
    r = await create(client, keys, customer="919876543210", metadata={"city": "BLR", "n": [1, 2]}, max_calls=3)
    assert r.status_code == 201, r.text
    s = r.json()
    assert set(s) == {
        "id", "order_id", "customer", "agent", "masked_number", "pool", "status", "close_reason", "close_note", "created_at",
        "expires_at", "closed_at", "record", "max_call_minutes", "max_calls", "calls_made", "cost", "metadata",
    }  # fmt: skip
    assert (s["customer"], s["agent"], s["status"], s["pool"]) == (CUSTOMER, AGENT, "active", "default")
    assert s["masked_number"] in did_numbers(2)
    assert s["metadata"] == {"city": "BLR", "n": [1, 2]} and s["max_calls"] == 3 and s["calls_made"] == 0
    assert s["created_at"].endswith(("Z", "+00:00")) and s["closed_at"] is None


async def test_a_repeated_create_returns_the_same_session_with_200(client: httpx.AsyncClient, keys: Keys) -> None:
    """Same tenant, order and pair while active, other fields absent or equal: 200 with the existing session."""
    await add_dids(client, keys.a, did_numbers(3))
    first = await create(client, keys, ttl_seconds=600, max_calls=2, metadata={"k": 1})
    assert first.status_code == 201, first.text
    for again in (await create(client, keys), await create(client, keys, ttl_seconds=600, max_calls=2)):
        assert again.status_code == 200 and again.json() == first.json()


async def test_a_repeated_create_with_other_values_is_409_naming_them(client: httpx.AsyncClient, keys: Keys) -> None:
    """A repeat whose ttl_seconds, max_calls or metadata differ is 409 conflicting_repeat naming each; nothing changes."""
    await add_dids(client, keys.a, did_numbers(3))
    first = await create(client, keys, ttl_seconds=600, max_calls=2, metadata={"k": 1})
    again = await create(client, keys, ttl_seconds=900, max_calls=2, metadata={"k": 2}, record=True)
    problem = assert_problem(again, 409, "conflicting_repeat")
    assert problem["fields"] == ["record", "metadata", "ttl_seconds"]
    assert all(name in problem["detail"] for name in ("record", "metadata", "ttl_seconds"))
    session = (await client.get(f"/v1/sessions/{first.json()['id']}", headers=keys.a)).json()
    assert session == first.json()


async def test_customer_equal_to_agent_is_422(client: httpx.AsyncClient, keys: Keys) -> None:
    """A session needs two different parties."""
    await add_dids(client, keys.a, did_numbers(1))
    assert_problem(await create(client, keys, agent="919876543210"), 422, "invalid_request")


async def test_metadata_over_4_kib_is_422(client: httpx.AsyncClient, keys: Keys) -> None:
    """Metadata is capped at 4 KiB."""
    await add_dids(client, keys.a, did_numbers(1))
    problem = assert_problem(await create(client, keys, metadata={"x": "y" * 5000}), 422, "invalid_request")
    assert problem["field"] == "metadata"


async def test_an_empty_pool_is_exhausted_with_details(client: httpx.AsyncClient, keys: Keys) -> None:
    """No DIDs at all: 409 pool_exhausted saying the pool has none."""
    problem = assert_problem(await create(client, keys), 409, "pool_exhausted")
    assert problem["pool_dids"] == 0


async def test_no_crossed_lines_a_party_needs_one_did_per_concurrent_session(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """A customer in two sessions gets two DIDs; a third with two DIDs is refused saying why."""
    await add_dids(client, keys.a, did_numbers(2))
    a = (await create(client, keys, order="o1", agent="+918765432101")).json()
    b = (await create(client, keys, order="o2", agent="+918765432102")).json()
    assert a["masked_number"] != b["masked_number"]
    problem = assert_problem(await create(client, keys, order="o3", agent="+918765432103"), 409, "pool_exhausted")
    assert problem["pool_dids"] == 2 and problem["ruled_out"]["party_busy"] == 2
    # the agent side counts too, whatever the role: the first agent as a customer elsewhere
    c = await create(client, keys, order="o4", customer="+918765432101", agent="+919999900000")
    assert c.status_code == 201 and c.json()["masked_number"] == b["masked_number"]


async def test_get_list_and_tenant_isolation(client: httpx.AsyncClient, keys: Keys) -> None:
    """A session reads back; tenant B gets 404 on it and an empty list."""
    await add_dids(client, keys.a, did_numbers(1))
    s = (await create(client, keys)).json()
    assert (await client.get(f"/v1/sessions/{s['id']}", headers=keys.a)).json() == s
    assert_problem(await client.get(f"/v1/sessions/{s['id']}", headers=keys.b), 404, "not_found")
    assert_problem(
        await client.patch(f"/v1/sessions/{s['id']}", json={"ttl_seconds": 60}, headers=keys.b), 404, "not_found"
    )
    assert_problem(await client.post(f"/v1/sessions/{s['id']}/close", headers=keys.b), 404, "not_found")
    assert (await client.get("/v1/sessions", headers=keys.b)).json() == {"items": [], "next_cursor": None}
    expired = await client.post("/v1/sessions/expire", json={"order_id": "ORD-1"}, headers=keys.b)
    assert expired.json() == {"expired": 0}
    assert (await client.get(f"/v1/sessions/{s['id']}", headers=keys.a)).json()["status"] == "active"


async def test_listing_pages_newest_first_with_filters(client: httpx.AsyncClient, keys: Keys, clock: FakeClock) -> None:
    """Keyset pages walk every session exactly once, newest first; filters narrow the list."""
    await add_dids(client, keys.a, did_numbers(30))
    made = []
    for i, agent in enumerate(mobile_numbers(7, prefix="+91876")):
        clock.advance(1)
        made.append((await create(client, keys, order=f"o{i % 2}", agent=agent)).json()["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/sessions", params=params, headers=keys.a)).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    only_o1 = (await client.get("/v1/sessions", params={"order_id": "o1"}, headers=keys.a)).json()["items"]
    assert len(only_o1) == 3 and {s["order_id"] for s in only_o1} == {"o1"}
    by_customer = await client.get("/v1/sessions", params={"customer": "919876543210"}, headers=keys.a)
    assert len(by_customer.json()["items"]) == 7
    assert_problem(
        await client.get("/v1/sessions", params={"cursor": "nonsense"}, headers=keys.a), 422, "invalid_request"
    )
    assert_problem(await client.get("/v1/sessions", params={"limit": 500}, headers=keys.a), 422, "invalid_request")


async def test_ttl_change_and_expiry_without_the_sweeper(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock, db: asyncpg.Connection
) -> None:
    """A session past expires_at reads as expired and frees its parties at once; the sweeper then marks it."""
    await add_dids(client, keys.a, did_numbers(1))
    s = (await create(client, keys, ttl_seconds=600)).json()
    r = await client.patch(f"/v1/sessions/{s['id']}", json={"ttl_seconds": 120}, headers=keys.a)
    assert r.status_code == 200
    clock.advance(121)
    read = (await client.get(f"/v1/sessions/{s['id']}", headers=keys.a)).json()
    assert (read["status"], read["close_reason"]) == ("expired", "ttl")
    # the pair's next order takes the only DID at once, though no sweeper has run
    again = await create(client, keys, order="ORD-2")
    assert again.status_code == 201 and again.json()["masked_number"] == s["masked_number"]
    assert_problem(
        await client.patch(f"/v1/sessions/{s['id']}", json={"ttl_seconds": 600}, headers=keys.a),
        409,
        "session_not_active",
    )
    assert await db.fetchval("SELECT status FROM sessions WHERE id = $1::uuid", s["id"]) == "active"
    from service.broker.sweeps import sweep_expired

    assert await sweep_expired(db, clock()) == 1
    assert (
        await db.fetchval("SELECT status || '/' || close_reason FROM sessions WHERE id = $1::uuid", s["id"])
        == "expired/ttl"
    )


async def test_closing_is_idempotent(client: httpx.AsyncClient, keys: Keys) -> None:
    """Close gives closed_by_client; closing again is 200 and unchanged."""
    await add_dids(client, keys.a, did_numbers(1))
    s = (await create(client, keys)).json()
    closed = await client.post(f"/v1/sessions/{s['id']}/close", json={"reason": "delivered"}, headers=keys.a)
    assert closed.status_code == 200
    body = closed.json()
    assert (body["status"], body["close_reason"]) == ("closed", "closed_by_client") and body["closed_at"]
    again = await client.post(f"/v1/sessions/{s['id']}/close", headers=keys.a)
    assert again.status_code == 200 and again.json() == body


async def test_the_reason_given_to_close_is_kept_as_close_note_on_the_session_and_its_event(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """A close's `reason` comes back as `close_note` on the session, its GET and its session.closed event; over 256 is 422."""
    await pool(client, keys.a, dids=2)
    s = await open_session(client, keys.a)
    too_long = await client.post(f"/v1/sessions/{s['id']}/close", json={"reason": "x" * 257}, headers=keys.a)
    assert_problem(too_long, 422, "invalid_request")
    closed = await close_session(client, keys.a, s, reason="order delivered")
    assert (closed["close_reason"], closed["close_note"]) == ("closed_by_client", "order delivered")
    assert (await client.get(f"/v1/sessions/{s['id']}", headers=keys.a)).json() == closed
    events = (await client.get("/v1/events", params={"type": "session.closed"}, headers=keys.a)).json()["items"]
    assert [e["data"] for e in events] == [closed]
    other = await open_session(client, keys.a, order="ORD-2")
    assert (await close_session(client, keys.a, other))["close_note"] is None


async def test_bulk_expire_needs_a_filter_and_ends_matching_sessions(client: httpx.AsyncClient, keys: Keys) -> None:
    """Ops expire every active session matching all filters; no filter is 422; sessions keys get 403."""
    await add_dids(client, keys.a, did_numbers(3))
    await create(client, keys, order="A", agent="+918765432101")
    await create(client, keys, order="A", agent="+918765432102")
    keep = (await create(client, keys, order="B", agent="+918765432103")).json()
    assert_problem(await client.post("/v1/sessions/expire", json={}, headers=keys.a), 422, "invalid_request")
    r = await client.post("/v1/sessions/expire", json={"order_id": "A", "customer": CUSTOMER}, headers=keys.a)
    assert r.json() == {"expired": 2}
    listed = (await client.get("/v1/sessions", params={"status": "expired"}, headers=keys.a)).json()["items"]
    assert {s["close_reason"] for s in listed} == {"expired_by_ops"} and len(listed) == 2
    assert (await client.get(f"/v1/sessions/{keep['id']}", headers=keys.a)).json()["status"] == "active"


async def test_cool_off_keeps_a_customer_from_a_stranger_on_a_recent_did(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock
) -> None:
    """After a session ends, its DID is not given to the customer with another agent until cool-off passes."""
    await add_dids(client, keys.a, did_numbers(1))
    s = (await create(client, keys)).json()
    await client.post(f"/v1/sessions/{s['id']}/close", headers=keys.a)
    problem = assert_problem(await create(client, keys, order="o2", agent="+918765432100"), 409, "pool_exhausted")
    assert problem["ruled_out"]["cooling_off"] == 1
    # nor the agent with another customer
    assert_problem(await create(client, keys, order="o3", customer="+919876500000"), 409, "pool_exhausted")
    clock.advance(3601)
    assert (await create(client, keys, order="o2", agent="+918765432100")).status_code == 201


async def test_a_returning_pair_gets_its_did_back(client: httpx.AsyncClient, keys: Keys) -> None:
    """Sticky: a pair whose session ended gets the same DID again among many free ones."""
    await add_dids(client, keys.a, did_numbers(40))
    first = (await create(client, keys)).json()
    await client.post(f"/v1/sessions/{first['id']}/close", headers=keys.a)
    for i in range(5):
        again = (await create(client, keys, order=f"next-{i}")).json()
        assert again["masked_number"] == first["masked_number"]
        await client.post(f"/v1/sessions/{again['id']}/close", headers=keys.a)


async def test_geo_match_prefers_the_customers_country(client: httpx.AsyncClient, keys: Keys) -> None:
    """With Indian and US DIDs in a pool, an Indian customer gets an Indian DID, and a UK customer any."""
    await add_dids(client, keys.a, did_numbers(3) + ["+14155552671", "+14155552672"])
    for i in range(3):
        s = (await create(client, keys, order=f"in-{i}", agent=f"+91876543210{i}")).json()
        assert s["masked_number"].startswith("+91")
    problem = assert_problem(await create(client, keys, order="in-3", agent="+918765432109"), 409, "pool_exhausted")
    assert problem["ruled_out"]["other_country"] == 2
    uk = await create(client, keys, order="uk", customer="+447400123456", agent="+447400123457")
    assert uk.status_code == 201


async def test_stats_and_metrics_show_pools_and_refusals(client: httpx.AsyncClient, keys: Keys) -> None:
    """/v1/stats shows DIDs, active sessions and headroom per pool; /metrics counts creations and refusals."""
    await add_dids(client, keys.a, did_numbers(3))
    await create(client, keys, order="o1", agent="+918765432101")
    await create(client, keys, order="o2", agent="+918765432102")
    stats = (await client.get("/v1/stats", headers=keys.a)).json()["pools"]
    no_calls = {"calls": 0, "minutes": 0.0, "cost": "0", "priced_calls": 0}
    assert stats == [
        {"tenant": "tenant-a", "pool": "default", "dids": 3, "active_dids": 3, "active_sessions": 2,
         "busiest_party_sessions": 2, "second_party_sessions": 1, "headroom": 0,
         "last_24h": no_calls, "last_30d": no_calls}
    ]  # fmt: skip
    await create(client, keys, order="o3", agent="+918765432103")
    await create(client, keys, order="o4", agent="+918765432104")
    text = (await client.get("/metrics")).text
    assert 'masking_sessions_refused_total{reason="no_eligible_did"}' in text
    assert 'masking_active_sessions{pool="default",tenant="tenant-a"} 3.0' in text
    assert 'masking_pool_headroom{pool="default",tenant="tenant-a"} -1.0' in text


async def test_the_background_sweeper_expires_sessions(settings, dsn: str, keys: Keys, db: asyncpg.Connection) -> None:  # type: ignore[no-untyped-def]
    """With background work on, a session past its TTL is marked expired without anyone asking."""
    from asgi_lifespan import LifespanManager

    from tests.helpers import wait_for

    clock = FakeClock()
    app = create_app(settings, dsn=dsn, clock=clock, sweep_interval=0.05)
    async with LifespanManager(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            await add_dids(http, keys.a, did_numbers(1))
            s = (await create_session(http, keys.a, ttl_seconds=60)).json()
            clock.advance(61)

            async def swept() -> bool:
                return await db.fetchval("SELECT status FROM sessions WHERE id = $1::uuid", s["id"]) == "expired"

            await wait_for(swept)
