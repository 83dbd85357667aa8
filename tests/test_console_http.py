"""The ops console over plain HTTP: sign-in throttling per client address, HTML errors, forms' confirmations."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from service.provider.simulator import Fault
from tests.helpers import AGENT, CUSTOMER, Keys, call_status, wait_for
from tests.live import Live, live_service
from tests.receiver import Receiver
from tests.test_console_pages import unmatched_report
from tests.test_webhooks import FAST, register

DID = "+918068281234"


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[Live]:
    async with live_service(dsn, trusted_proxies="127.0.0.0/8, ::1") as service:
        yield service


async def sign_in_form(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    form = await http.get("/console/sign-in", headers=headers)
    found = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert found is not None, form.text
    return found.group(1)


@asynccontextmanager
async def signed_in(live: Live, key: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client signed in to the console, and its form token."""
    async with httpx.AsyncClient(base_url=live.url) as http:
        token = await sign_in_form(http)
        r = await http.post("/console/sign-in", data={"_csrf_token": token, "key": key})
        assert r.status_code == 303, r.text
        yield http, token


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


async def open_session(live: Live, keys: Keys, order: str, customer: str = CUSTOMER) -> dict[str, Any]:
    dids = [{"number": DID}, {"number": "+918068281235"}, {"number": "+918068281236"}]
    r = await live.http.post("/v1/dids/bulk", json={"dids": dids}, headers=keys.a)
    assert r.status_code == 200, r.text
    body = {"order_id": order, "customer": customer, "agent": AGENT}
    r = await live.http.post("/v1/sessions", json=body, headers=keys.a)
    assert r.status_code in (200, 201), r.text
    return r.json()


def rows_of(html: str) -> list[str]:
    """The body rows of the page's tables, as HTML."""
    return re.findall(r"<tr>(.*?)</tr>", html.split("<tbody>", 1)[1] if "<tbody>" in html else "", re.S)


async def test_a_phone_number_search_offers_to_expire_the_orders_it_found_and_that_expiry_works(
    live: Live, keys: Keys
) -> None:
    """Searching the customer's number offers "Expire order ORD-PHONE…" (the order, not the number typed), and
    following it expires the session."""
    session = await open_session(live, keys, "ORD-PHONE")
    async with signed_in(live, keys.a_ops) as (http, token):
        found = await http.post("/console/sessions", data={"q": CUSTOMER, "_csrf_token": token})
        assert "ORD-PHONE" in found.text
        offers = re.findall(r'href="/console/expire\?order_id=([^"]+)"', found.text)
        assert offers == ["ORD-PHONE"], offers
        assert "Expire order +" not in found.text
        confirm = await http.get("/console/expire", params={"order_id": "ORD-PHONE"})
        assert "Yes, expire 1 session" in confirm.text
        done = await http.post(
            "/console/expire", data={"_csrf_token": token, "order_id": "ORD-PHONE", "confirm": "yes"}
        )
        assert done.status_code == 303
    api = (await live.http.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()
    assert (api["status"], api["close_reason"]) == ("expired", "expired_by_ops")


async def test_the_sessions_page_opens_on_recent_sessions_and_finds_order_ids_by_prefix(live: Live, keys: Keys) -> None:
    """With no query the newest sessions are listed (masked); "ORD-PRE" finds ORD-PREFIX-1 and ORD-PREFIX-2 only."""
    await open_session(live, keys, "ORD-PREFIX-1")
    await open_session(live, keys, "ORD-PREFIX-2", customer="+919876543211")
    await open_session(live, keys, "ORD-OTHER", customer="+919876543212")
    async with signed_in(live, keys.a_ops) as (http, _):
        recent = await http.get("/console/sessions")
        rows = rows_of(recent.text)
        assert len(rows) == 3 and "ORD-OTHER" in rows[0], rows  # newest first
        assert "+91******3210" in recent.text and CUSTOMER not in recent.text
        found = await http.get("/console/sessions", params={"q": "ORD-PRE"})
        rows = rows_of(found.text)
        assert len(rows) == 2 and "ORD-PREFIX-2" in rows[0] and "ORD-PREFIX-1" in rows[1], rows
        assert "ORD-OTHER" not in found.text


async def test_unmatched_reports_say_why_they_matched_nothing(live: Live, keys: Keys) -> None:
    """A report about a DID with no call in flight is listed with its reason, no_call."""
    await open_session(live, keys, "ORD-REPORT")
    r = await live.http.post(live.callback, content=unmatched_report(DID, CUSTOMER, AGENT))
    assert r.status_code == 200, r.text
    async with signed_in(live, keys.a_ops) as (http, _):
        page = await http.get("/console/reports")
    assert '<th scope="col">Why unmatched</th>' in page.text
    [row] = rows_of(page.text)
    assert "no_call" in row, row


async def test_retiring_a_did_asks_for_a_confirmation_first(live: Live, keys: Keys) -> None:
    """Retire shows a confirmation (no change yet); only the confirmed form retires the DID."""
    await live.http.post("/v1/dids", json={"number": DID}, headers=keys.a)
    async with signed_in(live, keys.a_ops) as (http, token):
        asked = await http.post(f"/console/dids/{DID}", data={"_csrf_token": token, "status": "retired"})
        assert asked.status_code == 200 and f"Retire {DID}?" in asked.text
        assert f"Yes, retire {DID}" in asked.text
        listed = (await live.http.get("/v1/dids", headers=keys.a)).json()["items"]
        assert listed[0]["status"] == "active"
        done = await http.post(
            f"/console/dids/{DID}", data={"_csrf_token": token, "status": "retired", "confirm": "yes"}
        )
        assert done.status_code == 303
    listed = (await live.http.get("/v1/dids", headers=keys.a)).json()["items"]
    assert listed[0]["status"] == "retired"


async def test_an_unknown_console_path_is_a_plain_html_404(live: Live, keys: Keys) -> None:
    """GET and POST of a console path that does not exist answer an HTML page, signed in or not."""
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.get("/console/no-such-page")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html") and "Not found" in r.text
    async with signed_in(live, keys.a_ops) as (http, token):
        for r in (
            await http.get("/console/sessions/x/y/z"),
            await http.post("/console/nothing-here", data={"_csrf_token": token}),
        ):
            assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), r.text


async def test_the_provider_outcome_is_said_in_words_and_never_with_the_providers_message(
    live: Live, keys: Keys
) -> None:
    """A missed call's row says "No answer" with each leg's outcome; the provider's message text is not shown."""
    session = await open_session(live, keys, "ORD-MISSED")
    live.sim.inject(Fault(report="missed"))
    r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
    assert r.status_code == 202, r.text
    await call_status(live, keys, r.json()["id"], "missed")
    async with signed_in(live, keys.a_ops) as (http, _):
        page = await http.get(f"/console/sessions/{session['id']}")
    assert "Call initiated successfully" not in page.text and "NOANSWER" not in page.text
    assert "No answer (agent answered, customer did not answer)" in page.text, page.text


async def test_the_pools_chart_has_a_y_axis_and_scales_to_its_card(live: Live, keys: Keys) -> None:
    """The chart's SVG scales with its card (no fixed width) and carries a labelled y axis from 0 to its top."""
    await open_session(live, keys, "ORD-CHART")
    async with signed_in(live, keys.a_ops) as (http, _):
        page = await http.get("/console/pools")
    svg = re.search(r"<svg.*?</svg>", page.text, re.S)
    assert svg is not None
    assert 'width="100%"' in svg.group(0) and 'preserveAspectRatio="xMidYMid meet"' in svg.group(0)
    ticks = re.findall(r'<text class="y-tick"[^>]*>(\d+)</text>', svg.group(0))
    assert ticks[0] == "0" and ticks[-1] == "1", ticks


@pytest.fixture
async def hooked(dsn: str) -> AsyncIterator[Live]:
    """The service with its delivery worker: two quick retries, then failed."""
    async with live_service(dsn, background=True, **{**FAST, "webhook_retry_seconds": "0.1,0.1"}) as service:
        yield service


async def test_the_webhooks_page_shows_each_failing_event_once_with_its_state_and_tests_an_endpoint(
    hooked: Live, keys: Keys
) -> None:
    """Three failed attempts of one event are one row saying it gave up after 3 attempts (no past "next attempt");
    Test (with the form's token) sends a webhook.test now and says how it went; without the token it is refused."""
    live = hooked
    async with Receiver(mode="500") as failing:
        endpoint = await register(live.http, keys.a, failing.url, ["session.created"])
        await open_session(live, keys, "ORD-HOOKS")

        async def gave_up() -> bool:
            r = await live.http.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=keys.a)
            return any(a["status"] == "failed" for a in r.json()["items"])

        await wait_for(gave_up)
        async with signed_in(live, keys.a_ops) as (http, token):
            page = await http.get("/console/webhooks")
            rows = rows_of(page.text)
            assert len(rows) == 1, rows
            assert "session.created" in rows[0] and "gave up after 3 attempts" in rows[0] and "HTTP 500" in rows[0]
            assert "Next attempt" not in page.text
            assert f'action="/console/webhooks/{endpoint["id"]}/test"' in page.text
            refused = await http.post(f"/console/webhooks/{endpoint['id']}/test", data={})
            assert refused.status_code == 403
            before = failing.requests
            tested = await http.post(f"/console/webhooks/{endpoint['id']}/test", data={"_csrf_token": token})
            assert tested.status_code == 303, tested.text
            assert failing.requests == before + 1
            shown = await http.get(tested.headers["location"])
            assert "Test event sent" in shown.text and "HTTP 500" in shown.text


def test_a_provider_status_that_is_not_a_plain_word_is_never_shown() -> None:
    """Statuses become words; a token with digits (it could be a number) is "other"; no report says why."""
    from datetime import UTC, datetime
    from uuid import uuid4

    from service.models import Call, ProviderOutcome
    from service.web.pages import provider_outcome

    def call(status: str, *said: str | None, first: str = "customer") -> Call:
        s1, s2 = (said + (None, None))[:2]
        return Call(
            id=uuid4(), session_id=uuid4(), first=first, from_="+919876543210", to="+918765432109",
            bridge="+918068281234", flow=None, status=status, record=False, created_at=datetime.now(UTC),
            started_at=None, ended_at=None, duration_seconds=None, billing_seconds=None, recording_url=None,
            hangup_by=None, provider=ProviderOutcome(status=said[2] if len(said) > 2 else None, status1=s1,
                                                     status2=s2, message="Call to 919876543210 failed"),
        )  # fmt: skip

    assert provider_outcome(call("completed", "RECEIVED", "ANSWER", "COMPLETED")) == (
        "Completed (customer answered, agent answered)"
    )
    assert provider_outcome(call("missed", "BUSY", "", "BUSY")) == "Busy (customer was busy)"
    assert provider_outcome(call("missed", "919876543210", None, "ODD_STATE")) == "Odd state (customer other)"
    assert provider_outcome(call("failed")) == "Refused by the provider, or it could not be reached"
