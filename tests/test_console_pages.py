"""The ops console (and the agent page) as ops people and agents use them: on a phone, by keyboard, with axe.

Real Chromium (Debian's) through Playwright, against the service on loopback with the provider simulator.
"""

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from service.broker.sweeps import time_out_calls
from service.provider.simulator import Fault
from service.web.console import NAV
from service.web.security import CONSOLE_COOKIE, CSRF_COOKIE
from tests.helpers import AGENT, CUSTOMER, Keys, did_numbers, mobile_numbers, wait_for
from tests.live import Live, live_service
from tests.receiver import Receiver
from tests.test_browser import REAL_NUMBERS, browser_session, no_axe_violations, sign_in
from tests.test_browser import browser as browser  # the module's Chromium fixture
from tests.test_browser import live as live  # the service on loopback with the simulator
from tests.test_browser import pytestmark as pytestmark  # skipped without Debian's chromium
from tests.test_webhooks import FAST, register

PHONE = {"width": 390, "height": 844}
MASKED_CUSTOMER, MASKED_AGENT = "+91******3210", "+91******2109"
TABS = 60  # a control further than this many Tab presses away counts as unreachable


async def no_horizontal_overflow(page: Page, what: str) -> None:
    """The page body fits the phone's width (a wide table may scroll inside its .scroll wrapper).

    A mobile Chromium widens its layout viewport to fit content that overflows, so innerWidth alone would hide
    the overflow: both are compared with the phone's width.
    """
    scroll, inner = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    if max(scroll, inner) > PHONE["width"]:
        culprits = await page.evaluate(
            """w => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > w + 0.5 && !e.closest('.scroll'))
                .slice(-5).map(e => e.tagName + ': ' + (e.textContent || '').trim().slice(0, 40))""",
            PHONE["width"],
        )
        raise AssertionError(
            f"{what}: the page is {max(scroll, inner)}px wide on a {PHONE['width']}px phone; {culprits}"
        )


async def nav_is_usable(page: Page) -> None:
    """Every console section's link is on screen, tappable (at least 24 px each way) and inside the viewport."""
    nav = page.get_by_role("navigation", name="Console sections")
    links = nav.get_by_role("link")
    assert await links.count() == len(NAV)
    for link in await links.all():
        await expect(link).to_be_visible()
        box = await link.bounding_box()
        assert box is not None
        name = await link.inner_text()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], name
        assert box["width"] >= 24 and box["height"] >= 24, (name, box)


async def tab_to(page: Page, target: Locator) -> None:
    """Press Tab until the target has the keyboard focus; fail when it cannot be reached."""
    handle = await target.element_handle()
    assert handle is not None
    for _ in range(TABS):
        if await handle.evaluate("e => e === document.activeElement"):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"not reachable by Tab within {TABS} presses: {target}")


async def call_link(live: Live, keys: Keys, session: dict[str, Any]) -> str:
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={"party": "agent"}, headers=keys.a)
    assert r.status_code == 201, r.text
    return live.url + "/c/" + r.json()["url"].rsplit("/c/", 1)[1]


async def console_page(browser: Browser, live: Live, keys: Keys, **options: Any) -> Page:
    page = await browser.new_page(**options)
    await sign_in(page, live, keys.a_ops)
    await expect(page.get_by_role("heading", name="Pools", level=1)).to_be_visible()
    return page


def unmatched_report(bridge: str, caller: str, callee: str) -> bytes:
    """A provider report about a call this service never placed (its times in the provider's zone)."""
    ist = timedelta(hours=5, minutes=30)
    start = datetime.now(UTC) + ist - timedelta(minutes=2)
    end = start + timedelta(seconds=40)
    fmt = "%Y-%m-%d %H:%M:%S"
    body = {
        "bridge": int(bridge[1:]),
        "from": int(caller[1:]),
        "to": int(callee[1:]),
        "source": "C2C",
        "start_at": start.strftime(fmt),
        "end_at": end.strftime(fmt),
        "date": end.strftime(fmt),
        "unixtime": str(int((end - ist).replace(tzinfo=UTC).timestamp())),
        "duration": "40",
        "billing": "35",
        "status": "COMPLETED",
        "status1": "RECEIVED",
        "status2": "ANSWER",
        "recording_url": "",
        "hangup_by": "caller",
    }
    return json.dumps(body).encode()


async def calls_that_need_attention(live: Live, keys: Keys, db: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """Through the real flows: a call the provider refused (failed), one never reported (unknown, by the
    report-timeout sweep), one refused 25 hours ago, and one that completed. Returns each order's session."""
    customers = mobile_numbers(4, start=5000, prefix="+91987")
    sessions: dict[str, dict[str, Any]] = {}
    r = await live.http.post(
        "/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(4, start=100)]}, headers=keys.a
    )
    assert r.status_code == 200, r.text
    for order, customer in zip(["ORD-FAILED", "ORD-UNKNOWN", "ORD-OLD", "ORD-FINE"], customers, strict=True):
        r = await live.http.post(
            "/v1/sessions", json={"order_id": order, "customer": customer, "agent": AGENT}, headers=keys.a
        )
        assert r.status_code == 201, r.text
        sessions[order] = r.json()

    async def place(order: str, fault: Fault) -> dict[str, Any]:
        live.sim.inject(fault)
        r = await live.http.post(f"/v1/sessions/{sessions[order]['id']}/calls", headers=keys.a)
        answer = r.json()
        r = await live.http.get(f"/v1/calls/{answer.get('call_id') or answer['id']}", headers=keys.a)
        call: dict[str, Any] = r.json()
        return call

    failed = await place("ORD-FAILED", Fault(answer="reject", report="none"))
    assert failed["status"] == "failed", failed
    old = await place("ORD-OLD", Fault(answer="reject", report="none"))
    await db.execute("UPDATE calls SET created_at = created_at - interval '25 hours' WHERE id = $1", old["id"])
    fine = await place("ORD-FINE", Fault(report="answered"))

    async def completed() -> bool:
        r = await live.http.get(f"/v1/calls/{fine['id']}", headers=keys.a)
        return bool(r.json()["status"] == "completed")

    await wait_for(completed)
    unknown = await place("ORD-UNKNOWN", Fault(report="none"))
    assert unknown["status"] == "initiated", unknown
    assert await time_out_calls(db, datetime.now(UTC), 0) == 1  # the sweep: no report after the timeout
    r = await live.http.get(f"/v1/calls/{unknown['id']}", headers=keys.a)
    assert r.json()["status"] == "unknown"
    return sessions


# 1. On a phone.


@pytest.fixture
async def hooked(dsn: str) -> AsyncIterator[Live]:
    """The service with its webhook delivery worker (plain http to loopback allowed, retried fast)."""
    async with live_service(dsn, background=True, **FAST) as service:
        yield service


async def test_on_a_phone_no_console_page_is_wider_than_the_screen_and_the_navigation_works(
    browser: Browser, hooked: Live, keys: Keys
) -> None:
    """At 390x844: pools, a session search, a session's page (with a call) and the webhooks page (a failing
    endpoint with a long URL) fit the screen's width; every section is reachable from the navigation by tapping."""
    live = hooked
    async with Receiver(mode="500") as failing:
        endpoint = await register(live.http, keys.a, failing.url + "/hooks/masking/a-rather-long-path-for-events")
        session = await browser_session(live, keys, "ORD-PHONE-1042")
        r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
        assert r.status_code == 202, r.text

        async def failed_once() -> bool:
            r = await live.http.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=keys.a)
            return bool(r.json()["items"])

        await wait_for(failed_once)
        page = await console_page(browser, live, keys, viewport=PHONE, is_mobile=True, has_touch=True)
        await no_horizontal_overflow(page, "pools")
        await nav_is_usable(page)
        for section in (
            "DIDs",
            "Sessions",
            "Calls needing attention",
            "Unmatched reports",
            "Webhooks",
            "Audit",
            "Pools",
        ):
            await page.get_by_role("link", name=section, exact=True).tap()
            await expect(page.get_by_role("heading", level=1)).to_have_text(section)
            await no_horizontal_overflow(page, section)
        await page.goto(live.url + "/console/sessions?q=ORD-PHONE-1042")
        await expect(page.get_by_role("link", name="ORD-PHONE-1042", exact=True)).to_be_visible()
        await no_horizontal_overflow(page, "sessions list")
        await nav_is_usable(page)
        await page.get_by_role("link", name="ORD-PHONE-1042", exact=True).tap()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Order ORD-PHONE-1042")
        await expect(page.get_by_role("table", name=re.compile("Calls of this session"))).to_be_visible()
        await no_horizontal_overflow(page, "session page")
        await nav_is_usable(page)
        await page.get_by_role("link", name="Webhooks", exact=True).tap()
        await expect(page.get_by_role("table", name=re.compile("Events not delivered"))).to_be_visible()
        await no_horizontal_overflow(page, "webhooks")
        await nav_is_usable(page)
        await page.close()


# 2. By keyboard only.


async def test_ops_sign_in_and_expire_an_order_by_keyboard_only(browser: Browser, live: Live, keys: Keys) -> None:
    """Tab to the key field, type, Enter; then Tab and Enter through the navigation, the search, the session and
    the confirmation page until the order is expired."""
    session = await browser_session(live, keys, "ORD-KEYS")
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(live.url + "/console")
    await tab_to(page, page.get_by_label("Ops key"))
    await page.keyboard.type(keys.a_ops)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Pools", level=1)).to_be_visible()
    await tab_to(page, page.get_by_role("link", name="Sessions", exact=True))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Sessions", level=1)).to_be_visible()
    await tab_to(page, page.get_by_label("Order id, party number or masked number"))
    await page.keyboard.type("ORD-KEYS")
    await page.keyboard.press("Enter")
    await tab_to(page, page.get_by_role("link", name="ORD-KEYS", exact=True))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Order ORD-KEYS", level=1)).to_be_visible()
    await tab_to(page, page.get_by_role("link", name="Expire order ORD-KEYS…"))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Expire order ORD-KEYS?")).to_be_visible()
    await tab_to(page, page.get_by_role("button", name="Yes, expire 1 session"))
    focused = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focused != "none", "the focused button shows no focus ring"
    await page.keyboard.press("Space")
    await expect(page.get_by_role("status")).to_have_text("Expired 1 session of order ORD-KEYS.")
    api = (await live.http.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()
    assert (api["status"], api["close_reason"]) == ("expired", "expired_by_ops")
    await page.close()


async def test_the_agent_calls_by_keyboard_with_enter_and_again_with_space(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """On the agent page the button is reached by Tab; Enter places the call (Ringing), and once it ended,
    Space places another."""
    session = await browser_session(live, keys, "ORD-AGENT-KEYS")
    url = await call_link(live, keys, session)
    live.sim.delay = 1.0
    page = await browser.new_page(viewport=PHONE, is_mobile=True)
    await page.goto(url)
    button = page.get_by_role("button", name="Call customer")
    await tab_to(page, button)
    await page.keyboard.press("Enter")
    state = page.get_by_role("status")
    await expect(state).to_contain_text("Ringing")
    await expect(state).to_contain_text("Completed", timeout=15_000)
    await expect(button).to_be_enabled()
    await tab_to(page, button)
    await page.keyboard.press("Space")
    await expect(state).to_contain_text("Ringing")
    await wait_for(lambda: _calls_made(live, keys, session, 2))
    await page.close()


async def _calls_made(live: Live, keys: Keys, session: dict[str, Any], count: int) -> bool:
    r = await live.http.get(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
    return len(r.json()["items"]) == count


# 3. axe on the pages with content.


async def test_the_console_pages_with_rows_have_no_axe_violations(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Search results, the expire confirmation, the DIDs page after a search, calls needing attention and
    unmatched reports, each with rows: zero axe violations."""
    await browser_session(live, keys, "ORD-AXE")
    await calls_that_need_attention(live, keys, db)
    r = await live.http.post(live.callback, content=unmatched_report("+918068281234", CUSTOMER, AGENT))
    assert r.status_code == 200, r.text
    page = await console_page(browser, live, keys, viewport={"width": 1280, "height": 900})
    checks = [
        ("/console/sessions?q=ORD-AXE", page.get_by_role("link", name="ORD-AXE", exact=True)),
        ("/console/expire?order_id=ORD-AXE", page.get_by_role("button", name="Yes, expire 1 session")),
        ("/console/dids?q=8068281", page.get_by_role("rowheader", name="+918068281236")),
        ("/console/calls", page.get_by_role("link", name="ORD-FAILED")),
        ("/console/reports", page.get_by_role("cell", name=MASKED_CUSTOMER)),
    ]
    for path, shown in checks:
        await page.goto(live.url + path)
        await expect(shown).to_be_visible()
        await no_axe_violations(page)
    await page.close()


# 4. The console's cookie over https.


async def test_behind_an_https_public_url_the_console_cookie_is_secure_httponly_and_strict(
    dsn: str, keys: Keys, live: Live
) -> None:
    """With MASKING_PUBLIC_URL on https, the session (and CSRF) cookies carry Secure, HttpOnly and SameSite=Strict;
    on a plain-http URL the session cookie is not Secure (or a browser could never send it back)."""

    async def cookies_at_sign_in(url: str) -> dict[str, str]:
        async with httpx.AsyncClient(base_url=url) as http:
            form = await http.get("/console/sign-in")
            csrf_cookie = form.headers["set-cookie"]
            token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
            assert token is not None and csrf_cookie.startswith(CSRF_COOKIE + "=")
            # httpx would keep a Secure cookie from a plain-http URL to itself: send it by hand, as a browser
            # reaching the service over https would.
            signed = await http.post(
                "/console/sign-in",
                data={"_csrf_token": token.group(1), "key": keys.a_ops},
                headers={"cookie": csrf_cookie.split(";")[0]},
            )
            assert signed.status_code == 303, signed.text
            set_cookies = signed.headers.get_list("set-cookie")
            session = next(c for c in set_cookies if c.startswith(CONSOLE_COOKIE + "="))
            return {"session": session.lower(), "csrf": csrf_cookie.lower()}

    async with live_service(dsn, public_url="https://masking.example.com") as https:
        secure = await cookies_at_sign_in(https.url)
    for name, cookie in secure.items():
        attributes = {a.strip() for a in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict"} <= attributes, (name, cookie)
    assert "path=/console" in secure["session"]
    plain = await cookies_at_sign_in(live.url)
    assert "secure" not in {a.strip() for a in plain["session"].split(";")[1:]}
    assert {"httponly", "samesite=strict"} <= {a.strip() for a in plain["session"].split(";")[1:]}


# 5. DIDs: search, drain, retire.


async def test_ops_find_a_did_drain_it_and_retire_it_only_once_no_session_uses_it(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """Search finds the DID; Drain makes it draining (the API agrees); Retire asks for a confirmation, is refused
    with the reason while a session holds it, and works once the session closed."""
    did = "+918068281299"
    session = await browser_session(live, keys, "ORD-DID", pool_name="solo", dids=[did])
    assert session["masked_number"] == did
    await browser_session(live, keys, "ORD-OTHER")  # other DIDs, which the search must leave out
    page = await console_page(browser, live, keys, viewport={"width": 1280, "height": 900})
    await page.get_by_role("link", name="DIDs", exact=True).click()
    await page.get_by_label("Number contains").fill("8281299")
    await page.get_by_role("button", name="Search").click()
    rows = page.get_by_role("table").locator("tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(did)
    await expect(rows.first).to_contain_text("active")
    await page.get_by_role("button", name=f"Drain {did}").click()
    await expect(page.get_by_role("status")).to_have_text("Done: the DID is now draining.")
    await expect(page.get_by_role("row", name=re.compile(re.escape(did)))).to_contain_text("draining")
    listed = (await live.http.get("/v1/dids", params={"pool": "solo"}, headers=keys.a)).json()["items"]
    assert [(d["number"], d["status"], d["active_sessions"]) for d in listed] == [(did, "draining", 1)]

    await page.get_by_role("button", name=f"Retire {did}").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Retire {did}?")  # nothing done yet
    await no_axe_violations(page)
    await page.get_by_role("button", name=f"Yes, retire {did}").click()
    await expect(page.get_by_role("alert")).to_contain_text("still carries active sessions")
    await expect(page.get_by_role("row", name=re.compile(re.escape(did)))).to_contain_text("draining")
    listed = (await live.http.get("/v1/dids", params={"pool": "solo"}, headers=keys.a)).json()["items"]
    assert listed[0]["status"] == "draining"
    await no_axe_violations(page)

    assert (await live.http.post(f"/v1/sessions/{session['id']}/close", headers=keys.a)).status_code == 200
    await page.get_by_role("button", name=f"Retire {did}").click()
    await page.get_by_role("button", name=f"Yes, retire {did}").click()
    await expect(page.get_by_role("status")).to_have_text("Done: the DID is now retired.")
    listed = (await live.http.get("/v1/dids", params={"pool": "solo"}, headers=keys.a)).json()["items"]
    assert [(d["number"], d["status"]) for d in listed] == [(did, "retired")]
    await page.close()


async def test_the_did_search_finds_a_did_past_the_first_thousand_of_its_pool(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """1,100 DIDs in one pool: a search for the last one finds it (the search is not limited to a first page)."""
    numbers = did_numbers(1100)
    r = await live.http.post("/v1/dids/bulk", json={"dids": [{"number": n} for n in numbers]}, headers=keys.a)
    assert r.json() == {"created": 1100, "existing": 0}, r.text
    last = max(numbers)
    page = await console_page(browser, live, keys)
    await page.goto(live.url + "/console/dids?q=" + last[1:])
    rows = page.get_by_role("table").locator("tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first.get_by_role("rowheader")).to_have_text(last)
    await expect(page.get_by_text("1 DID.", exact=True)).to_be_visible()
    await page.goto(live.url + "/console/dids?q=80682")  # all of them: the page says only some are shown
    await expect(page.get_by_text(re.compile("the first 500 are shown"))).to_be_visible()
    await expect(rows).to_have_count(500)
    await page.close()


# 6. Sessions by a party's or the masked number; masked in the list and on the session's page (Reveal:
# tests/test_console_reveal.py).


async def test_a_session_is_found_by_either_partys_number_or_its_masked_number_and_listed_masked(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """The customer's number (E.164), the agent's (digits only) and the DID each find the session; the list
    masks the parties (+91******3210), and so does the session's own page."""
    session = await browser_session(live, keys, "ORD-FIND")
    page = await console_page(browser, live, keys, viewport={"width": 1280, "height": 900})
    for query in (CUSTOMER, AGENT[1:], session["masked_number"]):
        await page.goto(live.url + "/console/sessions")
        await page.get_by_label("Order id, party number or masked number").fill(query)
        await page.get_by_role("button", name="Search").click()
        row = page.get_by_role("row", name=re.compile("^ORD-FIND"))
        await expect(row).to_contain_text(MASKED_CUSTOMER)
        await expect(row).to_contain_text(MASKED_AGENT)
        await expect(row).to_contain_text(session["masked_number"])
        listed = await page.get_by_role("table").locator("tbody").inner_html()
        assert not any(n in listed for n in REAL_NUMBERS), query
    await page.get_by_role("link", name="ORD-FIND", exact=True).click()
    await expect(page.locator("#session-status")).to_have_text("active")
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text(MASKED_CUSTOMER)
    await expect(facts).to_contain_text(MASKED_AGENT)
    html = await page.content()
    assert not any(n in html for n in REAL_NUMBERS)
    await page.goto(live.url + "/console/sessions")
    await page.get_by_label("Order id, party number or masked number").fill("+919999999999")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_text("No session matches")).to_be_visible()
    await page.close()


# 7. Calls needing attention; unmatched reports.


async def test_calls_needing_attention_list_the_failed_and_unknown_calls_of_the_last_day_with_their_orders(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """A call the provider refused (failed) and one never reported (unknown, by the timeout sweep) are listed with
    their orders and masked numbers; one from 25 hours ago and a completed one are not."""
    sessions = await calls_that_need_attention(live, keys, db)
    page = await console_page(browser, live, keys, viewport={"width": 1280, "height": 900})
    await page.get_by_role("link", name="Calls needing attention", exact=True).click()
    table = page.get_by_role("table", name=re.compile("Unknown and failed calls"))
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("ORD-UNKNOWN")  # newest first
    await expect(rows.nth(0)).to_contain_text("unknown")
    await expect(rows.nth(1)).to_contain_text("ORD-FAILED")
    await expect(rows.nth(1)).to_contain_text("failed")
    await expect(rows.nth(1)).to_contain_text("+91******2109")
    html = await table.inner_html()
    assert "ORD-OLD" not in html and "ORD-FINE" not in html
    assert not any(n in html for n in (*REAL_NUMBERS, *(s["customer"] for s in sessions.values())))
    await table.get_by_role("link", name="ORD-FAILED").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Order ORD-FAILED")
    await page.close()


async def test_unmatched_reports_show_a_report_that_matched_nothing_with_its_numbers_masked(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """A report posted to the callback about one of the tenant's DIDs but no call it placed is listed, masked."""
    did = "+918068281234"
    await browser_session(live, keys, "ORD-REPORTS", dids=[did])
    r = await live.http.post(live.callback, content=unmatched_report(did, CUSTOMER, AGENT))
    assert r.status_code == 200, r.text
    stored = (await live.http.get("/v1/reports", params={"matched": "false"}, headers=keys.a)).json()["items"]
    assert [x["outcome"] for x in stored] == ["unmatched"]
    page = await console_page(browser, live, keys, viewport={"width": 1280, "height": 900})
    await page.get_by_role("link", name="Unmatched reports", exact=True).click()
    rows = page.get_by_role("table", name=re.compile("Unmatched reports")).locator("tbody tr")
    await expect(rows).to_have_count(1)
    cells = await rows.first.locator("th, td").all_inner_texts()
    assert cells[1:6] == ["unmatched", did, MASKED_CUSTOMER, MASKED_AGENT, "COMPLETED"], cells
    assert cells[6] == "35 s"
    html = await page.content()
    assert not any(n in html for n in REAL_NUMBERS)
    await page.close()
