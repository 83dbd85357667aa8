"""The console's webhooks page and a session's events in Debian's Chromium: failing attempts, redelivery, axe."""

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, expect

from tests.helpers import Keys, wait_for
from tests.live import Live, live_service
from tests.receiver import Receiver
from tests.test_browser import DOCS, REAL_NUMBERS, browser_session, no_axe_violations, sign_in
from tests.test_browser import browser as browser  # the module's Chromium fixture
from tests.test_browser import pytestmark as pytestmark  # skipped without Debian's chromium
from tests.test_webhooks import FAST, register


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[Live]:
    """The service with its delivery worker running; webhooks may go to plain http on loopback, retried fast."""
    async with live_service(dsn, background=True, **FAST) as service:
        yield service


@pytest.fixture
async def failing() -> AsyncIterator[Receiver]:
    """A webhook receiver that answers every delivery with 500."""
    async with Receiver(mode="500") as receiver:
        yield receiver


async def attempts_of(live: Live, keys: Keys, endpoint_id: str, event_id: str) -> list[dict[str, Any]]:
    r = await live.http.get(f"/v1/webhooks/{endpoint_id}/deliveries", params={"limit": 100}, headers=keys.a)
    assert r.status_code == 200, r.text
    return [a for a in r.json()["items"] if a["event_id"] == event_id]


async def first_event(live: Live, keys: Keys, type_: str) -> str:
    # the feed shows an event once every transaction older than it has ended (the sweeper's may still run)
    async def listed() -> list[dict[str, Any]]:
        r = await live.http.get("/v1/events", params={"type": type_}, headers=keys.a)
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    event_id: str = (await wait_for(listed))[0]["id"]
    return event_id


async def test_ops_see_a_failing_endpoint_and_redeliver_its_event(
    browser: Browser, live: Live, keys: Keys, failing: Receiver
) -> None:
    """The webhooks page shows the endpoint and its failed event once, given up; Redeliver queues it again."""
    endpoint = await register(live.http, keys.a, failing.url, ["session.created"])
    await browser_session(live, keys, "ORD-HOOK")
    event_id = await first_event(live, keys, "session.created")

    async def given_up() -> list[dict[str, Any]] | None:
        found = await attempts_of(live, keys, endpoint["id"], event_id)
        return found if any(a["status"] == "failed" for a in found) else None

    before = await wait_for(given_up)
    assert all(a["status_code"] == 500 for a in before)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await sign_in(page, live, keys.a_ops)
    await page.get_by_role("link", name="Webhooks", exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Webhooks")
    await expect(page.locator(".endpoint-status")).to_have_text(re.compile("^enabled, failing since "))
    table = page.get_by_role("table")
    await expect(table).to_contain_text(failing.url)
    await expect(table).to_contain_text(event_id)
    await expect(table).to_contain_text("session.created")
    await expect(table).to_contain_text("HTTP 500")
    await expect(table.locator("tbody tr")).to_have_count(1)  # one row per event, however many attempts
    await expect(table).to_contain_text(re.compile(r"gave up after \d+ attempts"))
    html = await page.content()
    assert "whsec_" not in html and endpoint["secret"] not in html
    assert not any(n in html for n in REAL_NUMBERS)
    await no_axe_violations(page)

    await page.get_by_role("button", name=f"Redeliver {event_id}").click()
    await expect(page.get_by_role("status")).to_have_text(f"Queued event {event_id} again for 1 endpoint.")

    async def tried_again() -> list[dict[str, Any]] | None:
        found = await attempts_of(live, keys, endpoint["id"], event_id)
        return found if len(found) > len(before) else None

    again = await wait_for(tried_again)
    assert [a["attempt"] for a in again].count(1) == 2  # from the first attempt once more
    await no_axe_violations(page)
    await page.screenshot(path=str(DOCS / "console-webhooks.png"), full_page=True)
    await page.close()


async def test_a_disabled_failing_endpoint_says_since_when(
    browser: Browser, live: Live, keys: Keys, failing: Receiver, db: asyncpg.Connection
) -> None:
    """An endpoint the service disabled after failing is shown as "disabled after failing since …"."""
    endpoint = await register(live.http, keys.a, failing.url)
    await db.execute(
        "UPDATE webhook_endpoints SET status = 'disabled_failing', failing_since = now() - interval '3 days' "
        "WHERE id = $1",
        endpoint["id"],
    )
    page = await browser.new_page()
    await sign_in(page, live, keys.a_ops)
    await page.goto(live.url + "/console/webhooks")
    await expect(page.locator(".endpoint-status")).to_have_text(re.compile("^disabled after failing since 20"))
    await expect(page.get_by_text("No failing events.")).to_be_visible()
    await page.close()


async def test_a_sessions_page_lists_its_events_with_its_calls(browser: Browser, live: Live, keys: Keys) -> None:
    """session.created, then call.initiated after the agent presses the button, newest first on the session page."""
    session = await browser_session(live, keys, "ORD-EVENTS")
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={"party": "agent"}, headers=keys.a)
    agent = await browser.new_page()
    await agent.goto(live.url + "/c/" + r.json()["url"].rsplit("/c/", 1)[1])
    await agent.get_by_role("button", name="Call customer").click()
    await expect(agent.get_by_role("status")).to_contain_text("Ringing")
    await agent.close()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await sign_in(page, live, keys.a_ops)
    await page.goto(live.url + f"/console/sessions/{session['id']}")
    events = page.get_by_role("table", name=re.compile("Events about this session"))
    await expect(events).to_contain_text("call.initiated")
    types = await events.locator("tbody tr td:nth-child(2)").all_inner_texts()
    assert types[-2:] == ["call.initiated", "session.created"], types
    ids = await events.locator("tbody code").all_inner_texts()
    assert all(i.startswith("evt_") for i in ids) and ids == sorted(ids, key=lambda i: -int(i[4:]))
    await no_axe_violations(page)
    await page.close()


async def test_a_redeliver_without_the_forms_token_is_refused_and_an_unknown_event_is_not_found(
    live: Live, keys: Keys
) -> None:
    """POST /console/webhooks/redeliver needs the CSRF token (403 page); an unknown event id gives the 404 page."""
    async with httpx.AsyncClient(base_url=live.url) as http:
        form = await http.get("/console/sign-in")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        signed = await http.post("/console/sign-in", data={"_csrf_token": token, "key": keys.a_ops})
        assert signed.status_code == 303
        refused = await http.post("/console/webhooks/redeliver", data={"event_id": "evt_1"})
        assert refused.status_code == 403 and "Form refused" in refused.text
        unknown = await http.post("/console/webhooks/redeliver", data={"_csrf_token": token, "event_id": "evt_999999"})
        assert unknown.status_code == 404 and "No event with that id." in unknown.text
        other = await http.post("/console/webhooks/redeliver", data={"_csrf_token": token, "event_id": "nonsense"})
        assert other.status_code == 404
