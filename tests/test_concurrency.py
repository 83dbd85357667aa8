"""Allocation under concurrency: many requests at once, in one process and across service processes."""

import asyncio
import hashlib
import json
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

from service.db import idempotency, sealed
from tests.factories import create_session
from tests.helpers import CROSSED_LINES, CUSTOMER, Keys, add_dids, did_numbers, mobile_numbers, session_body
from tests.processes import ServeProcess, masking_env, run_cli


def storm_bodies(n: int) -> list[dict]:
    return [session_body(order=f"storm-{i}", agent=agent) for i, agent in enumerate(mobile_numbers(n, prefix="+91876"))]


def assert_storm_outcome(responses: list[httpx.Response], dids: int, attempts: int) -> None:
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: dids, 409: attempts - dids}, statuses
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"pool_exhausted"}
    assert len({r.json()["masked_number"] for r in responses if r.status_code == 201}) == dids


async def test_forty_concurrent_creates_for_one_customer_on_five_dids(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """Exactly 5 of 40 simultaneous sessions for one customer succeed, on 5 distinct DIDs; 35 are exhausted."""
    await add_dids(client, keys.a, did_numbers(5))
    agents = mobile_numbers(40, prefix="+91876")
    responses = await asyncio.gather(
        *(create_session(client, keys.a, f"storm-{i}", agent=a) for i, a in enumerate(agents))
    )
    assert_storm_outcome(list(responses), dids=5, attempts=40)
    assert await db.fetchval(CROSSED_LINES) == 0


async def test_five_hundred_pairs_on_twenty_dids_spread_evenly(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """500 distinct pairs, 50 at a time, all get sessions; the busiest DID carries at most 1.5x the mean."""
    await add_dids(client, keys.a, did_numbers(20))
    customers, agents = mobile_numbers(500, prefix="+91987"), mobile_numbers(500, prefix="+91876")
    pairs = list(enumerate(zip(customers, agents, strict=True)))
    results = []
    for i in range(0, 500, 50):
        results += await asyncio.gather(
            *(create_session(client, keys.a, f"o{n}", c, a) for n, (c, a) in pairs[i : i + 50])
        )
    assert Counter(r.status_code for r in results) == {201: 500}
    load = Counter(r.json()["masked_number"] for r in results)
    busiest, mean = max(load.values()), 500 / 20
    print(f"\nspread: busiest DID {busiest} sessions, mean {mean}, ratio {busiest / mean:.2f}")
    assert len(load) == 20 and busiest <= 1.5 * mean
    assert await db.fetchval(CROSSED_LINES) == 0


async def test_twenty_identical_creates_make_one_session(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """The same create sent 20 times at once: one 201, nineteen 200 with the same session."""
    await add_dids(client, keys.a, did_numbers(10))
    responses = await asyncio.gather(*(create_session(client, keys.a) for _ in range(20)))
    assert Counter(r.status_code for r in responses) == {201: 1, 200: 19}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """A keyed repeat gets the first response byte for byte, even after the session changed."""
    await add_dids(client, keys.a, did_numbers(2))
    headers = {**keys.a, "Idempotency-Key": "req-1"}
    first = await create_session(client, headers)
    await client.post(f"/v1/sessions/{first.json()['id']}/close", headers=keys.a)
    again = await create_session(client, headers)
    assert (again.status_code, again.content) == (201, first.content)
    # another tenant's identical key is its own
    await add_dids(client, keys.b, did_numbers(1, start=50))
    other = await create_session(client, {**keys.b, "Idempotency-Key": "req-1"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


async def test_idempotency_key_with_another_body_is_422(client: httpx.AsyncClient, keys: Keys) -> None:
    """Reusing a key for a different request is refused."""
    await add_dids(client, keys.a, did_numbers(2))
    headers = {**keys.a, "Idempotency-Key": "req-2"}
    assert (await create_session(client, headers)).status_code == 201
    r = await create_session(client, headers, "other")
    assert r.status_code == 422 and r.json()["code"] == "invalid_request" and r.json()["field"] == "Idempotency-Key"


async def test_idempotency_key_still_in_flight_is_409(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """A repeat while the first request is still being processed gets 409, and creates nothing."""
    await add_dids(client, keys.a, did_numbers(2))
    raw = json.dumps(session_body()).encode()
    tenant = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    await db.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, created_at) VALUES ($1, 'busy', $2, now())",
        tenant,
        idempotency.request_key(tenant, hashlib.sha256(raw).digest()),
    )
    r = await client.post(
        "/v1/sessions", content=raw, headers={**keys.a, "Idempotency-Key": "busy", "content-type": "application/json"}
    )
    assert r.status_code == 409 and r.json()["code"] == "idempotency_in_flight"
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_twenty_concurrent_keyed_requests_create_exactly_one_session(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """20 identical keyed requests at once: one session; the rest replay it or are told it is in flight."""
    await add_dids(client, keys.a, did_numbers(10))
    headers = {**keys.a, "Idempotency-Key": "storm"}
    responses = await asyncio.gather(*(create_session(client, headers) for _ in range(20)))
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    assert {r.status_code for r in responses} <= {201, 409}
    created = [r for r in responses if r.status_code == 201]
    assert created and len({r.content for r in created}) == 1
    assert all(r.json()["code"] == "idempotency_in_flight" for r in responses if r.status_code == 409)


async def test_the_storm_over_two_service_processes(tmp_path: Path, dsn: str, db: asyncpg.Connection) -> None:
    """40 creates for one customer split over two `masking serve` processes on one database: still exactly 5."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    with ServeProcess(env) as one, ServeProcess(env) as two:
        async with httpx.AsyncClient(timeout=30) as http:
            added = await http.post(
                one.url + "/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(5)]}, headers=auth
            )
            assert added.status_code == 200
            urls = [one.url, two.url]
            responses = await asyncio.gather(
                *(http.post(urls[i % 2] + "/v1/sessions", json=b, headers=auth) for i, b in enumerate(storm_bodies(40)))
            )
    assert_storm_outcome(list(responses), dids=5, attempts=40)
    assert await db.fetchval(CROSSED_LINES) == 0
    customer_ix = sealed.index(await db.fetchval("SELECT id FROM tenants WHERE name = 'acme'"), CUSTOMER)
    assert await db.fetchval("SELECT count(DISTINCT did) FROM sessions WHERE customer_ix = $1", customer_ix) == 5


async def test_retiring_a_did_never_strands_a_session_on_it(client: httpx.AsyncClient, keys: Keys) -> None:
    """A retire racing a create on a one-DID pool: either the retire is refused or the create went elsewhere."""
    outcomes = Counter()
    for i in range(40):
        did = did_numbers(1, start=100 + i)[0]
        await add_dids(client, keys.a, [did], pool=f"race-{i}")
        created, retired = await asyncio.gather(
            create_session(client, keys.a, f"race-{i}", f"+91987{i:07d}", pool=f"race-{i}"),
            client.patch(f"/v1/dids/{did}", json={"status": "retired"}, headers=keys.a),
        )
        outcomes[(created.status_code, retired.status_code)] += 1
        assert (created.status_code, retired.status_code) != (201, 200), "a session was left on a retired DID"
    print(f"\nrace outcomes (create, retire): {dict(outcomes)}")
