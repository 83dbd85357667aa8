"""The SSRF guard in production mode (private addresses not allowed): carrier-grade NAT is refused at registration
and at each attempt."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.broker.webhooks.guard import address_verdict
from service.settings import Settings
from tests.helpers import Keys, assert_problem, make_settings
from tests.receiver import Receiver

# Carrier-grade NAT (RFC 6598): a provider's shared network, as private as 10.0.0.0/8 to a webhook.
CARRIER_GRADE_NAT = [
    "100.64.0.1",
    "100.127.255.254",  # its last host
    "::ffff:100.64.0.1",  # IPv4-mapped
    "64:ff9b::6440:1",  # through NAT64
]


def url_of(address: str, port: int = 80) -> str:
    ip = ipaddress.ip_address(address)
    return f"http://[{ip}]:{port}/hooks" if ip.version == 6 else f"http://{ip}:{port}/hooks"


@pytest.fixture
def settings(dsn: str) -> Settings:
    """Production's guard (no private addresses), with plain http allowed so that a loopback test can be set up."""
    return make_settings(dsn, webhook_allow_http=True, webhook_allow_private=False, webhook_timeout_seconds=2)


@pytest.mark.parametrize("address", CARRIER_GRADE_NAT)
def test_the_guard_refuses_carrier_grade_nat_in_production(address: str) -> None:
    """Without ALLOW_PRIVATE, each of these addresses has a verdict against it."""
    assert address_verdict(ipaddress.ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize("address", CARRIER_GRADE_NAT)
def test_the_same_private_addresses_are_allowed_with_allow_private(address: str) -> None:
    """ALLOW_PRIVATE (local development) lets carrier-grade NAT through."""
    assert address_verdict(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", ["100.63.255.255", "100.128.0.0", "::1"])
def test_addresses_next_to_the_refused_ranges_are_judged_on_their_own(address: str) -> None:
    """Public neighbours of carrier-grade NAT pass; ::1 stays plain loopback."""
    allowed = address_verdict(ipaddress.ip_address(address), allow_private=False) is None
    assert allowed == (address != "::1")
    assert address_verdict(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", CARRIER_GRADE_NAT)
async def test_a_registration_to_such_an_address_answers_422_forbidden_address(
    client: httpx.AsyncClient, keys: Keys, address: str
) -> None:
    """POST /v1/webhooks with the address as the URL's host: 422 forbidden_address, nothing stored."""
    r = await client.post("/v1/webhooks", json={"url": url_of(address), "events": ["*"]}, headers=keys.a)
    assert_problem(r, 422, "forbidden_address")
    assert (await client.get("/v1/webhooks", headers=keys.a)).json()["items"] == []


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Names the service resolves to the addresses the test sets (in-process only: the loop's getaddrinfo)."""
    table: dict[str, str] = {}
    real = socket.getaddrinfo

    def resolve(name: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        if name not in table:
            return real(name, port, family, type, proto, flags)
        ip = ipaddress.ip_address(table[name])
        if ip.version == 6:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(ip), port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(ip), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    yield table


async def test_a_name_that_comes_to_resolve_to_carrier_grade_nat_gets_no_request(
    client: httpx.AsyncClient, keys: Keys, answers: dict[str, str]
) -> None:
    """A name that resolved to a public address at registration, later to 100.64.x.x: failed attempts, no request."""
    host = "hooks.example.test"
    answers[host] = "8.8.8.8"
    async with Receiver() as receiver:
        endpoint = (
            await client.post(
                "/v1/webhooks", json={"url": f"http://{host}:{receiver.port}/hooks", "events": ["*"]}, headers=keys.a
            )
        ).json()
        for address in ["100.64.0.1", "100.100.0.1", "::ffff:100.64.0.1"]:
            answers[host] = address
            attempt = (await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)).json()
            assert (attempt["status"], attempt["status_code"]) == ("retrying", None), (address, attempt)
            assert attempt["error"].startswith("forbidden_address") and host in attempt["error"], attempt
        assert receiver.requests == 0
