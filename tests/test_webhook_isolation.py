"""Webhook operations never disturb core traffic or other tenants: deleting an endpoint while sessions are
created, one tenant's hanging endpoints, and bodies sent to routes that take none."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import httpx

from tests.helpers import Keys, add_dids, did_numbers, mobile_numbers, wait_for
from tests.processes import ServeProcess
from tests.receiver import Receiver
from tests.test_webhooks import _env, _key, make_sessions, register, service


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
                body = {"order_id": f"c{n}-{i}", "customer": customers[i], "agent": agents[i]}
                r = await http.post("/v1/sessions", json=body, headers=keys.a)
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
                event = (await http.get("/v1/events")).json()["items"][0]["id"]
                routes = [f"/v1/events/{event}/redeliver", f"/v1/webhooks/{endpoint['id']}/rotate-secret"]
                routes.append(f"/v1/webhooks/{endpoint['id']}/test")
                for i in range(200):
                    route = routes[i % 3]
                    body = {"note": "x" * (i * 37 % 5000)}
                    r = await http.post(route, json=body)
                    answered[(route.rsplit("/", 1)[-1], r.status_code)] += 1
                    r = await http.get(f"/v1/webhooks/{endpoint['id']}")
                    answered[("read", r.status_code)] += 1
    print(f"\n200 bodies to routes that take none, each followed by a read, one connection: {dict(answered)}")
    assert set(answered) == {("redeliver", 202), ("rotate-secret", 200), ("test", 200), ("read", 200)}
