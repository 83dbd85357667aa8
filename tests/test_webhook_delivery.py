"""Webhook delivery in detail: no redirects, the timeout, the retry schedule's jitter, attempt retention, metrics,
the end of a secret's overlap, changing an endpoint, the deliveries list, and the SSRF guard at each attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.broker import sweeps
from service.broker.webhooks.delivery import Deliverer
from service.broker.webhooks.guard import address_verdict
from service.db import webhooks as webhooks_q
from service.db.pool import create_pool
from service.settings import Settings
from tests.factories import bare_tenant, make_sessions
from tests.helpers import FakeClock, Keys, add_dids, assert_problem, did_numbers, make_settings, wait_for
from tests.receiver import Receiver
from tests.test_webhooks import FAST, register, service

# The contract's schedule: about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h (±20 %), then failed.
CONTRACT_DELAYS = [5, 300, 1800, 7200, 18000, 36000, 36000]

# Metadata and link-local addresses in disguise: each reaches 169.254.169.254 (or another cloud's metadata)
# through an IPv4-mapped, NAT64 or 6to4 wrapping, or is Oracle Cloud's metadata address itself.
DISGUISED = [
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:a9fe:1",  # IPv4-mapped, 169.254.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 (RFC 6052 well-known prefix) of 169.254.169.254
    "64:ff9b::6464:64c8",  # NAT64 of Alibaba's 100.100.100.200
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:a9fe:a9fe:1:2:3:4:5",  # 6to4 of 169.254.169.254, another host of its /48
    "192.0.0.192",  # Oracle Cloud metadata
    "::ffff:192.0.0.192",  # Oracle Cloud metadata, IPv4-mapped
    "64:ff9b::c000:c0",  # Oracle Cloud metadata through NAT64
]


def url_of(address: str, port: int = 80) -> str:
    ip = ipaddress.ip_address(address)
    return f"http://[{ip}]:{port}/hooks" if ip.version == 6 else f"http://{ip}:{port}/hooks"


@pytest.fixture
def settings(dsn: str) -> Settings:
    """As local development and tests run it: plain http and loopback allowed; metadata never is."""
    return make_settings(dsn, **{**FAST, "webhook_timeout_seconds": 2})


async def _true(value: bool) -> bool:
    return value


async def attempts_of(
    http: httpx.AsyncClient, headers: dict[str, str], endpoint_id: str, **params: Any
) -> dict[str, Any]:
    r = await http.get(f"/v1/webhooks/{endpoint_id}/deliveries", params=params, headers=headers)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text, by name and labels (None: not there)."""
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


# --- no redirects, the timeout -------------------------------------------------------------------------


async def test_a_redirect_is_not_followed_and_the_attempt_is_retried(client: httpx.AsyncClient, keys: Keys) -> None:
    """An endpoint answering 307 to another receiver: the attempt is retrying, names the redirect; nobody else is asked."""
    async with Receiver(mode="redirect") as first, Receiver() as second:
        first.location = second.url
        endpoint = await register(client, keys.a, first.url)
        first.secrets = second.secrets = [endpoint["secret"]]
        r = await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)
        assert r.status_code == 200, r.text
        attempt = r.json()
        assert (attempt["status"], attempt["status_code"]) == ("retrying", 307)
        assert "redirect" in attempt["error"]
        assert attempt["next_attempt_at"] is not None
        await asyncio.sleep(0.5)
        assert first.requests == 1 and second.requests == 0
        listed = (await attempts_of(client, keys.a, endpoint["id"]))["items"]
        assert [(a["status"], a["status_code"], a["error"]) for a in listed] == [("retrying", 307, attempt["error"])]


async def test_a_hanging_endpoint_fails_the_attempt_after_the_delivery_timeout(dsn: str, keys: Keys) -> None:
    """MASKING_WEBHOOK_TIMEOUT_SECONDS=1 and an endpoint that never answers: the attempt fails with the timeout error."""
    async with Receiver(mode="hang") as hanging, service(dsn, webhook_timeout_seconds=1) as http:
        endpoint = await register(http, keys.a, hanging.url)
        r = await http.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)
        assert r.status_code == 200, r.text
        attempt = r.json()
        print(f"\nhanging endpoint, timeout 1 s: attempt {attempt['error']!r} after {attempt['duration_ms']} ms")
        assert (attempt["status"], attempt["status_code"]) == ("retrying", None)
        assert attempt["error"] == "no answer within 1 s"
        assert 900 <= attempt["duration_ms"] < 10_000
        assert hanging.requests == 1


# --- the retry schedule ----------------------------------------------------------------------------------


async def test_each_retry_waits_the_contracts_delay_within_20_percent_with_jitter_and_the_last_one_fails(
    dsn: str, db: asyncpg.Connection
) -> None:
    """With a fixed clock, attempt n's next try is the contract's n-th delay ±20 %, jittered; after the 8th: failed."""
    settings = make_settings(dsn, **{k: v for k, v in FAST.items() if k != "webhook_retry_seconds"})
    assert settings.webhook_retries == CONTRACT_DELAYS  # the default schedule is the contract's
    fixed = datetime(2030, 1, 1, tzinfo=UTC)
    tenant = await bare_tenant(db, "schedule")
    samples = 25
    async with Receiver(mode="500") as failing:
        endpoint = uuid.uuid4()
        await db.execute(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret, created_at, updated_at)"
            " VALUES ($1, $2, $3, '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', $4, $4)",
            endpoint,
            tenant,
            failing.url,
            fixed,
        )
        pool = await create_pool(dsn, 2)
        deliverer = Deliverer(pool, settings, lambda: fixed)
        try:
            claimed = await webhooks_q.insert_test_delivery(db, tenant, endpoint, b"{}", fixed, fixed)
            assert claimed is not None
            for n, delay in enumerate(CONTRACT_DELAYS, start=1):
                waits = []
                for _ in range(samples):
                    outcome = await deliverer.attempt(msgspec.structs.replace(claimed, attempt=n))
                    assert (outcome.status, outcome.status_code, outcome.at) == ("retrying", 500, fixed)
                    assert outcome.next_attempt_at is not None
                    waits.append((outcome.next_attempt_at - fixed).total_seconds())
                print(f"\nattempt {n}: contract {delay} s, waits {min(waits):.1f}..{max(waits):.1f} s", end="")
                assert all(0.8 * delay <= w <= 1.2 * delay for w in waits), (n, waits)
                assert len(set(waits)) > samples // 2, (n, waits)  # jittered, not one fixed delay
                assert min(waits) < delay < max(waits), (n, waits)  # on both sides of the nominal delay
            last = await deliverer.attempt(msgspec.structs.replace(claimed, attempt=len(CONTRACT_DELAYS) + 1))
            assert (last.status, last.next_attempt_at, last.error) == ("failed", None, "HTTP 500")
            # Recorded as the delivery's current attempt, the delivery is failed: nothing more is tried.
            await db.execute("UPDATE webhook_deliveries SET attempts = $1", last.attempt)
            await webhooks_q.record(db, [last], timedelta(days=3))
            assert await db.fetchval("SELECT status FROM webhook_deliveries") == "failed"
            assert (
                await webhooks_q.claim(db, fixed + timedelta(days=30), {}, 8, {}, 16, 10, fixed + timedelta(days=31))
                == []
            )
        finally:
            await deliverer.close()
            await pool.close()
        assert failing.requests == samples * len(CONTRACT_DELAYS) + 1


# --- retention, metrics ---------------------------------------------------------------------------------


async def test_attempts_older_than_the_event_retention_are_deleted_by_the_sweeper_and_newer_kept(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock, db: asyncpg.Connection, dsn: str
) -> None:
    """Attempts 31 and 29 days old, and one now: retention 30 days deletes the first; 7 days, the second too."""
    async with Receiver() as receiver:
        endpoint = await register(client, keys.a, receiver.url)
        for _ in range(3):
            assert (await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)).json()["status"] == (
                "delivered"
            )
    ids = [r["id"] for r in await db.fetch("SELECT id FROM webhook_attempts ORDER BY id")]
    await db.execute("UPDATE webhook_attempts SET at = at - interval '31 days' WHERE id = $1", ids[0])
    await db.execute("UPDATE webhook_attempts SET at = at - interval '29 days' WHERE id = $1", ids[1])
    listed = await attempts_of(client, keys.a, endpoint["id"])
    assert len(listed["items"]) == 3

    done = await sweeps.tidy(db, make_settings(dsn, event_retention_days=30), clock())
    assert done["webhook_attempts_deleted"] == 1
    assert [r["id"] for r in await db.fetch("SELECT id FROM webhook_attempts ORDER BY id")] == ids[1:]
    assert len((await attempts_of(client, keys.a, endpoint["id"]))["items"]) == 2

    done = await sweeps.tidy(db, make_settings(dsn, event_retention_days=7), clock())
    assert done["webhook_attempts_deleted"] == 1
    assert [r["id"] for r in await db.fetch("SELECT id FROM webhook_attempts ORDER BY id")] == ids[2:]


async def test_metrics_show_a_disabled_endpoint_and_the_age_of_a_lagging_endpoints_oldest_event(
    dsn: str, keys: Keys
) -> None:
    """An always-500 endpoint ends disabled_failing: the disabled gauge goes 0 to 1; a hanging one's backlog ages."""
    async with (
        Receiver(mode="500") as failing,
        Receiver(mode="hang") as lagging,
        service(
            dsn,
            webhook_retry_seconds="0.3,0.3,0.3,0.3,0.3,0.3,0.3",
            webhook_disable_after_seconds=1,
            webhook_timeout_seconds=30,
        ) as http,
    ):

        async def metrics() -> str:
            return (await http.get("/metrics")).text

        await wait_for(lambda: _gauge_is(metrics, "masking_webhook_endpoints_disabled", 0.0))
        await add_dids(http, keys.a, did_numbers(3))
        bad = await register(http, keys.a, failing.url, ["session.created"])
        slow = await register(http, keys.a, lagging.url, ["session.created"])
        await make_sessions(http, keys.a, 1)

        async def disabled() -> bool:
            r = await http.get(f"/v1/webhooks/{bad['id']}", headers=keys.a)
            return bool(r.json()["status"] == "disabled_failing")

        await wait_for(disabled, within=10)
        started = asyncio.get_running_loop().time()
        # The gauges are refreshed every 15 s per process (the backlog query is not run on every scrape).
        await wait_for(lambda: _gauge_is(metrics, "masking_webhook_endpoints_disabled", 1.0), within=25)
        text = await metrics()
        oldest = sample(text, "masking_webhook_oldest_undelivered_seconds")
        backlog = sample(text, "masking_webhook_endpoint_backlog_seconds", endpoint=slow["id"])
        print(
            f"\ndisabled gauge 1 after {asyncio.get_running_loop().time() - started:.1f} s more;"
            f" oldest undelivered {oldest} s, the hanging endpoint's backlog {backlog} s"
        )
        assert oldest is not None and oldest >= 1
        assert backlog == oldest  # the lagging endpoint is the one behind
        assert sample(text, "masking_webhook_endpoint_backlog_seconds", endpoint=bad["id"]) is None  # disabled
        assert lagging.requests == 1 and failing.requests >= 4


async def _gauge_is(metrics: Any, name: str, value: float) -> bool:
    return sample(await metrics(), name) == value


# --- secrets --------------------------------------------------------------------------------------------


async def test_after_the_overlap_only_the_new_secret_signs(dsn: str, keys: Keys, db: asyncpg.Connection) -> None:
    """Rotated: both secrets verify; once the previous secret's overlap has passed, only the new one does."""
    async with Receiver() as receiver, service(dsn) as http:
        await add_dids(http, keys.a, did_numbers(5))
        endpoint = await register(http, keys.a, receiver.url, ["session.created"])
        old = endpoint["secret"]
        receiver.secrets = [old]
        await make_sessions(http, keys.a, 1)
        await wait_for(lambda: _true(len(receiver.delivered) == 1))

        new = (await http.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret", headers=keys.a)).json()["secret"]
        receiver.secrets = [old, new]
        await make_sessions(http, keys.a, 1, start=1)
        await wait_for(lambda: _true(len(receiver.delivered) == 2))
        body, headers = receiver.raw[-1]
        assert len(headers["webhook-signature"].split(" ")) == 2
        Webhook(old).verify(body, headers)
        Webhook(new).verify(body, headers)

        await db.execute(
            "UPDATE webhook_endpoints SET previous_until = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(endpoint["id"]),
        )
        shown = (await http.get(f"/v1/webhooks/{endpoint['id']}", headers=keys.a)).json()
        assert shown["secret_rotating"] is False
        await make_sessions(http, keys.a, 1, start=2)
        await wait_for(lambda: _true(len(receiver.delivered) == 3))
        body, headers = receiver.raw[-1]
        assert len(headers["webhook-signature"].split(" ")) == 1
        Webhook(new).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(body, headers)
        assert receiver.bad_signatures == 0


# --- changing an endpoint -------------------------------------------------------------------------------


async def test_a_changed_url_gets_the_next_event_and_a_type_taken_out_is_no_longer_sent(dsn: str, keys: Keys) -> None:
    """PATCH url: the next event goes to the new URL only; PATCH events without session.closed: closes go nowhere."""
    async with Receiver() as before, Receiver() as after, service(dsn) as http:
        await add_dids(http, keys.a, did_numbers(5))
        endpoint = await register(http, keys.a, before.url, ["session.created", "session.closed"])
        before.secrets = after.secrets = [endpoint["secret"]]
        await make_sessions(http, keys.a, 1)
        await wait_for(lambda: _true(len(before.delivered) == 1))

        r = await http.patch(f"/v1/webhooks/{endpoint['id']}", json={"url": after.url}, headers=keys.a)
        assert r.status_code == 200, r.text
        assert r.json()["url"] == after.url
        [second] = await make_sessions(http, keys.a, 1, start=1)
        await wait_for(lambda: _true(len(after.delivered) == 1))
        assert [e["data"]["id"] for e in after.events.values()] == [second]

        r = await http.patch(f"/v1/webhooks/{endpoint['id']}", json={"events": ["session.created"]}, headers=keys.a)
        assert r.json()["events"] == ["session.created"]
        assert (await http.post(f"/v1/sessions/{second}/close", headers=keys.a)).json()["status"] == "closed"
        [third] = await make_sessions(http, keys.a, 1, start=2)
        await wait_for(lambda: _true(len(after.delivered) == 2))
        await asyncio.sleep(0.5)
        assert [(e["type"], e["data"]["id"]) for e in after.events.values()] == [
            ("session.created", second),
            ("session.created", third),
        ]
        assert before.requests == 1 and after.bad_signatures == 0
        listed = (await attempts_of(http, keys.a, endpoint["id"]))["items"]
        assert {a["type"] for a in listed} == {"session.created"}


async def test_enabling_a_disabled_failing_endpoint_clears_its_failing_state_and_it_delivers_again(
    dsn: str, keys: Keys
) -> None:
    """disabled_failing, then PATCH status enabled: enabled, failing_since cleared, and the next event arrives."""
    async with (
        Receiver(mode="500") as receiver,
        service(dsn, webhook_retry_seconds="0.2,0.2,0.2,0.2,0.2,0.2,0.2", webhook_disable_after_seconds=0.5) as http,
    ):
        await add_dids(http, keys.a, did_numbers(5))
        endpoint = await register(http, keys.a, receiver.url, ["session.created"])
        receiver.secrets = [endpoint["secret"]]
        await make_sessions(http, keys.a, 1)

        async def failing() -> dict[str, Any] | None:
            shown: dict[str, Any] = (await http.get(f"/v1/webhooks/{endpoint['id']}", headers=keys.a)).json()
            return shown if shown["status"] == "disabled_failing" else None

        shown = await wait_for(failing, within=10)
        assert shown["failing_since"] is not None
        requests = receiver.requests
        [later] = await make_sessions(http, keys.a, 1, start=1)
        await asyncio.sleep(0.5)
        assert receiver.requests == requests  # a disabled endpoint is sent nothing

        receiver.mode = "ok"
        r = await http.patch(f"/v1/webhooks/{endpoint['id']}", json={"status": "enabled"}, headers=keys.a)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["failing_since"]) == ("enabled", None)
        [newest] = await make_sessions(http, keys.a, 1, start=2)
        await wait_for(lambda: _true(any(e["data"]["id"] == newest for e in receiver.events.values())), within=10)
        shown = (await http.get(f"/v1/webhooks/{endpoint['id']}", headers=keys.a)).json()
        assert (shown["status"], shown["failing_since"]) == ("enabled", None)
        # What happened while it was disabled was not queued for it (docs/webhooks.md): the feed has it.
        assert all(e["data"]["id"] != later for e in receiver.events.values())
        feed = (await http.get("/v1/events", params={"type": "session.created"}, headers=keys.a)).json()["items"]
        assert later in [e["data"]["id"] for e in feed]


# --- the deliveries list --------------------------------------------------------------------------------


async def test_the_deliveries_list_filters_by_status_and_pages_through_every_attempt_once(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """Nine failing attempts and two delivered: ?status= filters, limit+cursor walk all 11 once, a bad cursor is 422."""
    async with Receiver(mode="500") as receiver, service(dsn, webhook_retry_seconds="0.1,0.1") as http:
        await add_dids(http, keys.a, did_numbers(10))
        endpoint = await register(http, keys.a, receiver.url, ["session.created"])
        receiver.secrets = [endpoint["secret"]]
        await make_sessions(http, keys.a, 3)

        async def attempts(status: str, count: int) -> bool:
            n = await db.fetchval("SELECT count(*) FROM webhook_attempts WHERE status = $1", status)
            return bool(n == count)

        await wait_for(lambda: attempts("failed", 3), within=10)
        receiver.mode = "ok"
        await make_sessions(http, keys.a, 2, start=3)
        await wait_for(lambda: attempts("delivered", 2), within=10)

        whole = (await attempts_of(http, keys.a, endpoint["id"]))["items"]
        assert len(whole) == 11
        by_status = {s: (await attempts_of(http, keys.a, endpoint["id"], status=s))["items"] for s in _STATUSES}
        assert {s: len(items) for s, items in by_status.items()} == {"delivered": 2, "retrying": 6, "failed": 3}
        assert all(a["status"] == s for s, items in by_status.items() for a in items)
        assert all(a["attempt"] == 3 and a["status_code"] == 500 for a in by_status["failed"])
        assert all(a["next_attempt_at"] is None for a in by_status["failed"] + by_status["delivered"])

        walked, pages, cursor = [], 0, None
        while True:
            page = await attempts_of(http, keys.a, endpoint["id"], limit=2, **({"cursor": cursor} if cursor else {}))
            walked += page["items"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 6 and walked == whole  # every attempt once, newest first, as one page shows them
        assert len({(a["event_id"], a["attempt"]) for a in walked}) == 11

        first = await attempts_of(http, keys.a, endpoint["id"], status="retrying", limit=4)
        rest = await attempts_of(http, keys.a, endpoint["id"], status="retrying", limit=4, cursor=first["next_cursor"])
        assert first["items"] + rest["items"] == by_status["retrying"] and rest["next_cursor"] is None
        exact = await attempts_of(http, keys.a, endpoint["id"], status="delivered", limit=2)
        assert len(exact["items"]) == 2 and exact["next_cursor"] is None  # no cursor to an empty page

        for bad in ("abc", "-1", "1.5", "9" * 25, "", "²", "٣"):
            r = await http.get(f"/v1/webhooks/{endpoint['id']}/deliveries", params={"cursor": bad}, headers=keys.a)
            assert_problem(r, 422, "invalid_request")
        r = await http.get(f"/v1/webhooks/{endpoint['id']}/deliveries", params={"status": "lost"}, headers=keys.a)
        assert_problem(r, 422, "invalid_request")


_STATUSES = ("delivered", "retrying", "failed")


async def test_redelivering_an_event_id_with_a_non_ascii_digit_is_not_found(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """POST /v1/events/evt_²/redeliver (a superscript two, which str.isdigit accepts) is 404 like any unknown id."""
    for bad in ("evt_x", "evt_²"):
        assert_problem(await client.post(f"/v1/events/{bad}/redeliver", headers=keys.a), 404, "not_found")


# --- the SSRF guard ------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", DISGUISED)
async def test_metadata_and_link_local_addresses_in_disguise_are_refused_at_registration(
    client: httpx.AsyncClient, keys: Keys, address: str
) -> None:
    """IPv4-mapped, NAT64 and 6to4 wrappings of metadata addresses, and Oracle's 192.0.0.192: 422 even with private allowed."""
    r = await client.post("/v1/webhooks", json={"url": url_of(address), "events": ["*"]}, headers=keys.a)
    body = assert_problem(r, 422, "forbidden_address")
    assert "link-local" in body["detail"] or "metadata" in body["detail"]


@pytest.mark.parametrize(
    ("address", "allow_private", "refused"),
    [
        ("64:ff9b::7f00:1", False, True),  # NAT64 of loopback
        ("64:ff9b::a00:1", False, True),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::1", False, True),  # 6to4 of loopback
        ("2002:c0a8:101::1", False, True),  # 6to4 of 192.168.1.1
        ("::ffff:10.0.0.1", False, True),
        ("192.0.0.192", False, True),
        ("2002:a9fe:a9fe::1", True, True),
        ("64:ff9b::a9fe:a9fe", True, True),
        ("64:ff9b::7f00:1", True, False),  # loopback, wrapped or not, is allowed with ALLOW_PRIVATE
        ("64:ff9b::808:808", False, False),  # NAT64 of a public address: the normal way out of an IPv6-only network
        ("2002:808:808::1", False, False),
        ("::ffff:8.8.8.8", False, False),
        ("8.8.8.8", False, False),
        ("2606:4700:4700::1111", False, False),
    ],
)
def test_the_guard_judges_an_embedded_ipv4_address_as_itself(address: str, allow_private: bool, refused: bool) -> None:
    """An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) is refused when that IPv4 address would be."""
    verdict = address_verdict(ipaddress.ip_address(address), allow_private)
    assert (verdict is not None) == refused, verdict


async def test_a_patch_to_a_forbidden_address_is_refused_and_the_url_is_unchanged(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """PATCH url to a metadata or link-local address, plain or disguised: 422 forbidden_address; the old URL stays."""
    endpoint = await register(client, keys.a, "http://127.0.0.1:9/hooks")
    for address in ["169.254.169.254", "fe80::1", *DISGUISED]:
        r = await client.patch(f"/v1/webhooks/{endpoint['id']}", json={"url": url_of(address)}, headers=keys.a)
        assert_problem(r, 422, "forbidden_address")
    shown = (await client.get(f"/v1/webhooks/{endpoint['id']}", headers=keys.a)).json()
    assert shown["url"] == "http://127.0.0.1:9/hooks"


async def test_a_host_that_resolves_to_a_forbidden_address_after_registration_gets_failed_attempts(
    client: httpx.AsyncClient, keys: Keys, answers: dict[str, str]
) -> None:
    """A name that resolved to loopback at registration now resolves to metadata (plain or disguised): no request."""
    host = "hooks.example.test"
    answers[host] = "127.0.0.1"
    async with Receiver() as receiver:
        endpoint = await register(client, keys.a, f"http://{host}:{receiver.port}/hooks")
        receiver.secrets = [endpoint["secret"]]
        first = (await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)).json()
        assert first["status"] == "delivered" and receiver.requests == 1
        for address in ["169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "192.0.0.192"]:
            answers[host] = address
            attempt = (await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)).json()
            assert (attempt["status"], attempt["status_code"]) == ("retrying", None), (address, attempt)
            assert attempt["error"].startswith("forbidden_address") and host in attempt["error"], attempt
        assert receiver.requests == 1
        listed = (await attempts_of(client, keys.a, endpoint["id"], status="retrying"))["items"]
        assert len(listed) == 4
