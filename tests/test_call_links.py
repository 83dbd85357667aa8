"""Call links over real HTTP: minting, the agent page, pressing the button, expiry, CSRF, headers and caps."""

import asyncio
import hashlib
import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from service.api.addresses import client_address
from service.db import links as links_q
from tests.factories import open_session
from tests.helpers import AGENT, CUSTOMER, Keys, assert_problem, call_status
from tests.live import Live, live_service

DID = "+918068281234"
HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json", "Content-Type": "application/json"}


@pytest.fixture
async def live(dsn: str) -> Any:
    async with live_service(dsn) as service:
        yield service


async def mint(live: Live, keys: Keys, session_id: str, **body: Any) -> tuple[str, dict[str, Any]]:
    r = await live.http.post(f"/v1/sessions/{session_id}/call-links", json=body, headers=keys.auth(keys.a_sessions))
    assert r.status_code == 201, r.text
    link = r.json()
    return "/c/" + link["url"].rsplit("/c/", 1)[1], link


async def test_a_link_is_a_public_url_with_a_long_random_token_stored_only_as_a_hash(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """The URL is MASKING_PUBLIC_URL/c/<token>, the token carries at least 128 bits, the database holds its hash."""
    async with live_service(dsn, public_url="https://masking.example/") as live:
        session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
        path, link = await mint(live, keys, session["id"], party="agent", ttl_seconds=600, max_uses=3)
        cookie = (await live.http.get(path, headers=HTML)).headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie.replace("strict", "Strict")
    token = path.removeprefix("/c/")
    assert link["url"] == f"https://masking.example/c/{token}" and link["max_uses"] == 3
    assert len(token) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert link["expires_at"] < session["expires_at"]
    stored = await db.fetchrow("SELECT * FROM call_links")
    assert bytes(stored["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert token.encode() not in b"".join(str(v).encode() for v in stored.values())


async def test_a_link_never_outlives_its_session(live: Live, keys: Keys) -> None:
    """A TTL longer than the session's life gives the session's end as the link's."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7", ttl_seconds=300)
    _, link = await mint(live, keys, session["id"], ttl_seconds=86400)
    assert link["expires_at"] == session["expires_at"]


async def test_links_only_for_the_tenants_live_sessions(live: Live, keys: Keys) -> None:
    """Another tenant's session is 404; a closed one 409 session_not_active; a bad body 422."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={}, headers=keys.b)
    assert_problem(r, 404, "not_found")
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={"party": "boss"}, headers=keys.a)
    assert_problem(r, 422, "invalid_request")
    await live.http.post(f"/v1/sessions/{session['id']}/close", headers=keys.a)
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={}, headers=keys.a)
    assert_problem(r, 409, "session_not_active")


async def test_the_page_shows_the_order_and_the_button_and_no_real_number(live: Live, keys: Keys) -> None:
    """The agent's page names the order and whom it calls, carries strict headers, and no party's number."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-PAGE")
    path, _ = await mint(live, keys, session["id"], party="agent")
    r = await live.http.get(path, headers=HTML)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "ORD-PAGE" in r.text and "Call customer" in r.text and "No call yet" in r.text
    # times are machine-readable, for the page's script to show in the phone's own zone
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)"', r.text), r.text
    for number in (CUSTOMER, AGENT, CUSTOMER[1:], AGENT[1:], CUSTOMER[-10:], AGENT[-10:]):
        assert number not in r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in r.text  # scripts are files, never inline
    customer_path, _ = await mint(live, keys, session["id"], party="customer")
    assert "Call agent" in (await live.http.get(customer_path, headers=HTML)).text


async def test_pressing_places_the_call_as_the_calls_api_does_with_the_links_party_first(
    live: Live, keys: Keys
) -> None:
    """A JSON press is 202 with the call (numbers masked); the provider rings the link's party first."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    path, _ = await mint(live, keys, session["id"], party="customer")
    r = await live.http.post(path, headers=JSON, content=b"{}")
    assert r.status_code == 202, r.text
    call = r.json()
    assert call["status"] == "initiated" and call["first"] == "customer"
    assert call["from"] == "+91******3210" and call["to"] == "+91******2109"
    assert live.sim.requests[-1]["from"] == CUSTOMER[1:] and live.sim.requests[-1]["to"] == AGENT[1:]
    done = await call_status(live, keys, call["id"], "completed")
    assert done["session_id"] == session["id"]
    status = (await live.http.get(path + "/status")).json()
    assert status["state"] == "completed" and status["label"].startswith("Completed: talked")
    assert CUSTOMER not in str(status) and AGENT not in str(status)


async def test_a_used_up_link_is_gone_as_json_and_as_a_page(live: Live, keys: Keys) -> None:
    """After max_uses presses the link answers 410 link_expired: problem+json, or a page that says so and still
    shows the order and the last call's outcome, with the button disabled because no calls are left."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    path, _ = await mint(live, keys, session["id"], max_uses=1)
    r = await live.http.post(path, headers=JSON, content=b"{}")
    assert r.status_code == 202
    await call_status(live, keys, r.json()["id"], "completed")
    assert_problem(await live.http.post(path, headers=JSON, content=b"{}"), 410, "link_expired")
    page = await live.http.get(path, headers=HTML)
    assert page.status_code == 410 and "This link has expired" in page.text
    # the used-up page keeps the order and the last outcome, its button disabled with the reason
    assert "ORD-7" in page.text and "Completed: talked" in page.text
    button = re.search(r"<button[^>]*id=\"call-button\"[^>]*>", page.text)
    assert (
        button is not None and " disabled" in button.group(0) and 'aria-describedby="why-disabled"' in button.group(0)
    )
    assert re.search(r'id="why-disabled"[^>]*>No calls left on this link', page.text)
    status = await live.http.get(path + "/status")  # the last press's outcome stays readable until the link's end
    assert status.status_code == 200 and status.json()["state"] == "completed" and status.json()["uses_left"] == 0
    assert page.headers["cache-control"] == "no-store"


async def test_a_link_dies_with_its_session(live: Live, keys: Keys) -> None:
    """Closing the session ends its links at once: 410."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    path, _ = await mint(live, keys, session["id"])
    await live.http.post(f"/v1/sessions/{session['id']}/close", headers=keys.a)
    assert_problem(await live.http.post(path, headers=JSON, content=b"{}"), 410, "link_expired")
    assert (await live.http.get(path, headers=HTML)).status_code == 410


async def test_an_unknown_token_is_not_found(live: Live) -> None:
    """A token never issued is a plain 404 page."""
    r = await live.http.get("/c/not-a-real-token-at-all", headers=HTML)
    assert r.status_code == 404 and "No such link" in r.text


async def test_a_refused_press_is_not_counted_as_a_use(live: Live, keys: Keys, db: asyncpg.Connection) -> None:
    """A press refused before any call is recorded (call_in_progress) keeps the link's uses; the error is the API's."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    path, _ = await mint(live, keys, session["id"], max_uses=2)
    from service.provider.simulator import Fault

    live.sim.inject(Fault(report="none"))
    assert (await live.http.post(path, headers=JSON, content=b"{}")).status_code == 202
    assert_problem(await live.http.post(path, headers=JSON, content=b"{}"), 409, "call_in_progress")
    assert await db.fetchval("SELECT uses FROM call_links") == 1
    page = await live.http.post(path, headers={**HTML, "Content-Type": "application/json"}, content=b"{}")
    assert page.status_code == 409 and "previous call has no report yet" in page.text


async def test_a_form_press_needs_the_pages_csrf_token(live: Live, keys: Keys) -> None:
    """A form POST without the page's token is refused (403); with it, it rings and redirects to the page."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    path, _ = await mint(live, keys, session["id"])
    r = await live.http.post(path, data={"x": "1"}, headers=HTML)
    assert r.status_code == 403 and "reload the page" in r.text.lower()
    page = await live.http.get(path, headers=HTML)
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
    r = await live.http.post(path, data={"_csrf_token": token}, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == path
    assert len(live.sim.requests) == 1
    forged = await live.http.post(path, data={"_csrf_token": token[:-4] + "0000"}, headers=HTML)
    assert forged.status_code == 403


async def test_presses_of_one_link_are_limited_and_another_link_has_its_own_bucket(dsn: str, keys: Keys) -> None:
    """The 7th press of one link within a minute is 429; a second link of the same session is not limited by it."""
    async with live_service(dsn, session_calls_per_window=100, calls_per_minute=1000) as live:
        session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
        path, _ = await mint(live, keys, session["id"], max_uses=100)
        answers = [(await live.http.post(path, headers=JSON)).status_code for _ in range(6)]
        assert 429 not in answers and answers[0] == 202, answers
        refused = await live.http.post(path, headers=JSON)
        assert_problem(refused, 429, "rate_limited")
        assert "presses of this link" in refused.json()["detail"] and int(refused.headers["retry-after"]) >= 1
        other, _ = await mint(live, keys, session["id"], max_uses=100)
        assert (await live.http.post(other, headers=JSON)).status_code != 429


async def test_requests_from_one_address_are_limited_and_a_forged_forwarded_for_does_not_escape(
    dsn: str, keys: Keys
) -> None:
    """MASKING_LINK_REQUESTS_PER_MINUTE per address; the next is 429 (page or JSON); a client's X-Forwarded-For ignored."""
    async with live_service(dsn, link_requests_per_minute=10) as live:
        session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
        path, _ = await mint(live, keys, session["id"])
        answers = await asyncio.gather(*(live.http.get(path + "/status", headers=JSON) for _ in range(10)))
        assert [r.status_code for r in answers] == [200] * 10
        refused = await live.http.get(path + "/status", headers=JSON)
        assert_problem(refused, 429, "rate_limited")
        assert "requests from your address" in refused.json()["detail"]
        page = await live.http.get(path, headers=HTML)
        assert page.status_code == 429 and "Too many requests" in page.text
        forged = await live.http.get(path, headers={**HTML, "X-Forwarded-For": "203.0.113.9"})
        assert forged.status_code == 429


async def test_behind_a_trusted_proxy_each_agent_has_its_own_address_bucket(dsn: str, keys: Keys) -> None:
    """MASKING_TRUSTED_PROXIES: the proxy's X-Forwarded-For names the client, so one busy agent limits only itself."""
    async with live_service(dsn, trusted_proxies="127.0.0.0/8, ::1", link_requests_per_minute=10) as live:
        session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
        path, _ = await mint(live, keys, session["id"])
        busy = {**JSON, "X-Forwarded-For": "203.0.113.5"}
        assert {(await live.http.get(path + "/status", headers=busy)).status_code for _ in range(10)} == {200}
        assert_problem(await live.http.get(path + "/status", headers=busy), 429, "rate_limited")
        other = {**JSON, "X-Forwarded-For": "203.0.113.6"}
        assert (await live.http.get(path + "/status", headers=other)).status_code == 200
        # the busy agent writing its own header first: the proxy appends the real address, which is read
        spoofed = {**JSON, "X-Forwarded-For": "203.0.113.6, 203.0.113.5"}
        assert (await live.http.get(path + "/status", headers=spoofed)).status_code == 429


def test_the_client_address_is_the_nearest_hop_no_trusted_proxy_added() -> None:
    """Right to left through X-Forwarded-For, skipping only trusted proxies; untrusted peers' headers are ignored."""
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address("10.0.0.2", "198.51.100.7", trusted) == "198.51.100.7"
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.9", trusted) == "198.51.100.7"
    assert client_address("198.51.100.7", "1.2.3.4", trusted) == "198.51.100.7"
    assert client_address("10.0.0.2", None, trusted) == "10.0.0.2"
    assert client_address("10.0.0.2", "not-an-address", trusted) == "not-an-address"
    assert client_address("10.0.0.2", "198.51.100.7", ()) == "10.0.0.2"


async def test_concurrent_uses_never_exceed_max_uses(live: Live, keys: Keys, dsn: str) -> None:
    """Twenty processes' worth of simultaneous uses of a 3-use link: exactly three are counted."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    path, _ = await mint(live, keys, session["id"], max_uses=3)
    digest = hashlib.sha256(path.removeprefix("/c/").encode()).digest()
    pool = await asyncpg.create_pool(dsn, min_size=10, max_size=20)
    try:

        async def use() -> bool:
            async with pool.acquire() as conn:
                return await links_q.take_use(conn, digest, datetime.now(UTC)) is not None

        results = await asyncio.gather(*(use() for _ in range(20)))
    finally:
        await pool.close()
    assert sum(results) == 3
    assert_problem(await live.http.post(path, headers=JSON, content=b"{}"), 410, "link_expired")


async def test_a_replaced_partys_link_is_gone_and_never_rings_the_new_party(live: Live, keys: Keys) -> None:
    """After PATCH replaces the agent, the old agent's link is 410 link_expired on GET and POST and rings nobody;
    the customer's link (its party stays) rings the new agent, and a link minted for the new agent works."""
    session = await open_session(live.http, keys.a, dids=[DID], order="ORD-7")
    old_agent_link, _ = await mint(live, keys, session["id"], party="agent")
    customer_link, _ = await mint(live, keys, session["id"], party="customer")
    new_agent = "+918765432100"
    r = await live.http.patch(f"/v1/sessions/{session['id']}", json={"agent": new_agent}, headers=keys.a)
    assert r.status_code == 200, r.text
    assert_problem(await live.http.post(old_agent_link, headers=JSON, content=b"{}"), 410, "link_expired")
    assert (await live.http.get(old_agent_link, headers=HTML)).status_code == 410
    assert (await live.http.get(old_agent_link + "/status")).status_code == 410
    assert live.sim.requests == []
    r = await live.http.post(customer_link, headers=JSON, content=b"{}")
    assert r.status_code == 202, r.text
    assert live.sim.requests[-1]["to"] == new_agent[1:]
    await call_status(live, keys, r.json()["id"], "completed")
    new_agent_link, _ = await mint(live, keys, session["id"], party="agent")
    assert (await live.http.get(new_agent_link, headers=HTML)).status_code == 200
    r = await live.http.post(new_agent_link, headers=JSON, content=b"{}")
    assert r.status_code == 202, r.text
    assert live.sim.requests[-1]["from"] == new_agent[1:]
