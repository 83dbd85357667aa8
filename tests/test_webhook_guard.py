"""The SSRF guard in production mode (private addresses not allowed): carrier-grade NAT, every IPv6 form that
carries an IPv4 address, and site-local addresses are refused at registration and at each attempt."""

from __future__ import annotations

import ipaddress

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
# Each reaches a loopback, private or carrier-grade NAT address through an IPv6 form that carries it.
PRIVATE_IN_DISGUISE = [
    "::127.0.0.1",  # IPv4-compatible (deprecated) loopback
    "::7f00:1",  # the same, written in hex
    "::10.0.0.1",  # IPv4-compatible private
    "::ffff:0:7f00:1",  # SIIT IPv4-translated loopback (RFC 2765)
    "::ffff:0:a00:1",  # SIIT IPv4-translated 10.0.0.1
    "::ffff:0:6440:1",  # SIIT IPv4-translated carrier-grade NAT
    "64:ff9b:1::7f00:1",  # NAT64's local-use prefix (RFC 8215): a private network's translator
]
# Refused even with MASKING_WEBHOOK_ALLOW_PRIVATE: site-local (deprecated, like link-local) and metadata or
# link-local addresses inside the IPv6 forms above.
ALWAYS_REFUSED = [
    "fec0::1",
    "fec0::a9fe:a9fe",
    "feff:ffff::1",  # the top of fec0::/10
    "::169.254.169.254",  # IPv4-compatible metadata
    "::ffff:0:a9fe:a9fe",  # SIIT-translated metadata
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo whose client is 169.254.169.254 (bits inverted)
]


def url_of(address: str, port: int = 80) -> str:
    ip = ipaddress.ip_address(address)
    return f"http://[{ip}]:{port}/hooks" if ip.version == 6 else f"http://{ip}:{port}/hooks"


@pytest.fixture
def settings(dsn: str) -> Settings:
    """Production's guard (no private addresses), with plain http allowed so that a loopback test can be set up."""
    return make_settings(dsn, webhook_allow_http=True, webhook_allow_private=False, webhook_timeout_seconds=2)


@pytest.mark.parametrize("address", CARRIER_GRADE_NAT + PRIVATE_IN_DISGUISE + ALWAYS_REFUSED)
def test_the_guard_refuses_carrier_grade_nat_ipv4_in_ipv6_and_site_local_in_production(address: str) -> None:
    """Without ALLOW_PRIVATE, each of these addresses has a verdict against it."""
    assert address_verdict(ipaddress.ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize("address", CARRIER_GRADE_NAT + PRIVATE_IN_DISGUISE)
def test_the_same_private_addresses_are_allowed_with_allow_private(address: str) -> None:
    """ALLOW_PRIVATE (local development) lets carrier-grade NAT and wrapped loopback or private addresses through."""
    assert address_verdict(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_site_local_and_wrapped_metadata_stay_refused_with_allow_private(address: str) -> None:
    """Site-local and wrapped link-local addresses are refused whatever the settings."""
    assert address_verdict(ipaddress.ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize(
    "address", ["100.63.255.255", "100.128.0.0", "::ffff:0:808:808", "::8.8.8.8", "2001:db9::1", "::1"]
)
def test_addresses_next_to_the_refused_ranges_are_judged_on_their_own(address: str) -> None:
    """Public neighbours of carrier-grade NAT and public IPv4 inside IPv6 pass; ::1 stays plain loopback."""
    allowed = address_verdict(ipaddress.ip_address(address), allow_private=False) is None
    assert allowed == (address != "::1")
    assert address_verdict(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", CARRIER_GRADE_NAT + PRIVATE_IN_DISGUISE + ALWAYS_REFUSED)
async def test_a_registration_to_such_an_address_answers_422_forbidden_address(
    client: httpx.AsyncClient, keys: Keys, address: str
) -> None:
    """POST /v1/webhooks with the address as the URL's host: 422 forbidden_address, nothing stored."""
    r = await client.post("/v1/webhooks", json={"url": url_of(address), "events": ["*"]}, headers=keys.a)
    assert_problem(r, 422, "forbidden_address")
    assert (await client.get("/v1/webhooks", headers=keys.a)).json()["items"] == []


async def test_a_name_that_comes_to_resolve_to_carrier_grade_nat_or_a_wrapped_private_address_gets_no_request(
    client: httpx.AsyncClient, keys: Keys, answers: dict[str, str]
) -> None:
    """A name that resolved to a public address at registration, later to 100.64.x.x or a disguise: failed attempts."""
    host = "hooks.example.test"
    answers[host] = "8.8.8.8"
    async with Receiver() as receiver:
        endpoint = (
            await client.post(
                "/v1/webhooks", json={"url": f"http://{host}:{receiver.port}/hooks", "events": ["*"]}, headers=keys.a
            )
        ).json()
        for address in ["100.64.0.1", "::ffff:0:7f00:1", "::127.0.0.1", "fec0::1"]:
            answers[host] = address
            attempt = (await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)).json()
            assert (attempt["status"], attempt["status_code"]) == ("retrying", None), (address, attempt)
            assert attempt["error"].startswith("forbidden_address") and host in attempt["error"], attempt
        assert receiver.requests == 0
