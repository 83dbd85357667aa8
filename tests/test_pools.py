"""Pools as settings: listed with stats, read, replaced; their cool-off, TTL and max_calls shape new sessions."""

from datetime import datetime, timedelta

import asyncpg
import httpx

from tests.factories import app_client, close_session, create_session, open_session, pool
from tests.helpers import AGENT, CUSTOMER, FakeClock, Keys, add_dids, assert_problem, did_numbers


async def test_a_pool_exists_once_it_has_a_did_or_settings_and_a_tenant_sees_only_its_own(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """GET /v1/pools lists pools with DIDs and pools with only settings; another tenant's pool is a 404."""
    assert (await client.get("/v1/pools", headers=keys.a)).json() == {"items": []}
    await add_dids(client, keys.a, did_numbers(2))
    put = await client.put("/v1/pools/support", json={"fallback": {"flow": "220"}}, headers=keys.a)
    assert put.status_code == 200, put.text
    items = (await client.get("/v1/pools", headers=keys.a)).json()["items"]
    assert [p["name"] for p in items] == ["default", "support"]
    default, support = items
    assert default["stats"]["dids"] == 2 and default["fallback"] is None and default["headroom_alert"] == 2
    assert support["fallback"] == {"flow": "220"} and support["stats"]["dids"] == 0
    assert (await client.get("/v1/pools", headers=keys.b)).json() == {"items": []}
    assert_problem(await client.get("/v1/pools/support", headers=keys.b), 404, "not_found")
    assert_problem(await client.get("/v1/pools/nowhere", headers=keys.a), 404, "not_found")
    assert_problem(await client.get("/v1/pools", headers=Keys.auth(keys.a_sessions)), 403, "forbidden")


async def test_put_replaces_every_setting_and_validation_names_the_field(client: httpx.AsyncClient, keys: Keys) -> None:
    """A PUT returns the pool as stored; bad values answer 422 naming the offending field."""
    body = {
        "fallback": {"connect_to": "918068281234"},
        "cooloff_seconds": 600,
        "default_ttl_seconds": 3600,
        "default_max_calls": 1,
        "headroom_alert": 5,
    }
    pool = (await client.put("/v1/pools/default", json=body, headers=keys.a)).json()
    assert pool["fallback"] == {"connect_to": "+918068281234"}
    assert (pool["cooloff_seconds"], pool["default_ttl_seconds"], pool["default_max_calls"]) == (600, 3600, 1)
    assert pool["headroom_alert"] == 5
    assert (await client.get("/v1/pools/default", headers=keys.a)).json() == pool
    cleared = (await client.put("/v1/pools/default", json={}, headers=keys.a)).json()
    assert cleared["fallback"] is None and cleared["cooloff_seconds"] is None and cleared["headroom_alert"] == 2

    cases = [
        ({"cooloff_seconds": -1}, "cooloff_seconds"),
        ({"default_ttl_seconds": 5}, "default_ttl_seconds"),
        ({"default_max_calls": 0}, "default_max_calls"),
        ({"headroom_alert": "two"}, "headroom_alert"),
        ({"fallback": {"connect_to": "+91", "flow": "1"}}, "fallback"),
        ({"fallback": {}}, "fallback"),
        ({"fallback": {"nope": 1}}, "nope"),
        ({"colour": "red"}, "colour"),
    ]
    for bad, field in cases:
        problem = assert_problem(
            await client.put("/v1/pools/default", json=bad, headers=keys.a), 422, "invalid_request"
        )
        assert field in problem["detail"] or problem.get("field") == field, (bad, problem)
    problem = assert_problem(
        await client.put("/v1/pools/default", json={"fallback": {"connect_to": "12"}}, headers=keys.a),
        422,
        "invalid_phone_number",
    )
    assert problem["field"] == "fallback.connect_to"
    assert_problem(await client.put("/v1/pools/" + "p" * 65, json={}, headers=keys.a), 422, "invalid_request")


async def test_a_pool_default_max_calls_closes_each_session_after_its_first_completed_call(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """default_max_calls and default_ttl_seconds apply to sessions created without their own values."""
    await add_dids(client, keys.a, did_numbers(2))
    await client.put("/v1/pools/default", json={"default_max_calls": 1, "default_ttl_seconds": 600}, headers=keys.a)
    s = (await create_session(client, keys.a)).json()
    assert s["max_calls"] == 1
    life = datetime.fromisoformat(s["expires_at"]) - datetime.fromisoformat(s["created_at"])
    assert life == timedelta(seconds=600)
    own = (await create_session(client, keys.a, "o2", max_calls=3, ttl_seconds=60)).json()
    assert own["max_calls"] == 3
    assert datetime.fromisoformat(own["expires_at"]) - datetime.fromisoformat(own["created_at"]) == timedelta(
        seconds=60
    )


async def test_a_pool_cooloff_overrides_the_service_wide_one(
    client: httpx.AsyncClient, keys: Keys, clock: FakeClock
) -> None:
    """With the pool's cool-off at 60 s (service-wide 3600 s) the DID serves a new partner after a minute."""
    await add_dids(client, keys.a, did_numbers(1))
    await client.put("/v1/pools/default", json={"cooloff_seconds": 60}, headers=keys.a)
    await close_session(client, keys.a, await open_session(client, keys.a))
    assert_problem(await create_session(client, keys.a, "o2", agent="+918765432100"), 409, "pool_exhausted")
    clock.advance(61)
    await open_session(client, keys.a, order="o2", agent="+918765432100")
    assert CUSTOMER != AGENT


async def test_pools_with_settings_only_count_against_the_pool_cap_when_dids_are_added(dsn: str, keys: Keys) -> None:
    """With MASKING_MAX_POOLS_PER_TENANT=2 and two pools made by settings alone, a DID in a third pool is 409."""
    async with app_client(dsn, max_pools_per_tenant=2) as http:
        await pool(http, keys.a, "first", dids=0, cooloff_seconds=60)
        await pool(http, keys.a, "second", dids=0, cooloff_seconds=60)
        third = await http.post("/v1/dids", json={"number": did_numbers(1)[0], "pool": "third"}, headers=keys.a)
        assert_problem(third, 409, "too_many_pools")
        bulk = {"dids": [{"number": did_numbers(1, start=1)[0], "pool": "third"}]}
        assert_problem(await http.post("/v1/dids/bulk", json=bulk, headers=keys.a), 409, "too_many_pools")
        assert [p["name"] for p in (await http.get("/v1/pools", headers=keys.a)).json()["items"]] == ["first", "second"]
        # A pool the tenant holds (by settings) still takes DIDs.
        assert (
            await http.post("/v1/dids", json={"number": did_numbers(1)[0], "pool": "first"}, headers=keys.a)
        ).status_code == 201
