"""Webhook operations never disturb core traffic or other tenants: deleting an endpoint while sessions are
created, one tenant's hanging endpoints, and bodies sent to routes that take none."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import asyncpg
import httpx

from tests.factories import create_session, make_sessions, open_session
from tests.helpers import Keys, add_dids, assert_problem, did_numbers, mobile_numbers, wait_for
from tests.processes import ServeProcess
from tests.receiver import Receiver
from tests.test_webhooks import _env, _key, register, service


async def _true(value: bool) -> bool:
    return value


async def test_deleting_endpoints_while_sessions_are_created_breaks_no_create_and_loses_no_event(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """Four clients create sessions while an endpoint is registered and deleted 30 times: no 500 anywhere, and
    the endpoint that stays gets every session.created."""
    statuses: Counter[int] = Counter()
    async with Receiver() as stays, Receiver() as comes_and_goes, service(dsn) as http:
        await add_dids(http, keys.a, did_numbers(40))
        stays.secrets = [(await register(http, keys.a, stays.url, ["session.created"]))["secret"]]
        stop = asyncio.Event()

        async def creator(n: int) -> None:
            customers = mobile_numbers(5000, start=n * 5000, prefix="+91987")
            agents = mobile_numbers(5000, start=n * 5000, prefix="+91876")
            i = 0
            while not stop.is_set():
                r = await create_session(http, keys.a, f"c{n}-{i}", customers[i], agents[i])
                statuses[r.status_code] += 1
                assert r.status_code == 201, r.text
                i += 1

        creators = [asyncio.create_task(creator(n)) for n in range(4)]
        try:
            for _ in range(30):
                endpoint = await register(http, keys.a, comes_and_goes.url, ["session.created"])
                await asyncio.sleep(0.3)
                r = await http.delete(f"/v1/webhooks/{endpoint['id']}", headers=keys.a)
                statuses[r.status_code] += 1
                assert r.status_code == 204, r.text
                assert (await http.get(f"/v1/webhooks/{endpoint['id']}", headers=keys.a)).status_code == 404
        finally:
            stop.set()
            await asyncio.gather(*creators)
        listed = (await http.get("/v1/webhooks", headers=keys.a)).json()["items"]
        assert [e["url"] for e in listed] == [stays.url]
        assert (
            await db.fetchval("SELECT count(*) FROM webhook_endpoints WHERE status = 'deleted' AND secret = ''") == 30
        )
        created = {f"evt_{r[0]}" for r in await db.fetch("SELECT id FROM events WHERE type = 'session.created'")}
        await wait_for(lambda: _true(set(stays.delivered) >= created), within=30)
        print(f"\n30 endpoints registered and deleted while {len(created)} sessions were created: {dict(statuses)}")
        assert 500 not in statuses and stays.bad_signatures == 0


async def test_a_body_sent_to_a_route_that_takes_none_breaks_no_later_request_on_the_connection(dsn: str) -> None:
    """One keep-alive client sends bodies to redeliver, rotate-secret and test 200 times in a row, each followed by a
    GET on the same connection: every request is answered."""
    env = _env(dsn)
    auth = _key(env)
    answered: Counter[tuple[str, int]] = Counter()
    async with Receiver() as receiver:
        with ServeProcess(env) as proc:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            async with httpx.AsyncClient(base_url=proc.url, timeout=30, headers=auth, limits=limits) as http:
                await add_dids(http, auth, did_numbers(2))
                endpoint = await register(http, auth, receiver.url, ["*"])
                await make_sessions(http, auth, 1)

                # The feed shows an event once no older transaction can still commit one (the service's start
                # is busy making its partitions): wait for it, as a feed reader would.
                async def first_event() -> str | None:
                    items = (await http.get("/v1/events")).json()["items"]
                    return str(items[0]["id"]) if items else None

                event = await wait_for(first_event, within=20)
                routes = [f"/v1/events/{event}/redeliver", f"/v1/webhooks/{endpoint['id']}/rotate-secret"]
                routes.append(f"/v1/webhooks/{endpoint['id']}/test")
                for i in range(200):
                    route = routes[i % 3]
                    # Bodies past what the server buffers unasked broke the next request 1 time in 3; past the
                    # service's body limit (64 KiB) they are refused, as on every route.
                    body = {"note": "x" * (i * 1_237 % 200_000)}
                    r = await http.post(route, json=body)
                    answered[(route.rsplit("/", 1)[-1], r.status_code)] += 1
                    if r.status_code == 413:
                        assert r.headers["content-type"].startswith("application/problem+json")
                    r = await http.get(f"/v1/webhooks/{endpoint['id']}")
                    answered[("read", r.status_code)] += 1
    print(f"\n200 bodies to routes that take none, each followed by a read, one connection: {dict(answered)}")
    assert answered[("read", 200)] == 200
    assert set(answered) <= {("redeliver", 202), ("rotate-secret", 200), ("test", 200), ("read", 200)} | {
        (r, 413) for r in ("redeliver", "rotate-secret", "test")
    }


async def _delays(
    http: httpx.AsyncClient, headers: dict[str, str], receiver: Receiver, count: int, start: int
) -> list[float]:
    """Create sessions twice a second; each one's seconds from its 201 to its session.created at the receiver."""
    created: dict[str, float] = {}
    customers, agents = mobile_numbers(count, start, "+91987"), mobile_numbers(count, start, "+91876")
    for i in range(count):
        session = await open_session(http, headers, order=f"b{start + i}", customer=customers[i], agent=agents[i])
        created[session["id"]] = time.monotonic()
        await asyncio.sleep(0.5)

    def arrivals() -> dict[str, float]:
        return {receiver.events[w]["data"]["id"]: at for w, at in receiver.arrived.items()}

    await wait_for(lambda: _true(created.keys() <= arrivals().keys()), within=40)
    return sorted(arrivals()[s] - created[s] for s in created)


async def test_one_tenants_hanging_endpoints_delay_no_other_tenants_deliveries(dsn: str, keys: Keys) -> None:
    """Tenant A's 8 endpoints accept and never answer while A creates 2 sessions a second: tenant B's session.created
    events arrive within 2 s of their delay without the attack."""
    async with (
        Receiver(mode="hang") as stuck,
        Receiver() as fine,
        service(dsn, webhook_timeout_seconds=15) as http,
    ):
        await add_dids(http, keys.a, did_numbers(40))
        await add_dids(http, keys.b, did_numbers(40, start=100))
        fine.secrets = [(await register(http, keys.b, fine.url, ["session.created"]))["secret"]]
        quiet = await _delays(http, keys.b, fine, 10, start=0)
        for i in range(8):
            await register(http, keys.a, f"{stuck.url}/{i}")

        async def attack() -> None:
            for i in range(200):
                pair = mobile_numbers(1, 50_000 + i)[0], mobile_numbers(1, 50_000 + i, "+91876")[0]
                await open_session(http, keys.a, order=f"a{i}", customer=pair[0], agent=pair[1])
                await asyncio.sleep(0.5)

        attacking = asyncio.create_task(attack())
        try:
            await asyncio.sleep(5)  # A's requests fill every slot they may have (all 64 of them, before)
            hanging = stuck.requests
            loud = await _delays(http, keys.b, fine, 15, start=100)
        finally:
            attacking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attacking
    print(
        f"\nB's session.created delay, max of {len(quiet)}: {quiet[-1]:.3f} s alone; max of {len(loud)}:"
        f" {loud[-1]:.3f} s while A's 8 endpoints hang ({hanging} of A's requests hanging)"
    )
    assert hanging >= 8  # the attack is on: each of A's endpoints holds requests open
    assert loud[-1] <= quiet[-1] + 2, (quiet, loud)


async def test_a_tenant_may_have_20_endpoints_and_the_21st_is_refused_even_when_registered_at_once(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """25 registrations at once make exactly 20 endpoints, the rest 409 too_many_webhooks; a deleted one frees a place;
    the other tenant is not counted."""

    async def create(i: int, headers: dict[str, str]) -> httpx.Response:
        return await client.post(
            "/v1/webhooks", json={"url": f"https://8.8.8.8/hooks/{i}", "events": ["*"]}, headers=headers
        )

    answers = await asyncio.gather(*(create(i, keys.a) for i in range(25)))
    assert sorted(r.status_code for r in answers) == [201] * 20 + [409] * 5
    refused = assert_problem(next(r for r in answers if r.status_code == 409), 409, "too_many_webhooks")
    assert "MASKING_MAX_WEBHOOKS_PER_TENANT" in refused["detail"]
    assert (await create(99, keys.b)).status_code == 201
    first = next(r for r in answers if r.status_code == 201).json()["id"]
    assert (await client.delete(f"/v1/webhooks/{first}", headers=keys.a)).status_code == 204
    assert (await create(25, keys.a)).status_code == 201
    assert_problem(await create(26, keys.a), 409, "too_many_webhooks")
    assert len((await client.get("/v1/webhooks", headers=keys.a)).json()["items"]) == 20
