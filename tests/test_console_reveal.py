"""The console masks every party number on every page; Reveal shows one session's numbers once, on record.

Real Chromium (Debian's) through Playwright, against the service on loopback with the provider simulator.
"""

import re
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from playwright.async_api import Browser, Page, expect

from service.provider.simulator import Fault
from tests.helpers import AGENT, CUSTOMER, Keys, wait_for
from tests.live import Live
from tests.test_browser import DIDS, browser_session, no_axe_violations, sign_in
from tests.test_browser import browser as browser  # the module's Chromium fixture
from tests.test_browser import live as live  # the service on loopback with the simulator
from tests.test_browser import pytestmark as pytestmark  # skipped without Debian's chromium
from tests.test_console_pages import calls_that_need_attention, unmatched_report

NEW_AGENT = "+918765400777"  # the rider who takes over ORD-REVEAL
OTHER_CUSTOMER, OTHER_AGENT = "+919811100001", "+918711100001"
PAGES_AT_MOST = 200  # the walk stops here: a console for one small tenant has far fewer pages
REASON = "Customer disputes call 2 with the agent; checking the numbers"


def forms_of(number: str) -> tuple[str, str]:
    """A number as it could appear in HTML: E.164 and bare digits."""
    return number, number.lstrip("+")


async def busy_tenant(live: Live, keys: Keys, db: asyncpg.Connection) -> tuple[dict[str, Any], set[str]]:
    """Through the real flows: a session with a completed call, its agent replaced and a call after that, a call
    link; a closed session; failed, unknown and completed calls of other orders; an unmatched report. The first
    session, and every party number used."""
    session = await browser_session(live, keys, "ORD-REVEAL")

    async def completed_call() -> None:
        live.sim.inject(Fault(report="answered"))
        r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
        assert r.status_code == 202, r.text

        async def done() -> bool:
            r2 = await live.http.get(f"/v1/calls/{r.json()['id']}", headers=keys.a)
            return bool(r2.json()["status"] == "completed")

        await wait_for(done)

    await completed_call()
    r = await live.http.patch(f"/v1/sessions/{session['id']}", json={"agent": NEW_AGENT}, headers=keys.a)
    assert r.status_code == 200, r.text
    await completed_call()
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={"party": "agent"}, headers=keys.a)
    assert r.status_code == 201, r.text
    body = {"order_id": "ORD-CLOSED", "customer": OTHER_CUSTOMER, "agent": OTHER_AGENT}
    closed = (await live.http.post("/v1/sessions", json=body, headers=keys.a)).json()
    assert (await live.http.post(f"/v1/sessions/{closed['id']}/close", headers=keys.a)).status_code == 200
    others = await calls_that_need_attention(live, keys, db)
    r = await live.http.post(live.callback, content=unmatched_report(session["masked_number"], CUSTOMER, AGENT))
    assert r.status_code == 200, r.text
    spare = DIDS[-1]  # drained at the end, so that the audit log names a DID
    assert (await live.http.patch(f"/v1/dids/{spare}", json={"status": "draining"}, headers=keys.a)).status_code == 200
    numbers = {CUSTOMER, AGENT, NEW_AGENT, OTHER_CUSTOMER, OTHER_AGENT}
    numbers |= {s["customer"] for s in others.values()} | {s["agent"] for s in others.values()}
    return session, numbers


def real_numbers_in(html: str, numbers: set[str]) -> list[str]:
    return [form for n in numbers for form in forms_of(n) if form in html]


async def walk_console(page: Page, live: Live, numbers: set[str], start: list[str]) -> list[str]:
    """Open every console page reachable by links from the start paths; fail on any page showing a real number.
    The paths seen."""
    seen: list[str] = []
    queue = deque(start)
    while queue:
        path = queue.popleft()
        if path in seen:
            continue
        seen.append(path)
        assert len(seen) <= PAGES_AT_MOST, seen
        response = await page.goto(live.url + path)
        assert response is not None and response.status == 200, (path, response and response.status)
        html = await page.content()
        assert not real_numbers_in(html, numbers), (path, real_numbers_in(html, numbers))
        for href in await page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))"):
            link = urlsplit(href)
            if not link.netloc and link.path.startswith("/console"):
                queue.append(link.path + (f"?{link.query}" if link.query else ""))
    return seen


async def reveals(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM audit_log WHERE action = 'session.reveal' ORDER BY id")


async def test_no_console_page_shows_a_real_party_number_and_a_search_by_one_still_finds_its_session(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Every console page reachable from the navigation, each session's page (with calls, a replaced agent and
    events), and a search by each party's full number: party numbers masked (+91******3210), DIDs in clear."""
    session, numbers = await busy_tenant(live, keys, db)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await sign_in(page, live, keys.a_ops)
    await expect(page.get_by_role("heading", name="Pools", level=1)).to_be_visible()
    # Old bookmarks with a number in the address: the sessions page without it (searches are posted, below).
    searches = [f"/console/sessions?q={n.replace('+', '%2B')}" for n in sorted(numbers)]
    searches += [f"/console/sessions?q={n.lstrip('+')}" for n in (CUSTOMER, NEW_AGENT)]
    seen = await walk_console(page, live, numbers, ["/console/pools", *searches])
    assert f"/console/sessions/{session['id']}" in seen
    assert {"/console/calls", "/console/reports", "/console/audit", "/console/dids", "/console/webhooks"} <= set(seen)
    sessions_seen = [p for p in seen if re.fullmatch(r"/console/sessions/[0-9a-f-]{36}", p)]
    assert len(sessions_seen) >= 6, sessions_seen  # ORD-REVEAL, ORD-CLOSED and the four of the calls

    await page.goto(live.url + "/console/audit?action=did.drain")
    await expect(page.get_by_role("table").locator("tbody tr")).to_contain_text(f"did {DIDS[-1]}")  # in clear

    for query in (CUSTOMER, NEW_AGENT.lstrip("+")):  # a full number finds its session; listed masked
        await page.goto(live.url + "/console/sessions")
        await page.get_by_label("Order id, party number or masked number").fill(query)
        await page.get_by_role("button", name="Search").click()
        row = page.get_by_role("row", name=re.compile("^ORD-REVEAL"))
        await expect(row).to_contain_text("+91******3210")
        await expect(row).to_contain_text("+91******0777")
        await expect(row).to_contain_text(session["masked_number"])  # the DID stays in clear
        assert not real_numbers_in(await page.content(), numbers), query
    for query in sorted(numbers):  # every party's full number through the form: no number in clear
        await page.goto(live.url + "/console/sessions")
        await page.get_by_label("Order id, party number or masked number").fill(query)
        async with page.expect_response(lambda r: r.request.method == "POST"):
            await page.get_by_role("button", name="Search").click()
        await page.wait_for_load_state()
        assert not real_numbers_in(await page.content(), numbers), query

    await page.goto(live.url + f"/console/sessions/{session['id']}")
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text("+91******3210")
    await expect(facts).to_contain_text("+91******0777")
    await expect(facts).to_contain_text(session["masked_number"])
    calls = page.get_by_role("table", name=re.compile("Calls of this session")).locator("tbody tr")
    await expect(calls).to_have_count(2)
    await expect(calls.nth(1)).to_contain_text("+91******2109")  # the replaced agent's call, masked too
    assert await reveals(db) == []
    await page.close()


async def key_and_tenant(db: asyncpg.Connection, key: str) -> tuple[str, int]:
    """The id (as the audit log names it) and the tenant of an API key."""
    from service.broker.tenants import hash_key

    row = await db.fetchrow("SELECT id, tenant_id FROM api_keys WHERE key_hash = $1", hash_key(key))
    assert row is not None
    return str(row["id"]), row["tenant_id"]


async def test_reveal_needs_a_reason_and_its_form_token_then_shows_both_numbers_once_and_is_on_record(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Reveal with no reason is refused (by the browser, and by the service when the browser's check is skipped),
    with one over 500 characters, and without the form's token; with a reason the page shows both numbers, exactly one session.reveal row holds
    the reason, who, the tenant, the address and the request id; the session's page after it is masked again."""
    session = await browser_session(live, keys, "ORD-LOOK")
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await sign_in(page, live, keys.a_ops)
    await expect(page.get_by_role("heading", name="Pools", level=1)).to_be_visible()
    await page.goto(live.url + f"/console/sessions/{session['id']}")
    reveal = page.get_by_role("button", name="Reveal", exact=True)
    await reveal.click()  # the browser refuses the empty required field
    await expect(page.get_by_role("heading", level=1)).to_have_text("Order ORD-LOOK")
    assert page.url.endswith(f"/console/sessions/{session['id']}")

    await page.locator("form#reveal").evaluate("f => { f.noValidate = true }")
    await page.get_by_label("Why you need the real numbers").fill("   ")
    async with page.expect_response(re.compile("/reveal$")) as refused:
        await reveal.click()
    assert (await refused.value).status == 422
    await expect(page.get_by_role("alert")).to_contain_text("Say in a few words why you need this")
    assert not real_numbers_in(await page.content(), {CUSTOMER, AGENT})
    await no_axe_violations(page)

    token = await page.locator("form#reveal input[name=_csrf_token]").get_attribute("value")
    assert token
    path = f"/console/sessions/{session['id']}/reveal"
    forged = await page.request.post(live.url + path, form={"reason": "no token"}, max_redirects=0)
    assert forged.status == 403 and not real_numbers_in(await forged.text(), {CUSTOMER, AGENT})
    too_long = await page.request.post(live.url + path, form={"reason": "x" * 501, "_csrf_token": token})
    assert too_long.status == 422 and "under 500 characters" in await too_long.text()
    assert not real_numbers_in(await too_long.text(), {CUSTOMER, AGENT})
    assert await reveals(db) == []

    await page.get_by_label("Why you need the real numbers").fill(REASON)
    async with page.expect_response(re.compile("/reveal$")) as shown:
        await reveal.click()
    answer = await shown.value
    assert answer.status == 200 and answer.headers["cache-control"] == "no-store"
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text(CUSTOMER)
    await expect(facts).to_contain_text(AGENT)
    await expect(page.get_by_role("status")).to_contain_text("in the audit log")
    await no_axe_violations(page)

    key_id, tenant_id = await key_and_tenant(db, keys.a_ops)
    rows = await reveals(db)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["tenant_id"], row["actor_kind"], row["actor_id"]) == (tenant_id, "console", key_id)
    assert (row["target_type"], row["target_id"], row["reason"]) == ("session", session["id"], REASON)
    assert row["client_address"] == "127.0.0.1"
    assert row["request_id"] == answer.headers["x-request-id"]

    await page.get_by_role("link", name="Mask them again").click()  # nothing kept: the next look is masked
    await expect(page.locator("dl.facts")).to_contain_text("+91******3210")
    assert not real_numbers_in(await page.content(), {CUSTOMER, AGENT})
    await page.goto(live.url + "/console/audit?action=session.reveal")
    entry = page.get_by_role("table").locator("tbody tr")
    await expect(entry).to_have_count(1)
    await expect(entry).to_contain_text(REASON)
    assert len(await reveals(db)) == 1
    await page.close()


async def test_reveal_of_another_tenants_session_is_not_found_and_not_recorded(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Tenant B's ops console revealing tenant A's session (with a reason and its token) gets the 404 page; no row."""
    session = await browser_session(live, keys, "ORD-MINE")
    page = await browser.new_page()
    await sign_in(page, live, keys.b_ops)
    await expect(page.get_by_role("heading", name="Pools", level=1)).to_be_visible()
    token = await page.locator("form.sign-out input[name=_csrf_token]").get_attribute("value")
    assert token
    path = f"/console/sessions/{session['id']}/reveal"
    answer = await page.request.post(live.url + path, form={"reason": "curious", "_csrf_token": token})
    assert answer.status == 404 and not real_numbers_in(await answer.text(), {CUSTOMER, AGENT})
    assert await reveals(db) == []
    await page.close()
