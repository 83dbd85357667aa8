"""A call link's own TTL: past its expires_at it is gone, though its session is still live."""

from __future__ import annotations

import httpx

from tests.factories import open_session
from tests.helpers import FakeClock, Keys, assert_problem

HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json", "Content-Type": "application/json"}


async def test_a_link_past_its_own_ttl_is_gone_as_a_page_and_as_a_press_while_its_session_lives(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock
) -> None:
    """A 60 s link to a one-hour session: its page is 200 before its end; 61 s later page and press are 410."""
    session = await open_session(client, keys.a, dids=1, ttl_seconds=3600)
    r = await client.post(f"/v1/sessions/{session['id']}/call-links", json={"ttl_seconds": 60}, headers=keys.a)
    assert r.status_code == 201, r.text
    path = "/c/" + r.json()["url"].rsplit("/c/", 1)[1]
    assert (await client.get(path, headers=HTML)).status_code == 200
    clock.advance(61)
    assert (await client.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()["status"] == "active"
    page = await client.get(path, headers=HTML)
    assert page.status_code == 410 and "This link has expired" in page.text
    assert_problem(await client.get(path, headers={"Accept": "application/json"}), 410, "link_expired")
    assert_problem(await client.post(path, headers=JSON, content=b"{}"), 410, "link_expired")
