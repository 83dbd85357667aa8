"""The agent page and the ops console in a real headless Chromium (Debian's), driven by Playwright, checked by axe."""

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.factories import create_session, open_session, pool
from tests.helpers import AGENT, CUSTOMER, Keys
from tests.live import Live, live_service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots go to docs/ (shown in the README) when MASKING_SCREENSHOTS=1, else to a scratch folder,
# so an ordinary test run leaves the checkout untouched.
DOCS = (
    Path(__file__).resolve().parents[1] / "docs"
    if os.environ.get("MASKING_SCREENSHOTS")
    else Path(tempfile.mkdtemp(prefix="masking-screens-"))
)
DIDS = ["+918068281234", "+918068281235", "+918068281236"]
REAL_NUMBERS = (CUSTOMER, AGENT, CUSTOMER[1:], AGENT[1:])

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[Live]:
    async with live_service(dsn) as service:
        yield service


async def browser_session(
    live: Live, keys: Keys, order: str, pool_name: str = "default", dids: list[str] = DIDS
) -> dict[str, Any]:
    """The contract's example pair's session of this order on a pool with these DIDs (a repeat answers it again)."""
    await pool(live.http, keys.a, pool_name, dids)
    r = await create_session(live.http, keys.a, order, pool=pool_name)
    assert r.status_code in (200, 201), r.text
    result: dict[str, Any] = r.json()
    return result


async def no_axe_violations(page: Page) -> None:
    results = await Axe().run(page)
    assert results.violations_count == 0, results.generate_report()


async def sign_in(page: Page, live: Live, key: str) -> None:
    await page.goto(live.url + "/console")
    await page.get_by_label("Ops key").fill(key)
    await page.get_by_role("button", name="Sign in").click()


async def test_ops_sign_in_find_an_order_and_expire_it_with_a_confirmation(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """Sign in, search an order, open its session, expire the order after confirming, and see it expired."""
    session = await open_session(live.http, keys.a, dids=DIDS, order="ORD-BROWSER")
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await sign_in(page, live, keys.a_ops)
    await expect(page.get_by_role("heading", name="Pools")).to_be_visible()
    await page.get_by_role("link", name="Sessions").click()
    await page.get_by_label("Order id, party number or masked number").fill("ORD-BROWSER")
    await page.get_by_role("button", name="Search").click()
    listing = await page.content()
    assert "+91******3210" in listing and not any(n in listing for n in REAL_NUMBERS)
    await page.get_by_role("link", name="ORD-BROWSER", exact=True).click()
    await expect(page.locator("#session-status")).to_have_text("active")
    html = await page.content()
    assert not any(n in html for n in REAL_NUMBERS)  # masked on its own page too
    await page.get_by_role("link", name="Expire order ORD-BROWSER…").click()
    await expect(page.get_by_role("heading", name="Expire order ORD-BROWSER?")).to_be_visible()
    await page.get_by_role("button", name="Yes, expire 1 session").click()
    await expect(page.get_by_role("status")).to_have_text("Expired 1 session of order ORD-BROWSER.")
    await page.get_by_role("link", name="ORD-BROWSER", exact=True).click()
    await expect(page.locator("#session-status")).to_have_text("expired (expired_by_ops)")
    api = (await live.http.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()
    assert api["status"] == "expired" and api["close_reason"] == "expired_by_ops"
    await page.close()


async def test_a_wrong_or_unscoped_key_does_not_sign_in(browser: Browser, live: Live, keys: Keys) -> None:
    """An unknown key and a sessions-only key both stay on the sign-in page with a plain reason."""
    page = await browser.new_page()
    await sign_in(page, live, "msk_not-a-real-key-0000000000")
    await expect(page.get_by_role("alert")).to_have_text("That key is unknown or revoked.")
    await no_axe_violations(page)
    await sign_in(page, live, keys.a_sessions)
    await expect(page.get_by_role("alert")).to_contain_text("lacks the `ops` scope")
    await page.goto(live.url + "/console/pools")
    assert page.url.endswith("/console/sign-in")
    await page.close()


async def seed_history(db: asyncpg.Connection, tenant: str) -> None:
    """Ended sessions spread over the last day, so the chart has a shape."""
    tenant_id = await db.fetchval("SELECT id FROM tenants WHERE name = $1", tenant)
    for hour in range(24):
        for i in range((hour * 7) % 11 + 1):
            await db.execute(
                """
                INSERT INTO sessions (id, tenant_id, order_id, customer_mask, agent_mask, did, pool, status,
                                      close_reason, created_at, expires_at, closed_at)
                VALUES (gen_random_uuid(), $1, $2, '+91******0001', '+91******0002', $3, 'default', 'closed',
                        'closed_by_client', now() - $4::interval, now() - $4::interval + interval '30 minutes',
                        now() - $4::interval + interval '20 minutes')
                """,
                tenant_id,
                f"OLD-{hour}-{i}",
                DIDS[i % len(DIDS)],
                timedelta(hours=hour, minutes=5),
            )


async def test_the_pools_page_shows_stats_and_a_chart_and_passes_axe(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Pools with DIDs, sessions and headroom, the 24-hour chart, every number masked, no axe violation."""
    await open_session(live.http, keys.a, dids=DIDS, order="ORD-1042")
    await open_session(live.http, keys.a, dids=["+918068290001", "+918068290002"], pool_name="express", order="ORD-77")
    await seed_history(db, "tenant-a")
    page = await browser.new_page(viewport={"width": 1100, "height": 760})
    await sign_in(page, live, keys.a_ops)
    table = page.get_by_role("table")
    await expect(table).to_contain_text("default")
    await expect(table).to_contain_text("express")
    await expect(page.get_by_role("img", name=re.compile("Sessions created per hour"))).to_be_visible()
    assert await page.locator("svg rect").count() == 24
    card = await page.locator("figure.chart").bounding_box()
    chart = await page.locator("figure.chart svg").bounding_box()
    assert card is not None and chart is not None and chart["width"] >= 0.9 * (card["width"] - 32), (card, chart)
    await expect(page.locator("svg .y-tick").first).to_have_text("0")
    await no_axe_violations(page)
    await page.screenshot(path=str(DOCS / "console-pools.png"), full_page=True)
    for section in ("DIDs", "Calls needing attention", "Unmatched reports"):
        await page.get_by_role("link", name=section, exact=True).click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(section)
        html = await page.content()
        assert not any(n in html for n in REAL_NUMBERS), section
        await no_axe_violations(page)
    await page.keyboard.press("Tab")  # the first control is reachable by keyboard
    assert await page.evaluate("document.activeElement.tagName") == "A"
    await page.close()


async def test_the_pools_page_counts_the_last_hours_refusals_over_every_process(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection, dsn: str
) -> None:
    """Creates refused on two processes are summed per pool; an older count is not; a pool with no DIDs is named."""
    await open_session(
        live.http, keys.a, dids=DIDS[:1], pool_name="tiny", order="ORD-1"
    )  # the pair now holds tiny's one DID
    async with live_service(dsn) as other:
        for service, order in [(live, "ORD-2"), (live, "ORD-3"), (other, "ORD-4"), (other, "ORD-5"), (other, "ORD-6")]:
            r = await create_session(service.http, keys.a, order, pool="tiny")
            assert r.json()["code"] == "pool_exhausted", r.text
        r = await create_session(other.http, keys.a, "ORD-7", pool="tinny")
        assert r.json()["code"] == "pool_exhausted", r.text
    tenant_id = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    await db.execute(
        "INSERT INTO pool_refusals VALUES ($1, 'tiny', date_trunc('minute', now()) - interval '61 minutes', 40)",
        tenant_id,
    )
    page = await browser.new_page()
    await sign_in(page, live, keys.a_ops)
    row = page.get_by_role("row", name=re.compile("^tiny"))
    await expect(row.get_by_role("cell").last).to_have_text("5")
    await expect(page.locator(".caution")).to_contain_text("tinny (1)")
    await no_axe_violations(page)
    await page.close()


async def test_the_agent_presses_the_button_and_sees_ringing_then_completed_without_reloading(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """The page updates in place: ringing, then completed after the simulator's report; no number on it."""
    session = await open_session(live.http, keys.a, dids=DIDS, order="ORD-1042")
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={"party": "agent"}, headers=keys.a)
    path = "/c/" + r.json()["url"].rsplit("/c/", 1)[1]
    live.sim.delay = 2.0  # the report comes two seconds after the provider accepts the call
    page = await browser.new_page(viewport={"width": 390, "height": 720}, is_mobile=True)
    await page.goto(live.url + path)
    await expect(page.get_by_role("heading", name="Call customer")).to_be_visible()
    await no_axe_violations(page)
    await page.evaluate("window.notReloaded = true")
    await page.get_by_role("button", name="Call customer").click()
    state = page.get_by_role("status")
    await expect(state).to_contain_text("Ringing")
    await expect(page.get_by_role("button", name="Call customer")).to_be_disabled()
    await expect(state).to_contain_text("Completed: talked", timeout=15_000)
    assert await page.evaluate("window.notReloaded") is True
    html = await page.content()
    assert not any(n in html for n in REAL_NUMBERS)
    await no_axe_violations(page)
    await page.screenshot(path=str(DOCS / "agent-page.png"), full_page=True)
    await page.close()


async def test_the_agent_page_shows_times_in_the_phones_zone_and_disables_the_button_when_no_calls_are_left(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """On a phone set to India's time the link's end is shown in IST; after its one press has completed the button
    is disabled, saying no calls are left, and a reload still shows the order and the last outcome."""
    session = await open_session(live.http, keys.a, dids=DIDS, order="ORD-ZONE")
    r = await live.http.post(
        f"/v1/sessions/{session['id']}/call-links", json={"party": "agent", "max_uses": 1}, headers=keys.a
    )
    link = r.json()
    ends = datetime.fromisoformat(link["expires_at"]).astimezone(timezone(timedelta(hours=5, minutes=30)))
    context = await browser.new_context(
        timezone_id="Asia/Kolkata", locale="en-GB", viewport={"width": 390, "height": 720}
    )
    try:
        page = await context.new_page()
        await page.goto(live.url + "/c/" + link["url"].rsplit("/c/", 1)[1])
        until = page.locator("time").last
        await expect(until).to_contain_text(ends.strftime("%H:%M"))
        await expect(until).not_to_contain_text("UTC")
        button = page.get_by_role("button", name="Call customer")
        why = page.get_by_text("No calls left on this link.")
        await expect(why).to_be_hidden()
        await button.click()
        await expect(page.get_by_role("status")).to_contain_text("Completed: talked", timeout=15_000)
        await expect(button).to_be_disabled()
        await expect(why).to_be_visible()
        response = await page.reload()
        assert response is not None and response.status == 410
        await expect(page.get_by_text("ORD-ZONE")).to_be_visible()
        await expect(page.get_by_role("status")).to_contain_text("Completed: talked")
        await expect(button).to_be_disabled()
        await expect(why).to_be_visible()
        await no_axe_violations(page)
    finally:
        await context.close()


async def test_an_expired_link_says_so_plainly(browser: Browser, live: Live, keys: Keys) -> None:
    """A link whose session closed shows a 410 page that says the link has expired."""
    session = await open_session(live.http, keys.a, dids=DIDS, order="ORD-GONE")
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={}, headers=keys.a)
    url = live.url + "/c/" + r.json()["url"].rsplit("/c/", 1)[1]
    await live.http.post(f"/v1/sessions/{session['id']}/close", headers=keys.a)
    page = await browser.new_page()
    response = await page.goto(url)
    assert response is not None and response.status == 410
    await expect(page.get_by_role("heading")).to_have_text("This link has expired")
    await page.close()


async def test_console_forms_need_the_csrf_token_and_the_cookie_is_strict(live: Live, keys: Keys) -> None:
    """A signed-in console POST without the form's token is refused; the session cookie is HttpOnly and Strict."""
    async with httpx.AsyncClient(base_url=live.url) as http:
        http.cookies.set("masking_console", "chosen-by-an-attacker", path="/console")
        form = await http.get("/console/sign-in")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text).group(1)
        assert (
            form.headers["cache-control"] == "no-store"
            and "script-src 'self'" in form.headers["content-security-policy"]
        )
        signed = await http.post("/console/sign-in", data={"_csrf_token": token, "key": keys.a_ops})
        assert signed.status_code == 303 and signed.headers["location"] == "/console/pools"
        cookie = signed.headers["set-cookie"].lower()
        assert "chosen-by-an-attacker" not in cookie and "masking_console=" in cookie  # a new id at sign-in
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert keys.a_ops not in signed.text and keys.a_ops not in str(signed.headers)
        session = await open_session(live.http, keys.a, dids=DIDS, order="ORD-CSRF")
        refused = await http.post(f"/console/sessions/{session['id']}/close", data={"x": "1"})
        assert refused.status_code == 403 and "Form refused" in refused.text
        assert (await live.http.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()["status"] == "active"
        closed = await http.post(f"/console/sessions/{session['id']}/close", data={"_csrf_token": token})
        assert closed.status_code == 303
        assert (await live.http.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()["status"] == "closed"
        out = await http.post("/console/sign-out", data={"_csrf_token": token})
        assert out.status_code == 303
        assert (await http.get("/console/pools")).status_code == 303  # signed out: back to sign-in
