"""The ops console over plain HTTP: sign-in throttling per client address, HTML errors, forms' confirmations."""

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers import Keys
from tests.live import Live, live_service


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[Live]:
    async with live_service(dsn, trusted_proxies="127.0.0.0/8, ::1") as service:
        yield service


async def sign_in_form(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    form = await http.get("/console/sign-in", headers=headers)
    found = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert found is not None, form.text
    return found.group(1)


async def signed_in(live: Live, key: str) -> tuple[httpx.AsyncClient, str]:
    http = httpx.AsyncClient(base_url=live.url)
    token = await sign_in_form(http)
    r = await http.post("/console/sign-in", data={"_csrf_token": token, "key": key})
    assert r.status_code == 303, r.text
    return http, token


async def test_wrong_keys_from_one_address_are_throttled_with_a_plain_429_page_and_others_sign_in(
    live: Live, keys: Keys
) -> None:
    """After 10 sign-in attempts a minute from one client address the next is a plain 429 page with Retry-After
    (even with the right key); another address, named by the trusted proxy, still signs in."""
    busy = {"X-Forwarded-For": "203.0.113.5"}
    async with httpx.AsyncClient(base_url=live.url) as http:
        token = await sign_in_form(http, busy)
        answers = [
            (await http.post("/console/sign-in", data={"_csrf_token": token, "key": f"msk_wrong-{i}"}, headers=busy))
            for i in range(10)
        ]
        assert [r.status_code for r in answers] == [401] * 10
        refused = await http.post("/console/sign-in", data={"_csrf_token": token, "key": keys.a_ops}, headers=busy)
        assert refused.status_code == 429 and refused.headers["content-type"].startswith("text/html")
        assert int(refused.headers["retry-after"]) >= 1 and "Too many sign-in attempts" in refused.text
        assert "set-cookie" not in refused.headers or "masking_console=" not in refused.headers["set-cookie"]
        other = {"X-Forwarded-For": "203.0.113.6"}
        r = await http.post("/console/sign-in", data={"_csrf_token": token, "key": keys.a_ops}, headers=other)
        assert r.status_code == 303 and r.headers["location"] == "/console/pools"
