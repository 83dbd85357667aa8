"""Callers without a session: the pool's fallback answers (no_session or session_ended), else 404 no_session."""

import httpx
import pytest

from tests.factories import create_session
from tests.helpers import AGENT, CUSTOMER, ROUTE_TOKEN, FakeClock, Keys, add_dids, assert_problem, did_numbers, route


@pytest.fixture
def settings(dsn: str):  # type: ignore[no-untyped-def]
    from tests.helpers import make_settings

    return make_settings(dsn, callback_token=ROUTE_TOKEN)


def fallback_count(text: str, reason: str, fallback: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'masking_route_without_session_total{{fallback="{fallback}",reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_without_a_fallback_a_caller_with_no_session_gets_404(client: httpx.AsyncClient, keys: Keys) -> None:
    """No fallback set: 404 no_session, as before; a party of a live session still reaches the other party."""
    did = did_numbers(1)[0]
    await add_dids(client, keys.a, [did])
    s = (await create_session(client, keys.a)).json()
    ok = (await route(client, did, CUSTOMER)).json()
    assert ok == {"session_id": s["id"], "connect_to": AGENT.lstrip("+")}
    before = fallback_count((await client.get("/metrics")).text, "no_session", "no")
    assert_problem(await route(client, did, "+919999999999"), 404, "no_session")
    assert fallback_count((await client.get("/metrics")).text, "no_session", "no") == before + 1


async def test_a_stranger_gets_the_pool_fallback_with_reason_no_session(client: httpx.AsyncClient, keys: Keys) -> None:
    """A caller who never had a session on the DID is sent to the pool's support line."""
    did = did_numbers(1)[0]
    await add_dids(client, keys.a, [did])
    await client.put("/v1/pools/default", json={"fallback": {"connect_to": "+918068200000"}}, headers=keys.a)
    answer = await route(client, did, "+919999999999")
    assert answer.status_code == 200
    assert answer.json() == {"session_id": None, "connect_to": "918068200000", "flow": None, "reason": "no_session"}
    assert fallback_count((await client.get("/metrics")).text, "no_session", "yes") >= 1


async def test_a_caller_whose_session_ended_within_the_cooloff_hears_session_ended(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock
) -> None:
    """After the order closes, the customer calling back is told session_ended, until the pool's cool-off passes."""
    did = did_numbers(1)[0]
    await add_dids(client, keys.a, [did])
    await client.put("/v1/pools/default", json={"fallback": {"flow": "220"}, "cooloff_seconds": 600}, headers=keys.a)
    s = (await create_session(client, keys.a)).json()
    await client.post(f"/v1/sessions/{s['id']}/close", headers=keys.a)
    clock.advance(30)
    answer = (await route(client, did, CUSTOMER)).json()
    assert answer == {"session_id": None, "connect_to": None, "flow": "220", "reason": "session_ended"}
    clock.advance(600)
    assert (await route(client, did, CUSTOMER)).json()["reason"] == "no_session"
    assert fallback_count((await client.get("/metrics")).text, "session_ended", "yes") >= 1


async def test_an_expired_session_counts_as_ended_and_the_fallback_is_per_pool(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock
) -> None:
    """A session past its TTL ends at its expiry; a DID of a pool without a fallback still answers 404."""
    vip, plain = did_numbers(2)
    await add_dids(client, keys.a, [vip], pool="vip")
    await add_dids(client, keys.a, [plain])
    await client.put("/v1/pools/vip", json={"fallback": {"connect_to": "+918068200000"}}, headers=keys.a)
    await create_session(client, keys.a, pool="vip", ttl_seconds=60)
    clock.advance(61)
    assert (await route(client, vip, AGENT)).json()["reason"] == "session_ended"
    problem = assert_problem(await route(client, plain, AGENT), 404, "no_session")
    assert problem["reason"] == "no_session"
