"""Every error is problem+json with a stable code and a sentence a person can act on."""

import importlib
import pkgutil

import asyncpg
import httpx
import pytest

import service
from service.api.problems import STATUS, problem_response
from service.broker import dids as dids_broker
from service.broker.errors import DomainError
from tests.factories import create_session, open_session
from tests.helpers import Keys, assert_problem

# The status CONTRACT.md gives each code it names (recording_unavailable: 404 for a call without one).
CONTRACT_STATUS = {
    "invalid_request": 422,
    "invalid_phone_number": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "pool_exhausted": 409,
    "session_not_active": 409,
    "call_in_progress": 409,
    "did_taken": 409,
    "did_in_use": 409,
    "provider_rejected": 502,
    "provider_unavailable": 503,
    "provider_timeout": 504,
    "rate_limited": 429,
    "no_session": 404,
    "reassign_conflict": 409,
    "link_expired": 410,
    "forbidden_address": 422,
    "database_unavailable": 503,
    "conflicting_repeat": 409,
    "recording_unavailable": 404,
    "too_many_webhooks": 409,
}


def domain_error_classes() -> list[type[DomainError]]:
    """Every DomainError subclass the service defines, in any of its modules."""
    for module in pkgutil.walk_packages(service.__path__, "service."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found, todo = [], [DomainError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.startswith("service.")]


async def test_a_missing_key_is_401(client: httpx.AsyncClient, keys: Keys) -> None:
    """No Authorization header: 401 unauthorized."""
    assert_problem(await client.get("/v1/sessions"), 401, "unauthorized")


async def test_an_unknown_key_is_401(client: httpx.AsyncClient, keys: Keys) -> None:
    """A made-up key, or a malformed header: 401 unauthorized."""
    assert_problem(await client.get("/v1/sessions", headers=Keys.auth("msk_notarealkey12345")), 401, "unauthorized")
    assert_problem(await client.get("/v1/sessions", headers={"Authorization": "Basic abc"}), 401, "unauthorized")


async def test_a_sessions_key_on_an_ops_route_is_403(client: httpx.AsyncClient, keys: Keys) -> None:
    """The sessions scope does not reach the DID pool, bulk expiry or stats."""
    headers = Keys.auth(keys.a_sessions)
    assert_problem(await client.get("/v1/dids", headers=headers), 403, "forbidden")
    assert_problem(await client.post("/v1/sessions/expire", json={"order_id": "x"}, headers=headers), 403, "forbidden")
    assert_problem(await client.get("/v1/stats", headers=headers), 403, "forbidden")
    assert (await client.get("/v1/sessions", headers=headers)).status_code == 200


async def test_an_unknown_route_or_id_is_404(client: httpx.AsyncClient, keys: Keys) -> None:
    """Unknown paths and unknown ids answer 404 not_found."""
    assert_problem(await client.get("/v1/nothing-here", headers=keys.a), 404, "not_found")
    assert_problem(await client.get("/v1/sessions/not-a-uuid", headers=keys.a), 404, "not_found")
    assert_problem(
        await client.get("/v1/sessions/00000000-0000-0000-0000-000000000000", headers=keys.a), 404, "not_found"
    )


async def test_malformed_json_is_400(client: httpx.AsyncClient, keys: Keys) -> None:
    """A body that is not JSON: 400 invalid_request, nothing created."""
    r = await client.post("/v1/sessions", content=b"{not json", headers={**keys.a, "content-type": "application/json"})
    assert_problem(r, 400, "invalid_request")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"order_id": 5, "customer": "+919870000000", "agent": "+919870000001"}, "order_id"),
        (
            {"order_id": "o", "customer": "+919870000000", "agent": "+919870000001", "ttl_seconds": "long"},
            "ttl_seconds",
        ),
        ({"order_id": "o", "customer": "+919870000000", "agent": "+919870000001", "ttl_seconds": 10}, "ttl_seconds"),
        ({"order_id": "", "customer": "+919870000000", "agent": "+919870000001"}, "order_id"),
        ({"customer": "+919870000000", "agent": "+919870000001"}, "order_id"),
    ],
)
async def test_wrong_types_are_422_naming_the_field(
    client: httpx.AsyncClient, keys: Keys, body: dict, field: str
) -> None:
    """A field of the wrong type or out of range: 422 invalid_request naming it."""
    problem = assert_problem(await client.post("/v1/sessions", json=body, headers=keys.a), 422, "invalid_request")
    assert field in problem["detail"]
    assert problem["errors"][0]["field"] == field


async def test_an_invalid_phone_number_is_422_naming_the_field(client: httpx.AsyncClient, keys: Keys) -> None:
    """A number phonenumbers rejects: 422 invalid_phone_number with the field."""
    body = {"order_id": "o", "customer": "+919870000000", "agent": "12345"}
    problem = assert_problem(await client.post("/v1/sessions", json=body, headers=keys.a), 422, "invalid_phone_number")
    assert problem["field"] == "agent"


async def test_a_body_over_64_kib_is_413(client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection) -> None:
    """A body over 64 KiB: 413, and nothing is created."""
    body = {"order_id": "o", "customer": "+919870000000", "agent": "+919870000001", "metadata": {"x": "a" * 70_000}}
    assert_problem(await client.post("/v1/sessions", json=body, headers=keys.a), 413, "payload_too_large")
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_a_wrong_method_is_405(client: httpx.AsyncClient, keys: Keys) -> None:
    """A route that exists with another method: 405 problem+json."""
    assert_problem(await client.delete("/v1/sessions", headers=keys.a), 405, "method_not_allowed")


async def test_health_and_openapi_answer(client: httpx.AsyncClient) -> None:
    """The health probes and the OpenAPI document need no key."""
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json() == {"status": "ok"}
    spec = (await client.get("/schema/openapi.json")).json()
    assert "/v1/sessions" in spec["paths"] and "/v1/dids" in spec["paths"]


async def test_error_bodies_never_echo_a_partys_number(client: httpx.AsyncClient, keys: Keys) -> None:
    """Refusals about a session name fields and rules, never the customer's or agent's number."""
    customer, agent = "+919876543210", "+918765432109"
    await open_session(client, keys.a, dids=1, order="o", customer=customer, agent=agent)
    refusals = [
        await create_session(client, keys.a, "o2", customer, "+918765432100"),
        await create_session(client, keys.a, "o", customer, customer),
        await create_session(client, keys.a, "o", customer, "+91876"),
        await client.post("/v1/sessions/expire", json={"customer": "+91987"}, headers=keys.a),
        await client.get("/v1/sessions", params={"customer": "98765"}, headers=keys.a),
    ]
    assert [r.status_code for r in refusals] == [409, 422, 422, 422, 422]
    for r in refusals:
        assert "9876543210" not in r.text and "8765432109" not in r.text and "8765432100" not in r.text


def test_every_domain_error_code_has_one_status_and_the_map_no_stale_code() -> None:
    """The code-to-status map covers exactly the codes the service's domain errors carry: none falls to a default."""
    codes = {cls.code for cls in domain_error_classes()}
    assert sorted(codes - set(STATUS)) == [], "a domain error code has no HTTP status in api/problems.STATUS"
    assert sorted(set(STATUS) - codes) == [], "api/problems.STATUS maps a code no domain error carries"


def test_every_code_the_contract_names_answers_the_contracts_status() -> None:
    """CONTRACT.md's error codes, including those no route raises yet, map to the status it gives them."""
    assert {code: STATUS.get(code) for code in CONTRACT_STATUS} == CONTRACT_STATUS


def test_an_unmapped_code_is_a_programming_error_not_a_silent_400() -> None:
    """A domain error whose code the map lacks fails loudly instead of answering 400."""

    class Stray(DomainError):
        code, title = "stray_code_for_this_test", "Stray"

    with pytest.raises(KeyError, match="stray_code_for_this_test"):
        problem_response(None, Stray("Nothing maps this."))  # type: ignore[arg-type]


async def test_database_unavailable_is_503_with_retry_after(
    client: httpx.AsyncClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost mid-request answers 503 database_unavailable with the Retry-After the contract promises."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionResetError("Connection reset by peer")

    monkeypatch.setattr(dids_broker, "list_dids", broken)
    response = await client.get("/v1/dids", headers=keys.a)
    assert_problem(response, 503, "database_unavailable")
    assert int(response.headers["retry-after"]) >= 1
