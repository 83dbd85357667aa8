"""The hot routes served below Litestar answer exactly as Litestar's routes do, and hand it every other case."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from litestar import Litestar
from litestar.types import Receive, Scope, Send

from service.api.fast import hot_routes
from service.app import _DB_DOWN, MAX_BODY, create_app, request_context
from tests.factories import pool
from tests.helpers import FakeClock, Keys, make_settings, mobile_numbers, session_body


class Both:
    """One app reached two ways: through the hot routes (counting what they hand to Litestar) and Litestar alone."""

    def __init__(self, app: Litestar) -> None:
        self.app, self.handed = app, 0

        async def litestar(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.handed += 1
            await app(scope, receive, send)

        def client(asgi: Any) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://masking.test")

        self.hot = client(hot_routes(litestar, lambda: app.state.runtime, MAX_BODY, _DB_DOWN, (asyncpg.DataError,)))
        self.plain = client(app)

    async def same(self, method: str, url: str, *, handed: bool, **kwargs: Any) -> httpx.Response:
        """Ask both ways; the answers must match in status, type and JSON body; say whether Litestar answered."""
        before = self.handed
        hot = await self.hot.request(method, url, **kwargs)
        plain = await self.plain.request(method, url, **kwargs)
        assert (hot.status_code, hot.headers["content-type"]) == (plain.status_code, plain.headers["content-type"])
        assert hot.json() == plain.json(), (hot.text, plain.text)
        assert hot.headers.get("retry-after") == plain.headers.get("retry-after")
        assert (self.handed > before) == handed, f"{method} {url}: handed to Litestar: {self.handed > before}"
        return hot


@pytest.fixture
async def both(dsn: str, keys: Keys) -> AsyncIterator[Both]:
    """The app in the test's loop, reachable through its hot routes and through Litestar alone."""
    app = create_app(make_settings(dsn, body_timeout_seconds=0.5), dsn=dsn, clock=FakeClock(), background=False)
    async with LifespanManager(app):
        ways = Both(app)
        async with ways.hot, ways.plain:
            yield ways


async def test_a_session_read_is_answered_below_litestar_with_litestars_bytes(both: Both, keys: Keys) -> None:
    """GET /v1/sessions/{id}: the same 200, and the same 404/401 refusals, the refusals through Litestar."""
    async with request_context_client(both.app) as http:
        await pool(http, keys.a, dids=2)
    made = await both.hot.post("/v1/sessions", json=session_body(), headers=keys.a)
    assert made.status_code == 201, made.text
    url = f"/v1/sessions/{made.json()['id']}"
    await both.same("GET", url, handed=False, headers=keys.a)
    await both.same("GET", url, handed=False, headers=keys.auth(keys.a_sessions))
    await both.same("GET", url, handed=False, headers=keys.b)  # another tenant's: 404, rendered here
    await both.same("GET", "/v1/sessions/not-a-uuid", handed=False, headers=keys.a)
    await both.same("GET", url, handed=True)  # no key
    await both.same("GET", url, handed=True, headers={"Authorization": "Bearer msk_nosuchkey0000000"})
    await both.same("GET", url, handed=True, headers={"Authorization": "Basic abc"})


async def test_a_create_is_answered_below_litestar_and_its_refusals_match(both: Both, keys: Keys) -> None:
    """POST /v1/sessions: 201, 200 on a repeat, refusals and Idempotency-Key replays alike; bad bodies go to Litestar."""
    async with request_context_client(both.app) as http:
        await pool(http, keys.a, dids=1)
    customer, agent, other, fourth = mobile_numbers(4)
    made = await both.hot.post("/v1/sessions", json=session_body(customer=customer, agent=agent), headers=keys.a)
    assert made.status_code == 201 and both.handed == 0, made.text
    repeat = await both.same(
        "POST", "/v1/sessions", handed=False, json=session_body(customer=customer, agent=agent), headers=keys.a
    )
    assert repeat.status_code == 200 and repeat.json() == made.json()
    # One DID, the customer already bound there: pool_exhausted, rendered here exactly as Litestar does.
    exhausted = await both.same(
        "POST", "/v1/sessions", handed=False, json=session_body(customer=customer, agent=other), headers=keys.a
    )
    assert exhausted.json()["code"] == "pool_exhausted"
    # A NUL PostgreSQL refuses: 422 both ways (the hot route answered 500 before).
    nul = await both.same(
        "POST",
        "/v1/sessions",
        handed=False,
        json=session_body(order_id="a\u0000b", customer=other, agent=fourth),
        headers=keys.a,
    )
    assert nul.status_code == 422 and nul.json()["code"] == "invalid_request"
    bad_number = await both.same(
        "POST", "/v1/sessions", handed=False, json=session_body(customer="+1", agent=other), headers=keys.a
    )
    assert bad_number.json()["code"] == "invalid_phone_number"
    for body in (b"{not json", b'{"order_id": "x"}', b'{"order_id": 5, "customer": 1, "agent": 2}', b"[]"):
        refused = await both.same("POST", "/v1/sessions", handed=True, content=body, headers=keys.a)
        assert refused.status_code in (400, 422)
    await both.same("POST", "/v1/sessions", handed=True, json=session_body())  # no key
    huge = json.dumps(session_body(metadata={"x": "y" * MAX_BODY})).encode()
    too_large = await both.same("POST", "/v1/sessions", handed=True, content=huge, headers=keys.a)
    assert too_large.status_code == 413
    # An Idempotency-Key is served here too: Litestar's route then replays the stored answer, byte for byte.
    keyed = {**keys.a, "Idempotency-Key": "hot-routes-1"}
    fresh = session_body(order_id="ORD-2", customer=other, agent=fourth)
    kept = await both.same("POST", "/v1/sessions", handed=False, json=fresh, headers=keyed)
    assert kept.status_code == 201
    changed = await both.same("POST", "/v1/sessions", handed=False, json={**fresh, "order_id": "x"}, headers=keyed)
    assert changed.json()["code"] == "invalid_request"  # the same key with another body


async def test_a_report_is_stored_below_litestar_and_a_wrong_token_is_litestars_404(both: Both, keys: Keys) -> None:
    """POST the callback: {"received": true} as Litestar answers it; a wrong token and a huge body go to Litestar."""
    token = both.app.state.runtime.callback_token
    report = json.dumps({"bridge": 918068200000, "from": 919876500000, "status": "COMPLETED"}).encode()
    await both.same("POST", f"/v1/provider/thundersms/callback/{token}", handed=False, content=report)
    await both.same("POST", "/v1/provider/thundersms/callback/wrong-token", handed=True, content=report)
    huge = b'{"x": "' + b"y" * MAX_BODY + b'"}'
    await both.same("POST", f"/v1/provider/thundersms/callback/{token}", handed=True, content=huge)


async def test_a_body_slower_than_the_deadline_is_refused_with_408_below_litestar(both: Both) -> None:
    """A report whose body trickles past the body deadline: 408 request_timeout, as Litestar's middleware answers."""
    token = both.app.state.runtime.callback_token

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"bridge": '
        await asyncio.sleep(1.0)
        yield b"1}"

    for client in (both.hot, both.plain):
        answer = await client.post(f"/v1/provider/thundersms/callback/{token}", content=trickle())
        assert answer.status_code == 408 and answer.json()["code"] == "request_timeout", answer.text
    assert both.handed == 0


def request_context_client(app: Litestar) -> httpx.AsyncClient:
    """A client of the app as served (for setting up through routes that are not hot)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=request_context(app)), base_url="http://masking.test")


async def test_the_hot_routes_pool_keeps_generic_plans_and_the_main_pool_plans_per_call(both: Both) -> None:
    """Hot statements are planned once per connection (a create costs more to plan than to run); lists keep custom plans."""
    runtime = both.app.state.runtime
    assert await runtime.hot.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    assert await runtime.db.fetchval("SHOW plan_cache_mode") == "auto"
