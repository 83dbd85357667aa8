"""Every state-changing console route, found from the app's own routes, refuses a form without its CSRF token."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.helpers import Keys, add_dids, make_settings, session_body

SAFE = {"GET", "HEAD", "OPTIONS"}
SESSIONS_DID, SPARE_DID = "+918068281234", "+918068281235"


@pytest.fixture
def settings(dsn: str) -> Settings:
    """A webhook endpoint on loopback may be registered, so that a redelivery has somewhere to go."""
    return make_settings(dsn, webhook_allow_http=True, webhook_allow_private=True)


def console_forms(settings: Settings, dsn: str) -> list[tuple[str, str]]:
    """(method, route path) of every console route that may change state, as the app routes them."""
    app = create_app(settings, dsn=dsn, background=False)
    return sorted(
        (method, route.path)
        for route in app.routes
        if route.path.startswith("/console")
        for method in getattr(route, "methods", set()) - SAFE
    )


def concrete(path: str, **values: str) -> str:
    """The route path with its {name:type} parameters filled in (any value where none is given)."""
    return re.sub(r"\{(\w+):\w+\}", lambda m: values.get(m.group(1), "x"), path)


async def test_every_console_form_is_refused_without_its_csrf_token_and_done_with_it(
    client: httpx.AsyncClient, keys: Keys, settings: Settings, dsn: str, db: asyncpg.Connection
) -> None:
    """Sign-in, DID drain and retire, reveal, close, expire by order, redeliver, webhook test, sign-out: 403 without the
    token, done with it (303, or the revealed page)."""
    forms = console_forms(settings, dsn)
    await add_dids(client, keys.a, [SESSIONS_DID])
    closing = (await client.post("/v1/sessions", json=session_body("to-close"), headers=keys.a)).json()
    expiring = (
        await client.post(
            "/v1/sessions",
            json=session_body("to-expire", customer="+919876500001", agent="+918765400001"),
            headers=keys.a,
        )
    ).json()
    await add_dids(client, keys.a, [SPARE_DID])  # added after the sessions: none uses it, so it may retire
    event = (await client.get("/v1/events", headers=keys.a)).json()["items"][0]["id"]
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["*"]}
    made = await client.post("/v1/webhooks", json=hook, headers=keys.a)  # after the event
    assert made.status_code == 201
    hook_id = made.json()["id"]

    async def tested() -> bool:
        count: int = await db.fetchval("SELECT count(*) FROM events WHERE type = 'webhook.test'")
        return count > 0

    async def redelivered() -> bool:
        count: int = await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", int(event.removeprefix("evt_"))
        )
        return count > 0

    async def status(session: dict[str, Any]) -> str:
        result: str = (await client.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()["status"]
        return result

    async def did_status() -> str:
        dids = (await client.get("/v1/dids", headers=keys.a)).json()
        items = dids["items"] if isinstance(dids, dict) else dids
        result: str = next(d["status"] for d in items if d["number"] == SPARE_DID)
        return result

    async def revealed() -> bool:
        count: int = await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'session.reveal'")
        return count > 0

    async def signed_in() -> bool:
        return (await client.get("/console/pools")).status_code == 200

    # For each form: its path, the fields of a real use, and what shows it took effect (False before, True after).
    # The same route may be used more than once (drain, then retire).
    Check = Callable[[], Awaitable[bool]]
    cases: list[tuple[str, str, dict[str, str], Check]] = [
        ("/console/sign-in", "/console/sign-in", {"key": keys.a_ops}, signed_in),
        ("/console/dids/{number:str}", f"/console/dids/{SPARE_DID}", {"status": "draining"},
         lambda: _is(did_status(), "draining")),
        ("/console/dids/{number:str}", f"/console/dids/{SPARE_DID}", {"status": "retired", "confirm": "yes"},
         lambda: _is(did_status(), "retired")),
        ("/console/sessions/{session_id:str}/reveal", f"/console/sessions/{closing['id']}/reveal",
         {"reason": "checking a dispute"}, revealed),
        ("/console/sessions/{session_id:str}/close", f"/console/sessions/{closing['id']}/close", {},
         lambda: _is(status(closing), "closed")),
        ("/console/expire", "/console/expire", {"order_id": "to-expire", "confirm": "yes"},
         lambda: _is(status(expiring), "expired")),
        ("/console/webhooks/redeliver", "/console/webhooks/redeliver", {"event_id": event}, redelivered),
        ("/console/webhooks/{endpoint_id:str}/test", f"/console/webhooks/{hook_id}/test", {}, tested),
        ("/console/sign-out", "/console/sign-out", {}, lambda: _not(signed_in())),
    ]  # fmt: skip
    # The sessions search posts only to keep a searched number out of URLs; it changes nothing to check here
    # (tests/test_console_search.py), but the sweep below still proves it refused without the token.
    reads = {"/console/sessions"}
    assert {path for _, path in forms} - reads == {route for route, *_ in cases}, (
        "a console form without a case here: add how to use it, so its CSRF check is tested"
    )

    page = await client.get("/console/sign-in")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token is not None

    for method, route in forms:  # every form, as routed, before any is used: refused without the token
        refused = await client.request(method, concrete(route), data={"x": "1"})
        assert refused.status_code == 403, f"{method} {route} without a CSRF token: {refused.status_code}"

    for _, path, fields, took_effect in cases:
        refused = await client.post(path, data=fields)
        assert refused.status_code == 403, f"POST {path} {fields} without a CSRF token: {refused.status_code}"
        assert not await took_effect(), f"POST {path} {fields} without a CSRF token took effect"
        done = await client.post(path, data={**fields, "_csrf_token": token.group(1)})
        answers = 200 if path.endswith("/reveal") else 303  # Reveal answers the page itself, not a redirect
        assert done.status_code == answers, f"POST {path} {fields} with the token: {done.status_code} {done.text[:300]}"
        assert await took_effect(), f"POST {path} {fields} with the token did nothing"


async def _is(value: Awaitable[str], want: str) -> bool:
    return await value == want


async def _not(value: Awaitable[bool]) -> bool:
    return not await value
