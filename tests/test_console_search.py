"""The console's sessions search keeps a party's number out of every URL: the form posts, the answer is its page.

Real Chromium (Debian's) through Playwright, and plain HTTP, against the service on loopback.
"""

import re
from urllib.parse import unquote, urlsplit

from playwright.async_api import Browser, Page, Request, expect

from tests.helpers import AGENT, CUSTOMER, Keys
from tests.live import Live
from tests.test_browser import DIDS, REAL_NUMBERS, browser_session, no_axe_violations
from tests.test_browser import browser as browser  # the module's Chromium fixture
from tests.test_browser import live as live  # the service on loopback with the simulator
from tests.test_browser import pytestmark as pytestmark  # skipped without Debian's chromium
from tests.test_console_http import signed_in
from tests.test_console_pages import MASKED_AGENT, MASKED_CUSTOMER, console_page

SEARCH_LABEL = "Order id, party number or masked number"


def digits_of(number: str) -> tuple[str, ...]:
    """The runs of a number's digits an address could carry: all of them, and the national part alone."""
    return number.lstrip("+"), number[-10:]


async def links_and_actions(page: Page) -> list[str]:
    """Every link's href and every form's action on the page, URL-decoded."""
    found: list[str] = await page.eval_on_selector_all(
        "a[href], form[action]", "els => els.map(e => e.getAttribute('href') ?? e.getAttribute('action'))"
    )
    return [unquote(u) for u in found]


async def search(page: Page, live: Live, text: str) -> None:
    await page.goto(live.url + "/console/sessions")
    await page.get_by_label(SEARCH_LABEL).fill(text)
    await page.get_by_role("button", name="Search").click()


async def test_a_search_by_a_partys_number_finds_its_session_and_puts_the_number_in_no_url(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """Searching the customer's (E.164) or the agent's number (bare digits) through the form lists the session,
    masked; no request the browser made, not the page's address and no link or form action on it holds the
    number's digits; the page passes axe."""
    await browser_session(live, keys, "ORD-SEARCH")
    page = await console_page(browser, live, keys, viewport={"width": 1280, "height": 900})
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(unquote(request.url))

    page.on("request", record)
    for number, typed in ((CUSTOMER, CUSTOMER), (AGENT, AGENT[1:])):
        await search(page, live, typed)
        row = page.get_by_role("row", name=re.compile("^ORD-SEARCH"))
        await expect(row).to_contain_text(MASKED_CUSTOMER)
        await expect(row).to_contain_text(MASKED_AGENT)
        address = urlsplit(page.url)
        assert (address.path, address.query) == ("/console/sessions", ""), page.url
        assert not re.search(r"\d", address.path + address.query + address.fragment), page.url
        urls = await links_and_actions(page)
        assert "/console/sessions/" in " ".join(urls)  # the session's own link is there
        leaked = [u for u in urls if any(d in u for d in digits_of(number)) or re.search(r"[?&]q=", u)]
        assert not leaked, (typed, leaked)
        html = await page.content()
        assert not any(n in html for n in REAL_NUMBERS), typed
        await expect(page.get_by_label(SEARCH_LABEL)).to_have_value("")
        await no_axe_violations(page)
    assert requested and not [u for u in requested for n in (CUSTOMER, AGENT) if any(d in u for d in digits_of(n))]
    await page.close()


async def test_an_old_bookmark_with_a_number_lands_on_the_form_without_it_and_order_ids_still_work(
    browser: Browser, live: Live, keys: Keys
) -> None:
    """/console/sessions?q=+91… redirects to the sessions page without the number, saying to use the form (none
    searched, none shown); an order id through the form, and in the address (bookmarks), still finds its order."""
    await browser_session(live, keys, "ORD-KEPT")
    page = await console_page(browser, live, keys, viewport={"width": 1280, "height": 900})
    await page.goto(live.url + "/console/sessions?q=%2B919876543210")
    assert urlsplit(page.url).query == "number_in_url=1", page.url
    await expect(page.get_by_role("status")).to_contain_text("Search by a phone number with this form")
    await expect(page.get_by_role("table")).to_have_count(1)  # the recent sessions, as with no query
    await expect(page.get_by_role("table")).to_contain_text("Recent sessions")
    html = await page.content()
    assert not any(d in html for d in digits_of(CUSTOMER))
    await no_axe_violations(page)
    await search(page, live, "ORD-KE")
    await expect(page.get_by_role("link", name="ORD-KEPT", exact=True)).to_be_visible()
    await expect(page.get_by_role("link", name="Expire order ORD-KEPT…")).to_be_visible()
    await expect(page.get_by_label(SEARCH_LABEL)).to_have_value("ORD-KE")
    await page.goto(live.url + "/console/sessions?q=ORD-KEPT")
    await expect(page.get_by_role("link", name="ORD-KEPT", exact=True)).to_be_visible()
    await page.close()


async def test_the_search_post_is_refused_without_the_forms_csrf_token(live: Live, keys: Keys) -> None:
    """POST /console/sessions without the token is the 403 "Form refused" page listing nothing; with it, the
    session found by the customer's number; a GET with a number answers 303 to the page without it."""
    await browser_session(live, keys, "ORD-TOKEN", dids=DIDS)
    async with signed_in(live, keys.a_ops) as (http, token):
        refused = await http.post("/console/sessions", data={"q": CUSTOMER})
        assert refused.status_code == 403 and "Form refused" in refused.text, refused.text[:300]
        assert "ORD-TOKEN" not in refused.text
        found = await http.post("/console/sessions", data={"q": CUSTOMER, "_csrf_token": token})
        assert found.status_code == 200 and "ORD-TOKEN" in found.text, found.text[:300]
        assert not any(n in found.text for n in REAL_NUMBERS)
        old = await http.get("/console/sessions", params={"q": CUSTOMER})
        assert old.status_code == 303 and old.headers["location"] == "/console/sessions?number_in_url=1"
