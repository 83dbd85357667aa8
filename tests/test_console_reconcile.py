"""The console's calls page lists the calls waiting on the provider's call log, as ops see it in Chromium."""

import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
from playwright.async_api import Browser, expect

from service.provider.simulator import Fault
from tests.factories import open_session
from tests.helpers import Keys, did_numbers, wait_for
from tests.live import Live, live_service
from tests.test_browser import REAL_NUMBERS, no_axe_violations, sign_in
from tests.test_browser import browser as browser  # the module's Chromium fixture
from tests.test_browser import pytestmark as pytestmark  # skipped without Debian's chromium
from tests.test_reconcile import FAST, place


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[Live]:
    """The service with its sweeper (reconciliation after 1 s) and the simulator."""
    async with live_service(dsn, background=True, **FAST) as running:
        yield running


async def test_calls_waiting_on_the_call_log_are_listed_with_how_their_lookup_went_and_masked_numbers(
    browser: Browser, live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """A call the log does not show (not found) and one two log rows could be (ambiguous) are listed with their
    orders, lookup counts and outcomes; numbers masked; a reported call is not listed; the page passes axe."""
    dids = did_numbers(3, start=40)
    lost = await open_session(live.http, keys.a, dids=dids, order_id="ORD-NOTFOUND", customer="+919876500011")
    twin = await open_session(live.http, keys.a, order_id="ORD-AMBIGUOUS", customer="+919876500022")
    fine = await open_session(live.http, keys.a, order_id="ORD-REPORTED", customer="+919876500033")
    await place(live, keys, fine, Fault(report="answered"))
    not_found = await place(live, keys, lost, Fault(report="none"))
    live.sim.lose_callbacks = 1.0
    ambiguous = await place(live, keys, twin, Fault(report="answered"))
    row = next(r for r in live.sim.call_log if r["mid"] == ambiguous["id"])
    live.sim.call_log.append(dict(row, id="other", mid=None, start_at=row["end_at"]))

    async def both_looked_up() -> bool:
        outcomes = await db.fetch(
            "SELECT lookup_outcome FROM calls WHERE id = ANY($1::uuid[]) AND lookups >= 1",
            [not_found["id"], ambiguous["id"]],
        )
        return sorted(r["lookup_outcome"] for r in outcomes) == ["ambiguous", "not_found"]

    await wait_for(both_looked_up, within=20, interval=0.1)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await sign_in(page, live, keys.a_ops)
    await page.get_by_role("link", name="Calls needing attention", exact=True).click()
    table = page.get_by_role("table", name=re.compile("Calls waiting on the call log"))
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("ORD-NOTFOUND")  # oldest first
    await expect(rows.nth(0)).to_contain_text("not found in the call log yet")
    await expect(rows.nth(0)).to_contain_text("+91******0011")
    await expect(rows.nth(1)).to_contain_text("ORD-AMBIGUOUS")
    await expect(rows.nth(1)).to_contain_text("ambiguous")
    html = await page.content()
    assert "ORD-REPORTED" not in await table.inner_html()
    assert not any(n in html for n in (*REAL_NUMBERS, "+919876500011", "919876500022"))
    await no_axe_violations(page)
    await table.get_by_role("link", name="ORD-AMBIGUOUS").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Order ORD-AMBIGUOUS")
    await page.close()
