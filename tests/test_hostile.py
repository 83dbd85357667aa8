"""Hostile input: Schemathesis over the OpenAPI document, a tenant-isolation sweep, and abusive callbacks."""

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app, request_context
from tests.factories import open_session, place_call, pool
from tests.helpers import FakeClock, Keys, add_dids, assert_problem, did_numbers, make_settings
from tests.processes import ServeProcess, masking_env, run_cli

# positive_data_acceptance: a schema-valid body can still be refused (phone numbers that phonenumbers
# rejects, a session that has ended); allow_header_conformance: Litestar answers OPTIONS itself.
EXCLUDED_CHECKS = "positive_data_acceptance,allow_header_conformance"


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(tmp_path: Path, dsn: str) -> None:
    """Every operation, fuzzed from the service's own OpenAPI document: the default checks all pass."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_LOG_LEVEL="warning")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    examples = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25")
    with ServeProcess(env, log_path=tmp_path / "serve.log") as service:
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{service.url}/schema/openapi.json",
             "-H", f"Authorization: Bearer {key}", "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
             "-n", examples, "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    summary = result.stdout[-4000:]
    print(summary)
    assert result.returncode == 0, summary
    assert "unhandled_error" not in (tmp_path / "serve.log").read_text()


async def test_tenant_b_reaches_none_of_tenant_as_resources_on_any_route(dsn: str, db: asyncpg.Connection) -> None:
    """Every route of the OpenAPI document with an id in its path, given tenant A's ids and B's key: no 2xx."""
    env = masking_env(
        MASKING_DATABASE_URL=dsn,
        MASKING_LOG_LEVEL="warning",
        MASKING_WEBHOOK_ALLOW_HTTP="true",
        MASKING_WEBHOOK_ALLOW_PRIVATE="true",
    )
    key_a = json.loads(run_cli("tenant", "create", "a", "--scope", "ops", env=env).stdout)["api_key"]
    key_b = json.loads(run_cli("tenant", "create", "b", "--scope", "ops", env=env).stdout)["api_key"]
    with ServeProcess(env) as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            a = {"Authorization": f"Bearer {key_a}"}
            b = {"Authorization": f"Bearer {key_b}"}
            session = await open_session(http, a, dids=["+918068281234"], order="A-1")
            call = await place_call(http, a, session)
            hook = {"url": "http://127.0.0.1:9/hooks", "events": ["*"]}
            webhook = (await http.post("/v1/webhooks", json=hook, headers=a)).json()
            event = (await http.get("/v1/events", headers=a)).json()["items"][0]
            ids = {
                "session_id": session["id"],
                "call_id": call["id"],
                "number": "+918068281234",
                "webhook_id": webhook["id"],
                "event_id": event["id"],
                "name": "default",
            }
            spec = (await http.get("/schema/openapi.json")).json()
            tried = 0
            for path, operations in spec["paths"].items():
                names = re.findall(r"{(\w+)}", path)
                if not names or "token" in names:
                    continue
                url = path
                for name in names:
                    url = url.replace("{" + name + "}", ids[name])
                for method in operations:
                    if method not in ("get", "post", "patch", "put", "delete"):
                        continue
                    if path == "/v1/pools/{name}" and method == "put":
                        continue  # pool names are per tenant: B's PUT makes B's own pool (A's unchanged, below)
                    payload = (
                        {"status": "retired"}
                        if "dids" in path
                        else {"status": "disabled"}
                        if "webhooks" in path and method == "patch"
                        else {"ttl_seconds": 60}
                        if method == "patch"
                        else {}
                    )
                    r = await http.request(method, url, headers=b, json=payload if method != "get" else None)
                    tried += 1
                    assert r.status_code == 404, (method, path, r.status_code, r.text)
            lists = ["/v1/sessions?order_id=A-1", "/v1/dids", "/v1/reports?matched=false", "/v1/events", "/v1/webhooks"]
            for url in lists:
                assert (await http.get(url, headers=b)).json()["items"] == []
            expired = await http.post("/v1/sessions/expire", json={"order_id": "A-1"}, headers=b)
            assert expired.json() == {"expired": 0}
            assert (await http.get("/v1/pools", headers=b)).json()["items"] == []
            await http.put("/v1/pools/default", json={"fallback": {"flow": "9"}}, headers=b)
            assert (await http.get("/v1/pools/default", headers=a)).json()["fallback"] is None
            still = await http.get(f"/v1/sessions/{session['id']}", headers=a)
            assert still.json()["status"] == "active"
    print(f"\n{tried} id-bearing operations tried with the other tenant's key: 0 answered 2xx")
    assert tried >= 7


async def test_abusive_callbacks_change_nothing_they_should_not(
    tmp_path: Path, dsn: str, db: asyncpg.Connection
) -> None:
    """Bad tokens, wrong methods, huge bodies, deep nesting, invalid UTF-8, another tenant's DID: no 5xx."""
    token = "hostile-callback-token-0123456789"
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN=token)
    key_a = json.loads(run_cli("tenant", "create", "a", "--scope", "ops", env=env).stdout)["api_key"]
    key_b = json.loads(run_cli("tenant", "create", "b", "--scope", "ops", env=env).stdout)["api_key"]
    url = f"/v1/provider/thundersms/callback/{token}"
    with ServeProcess(env, log_path=tmp_path / "serve.log") as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            a = {"Authorization": f"Bearer {key_a}"}
            await pool(http, a, dids=["+918068281234"])
            answers = [
                await http.post("/v1/provider/thundersms/callback/" + "x" * 5000, content=b"{}"),
                await http.post("/v1/provider/thundersms/callback/", content=b"{}"),
                await http.put(url, content=b"{}"),
                await http.delete(url),
                await http.post(url, content=b"{" * 100_000),
                await http.post(url, content=b"[" * 30_000 + b"]" * 30_000),
                await http.post(url, content=b'{"bridge": "\xff\xfe", "from": 1, "to": 2}'),
                await http.post(url, content=json.dumps({"bridge": 918068281234, "from": "\u0000", "to": 1})),
                await http.post(url, content=json.dumps(
                    {"bridge": 918068281234, "from": 918765432109, "to": 919876543210, "billing": "9" * 400})),
            ]  # fmt: skip
            statuses = [r.status_code for r in answers]
            assert all(s < 500 for s in statuses), statuses
            assert statuses[:4] == [404, 404, 405, 405]
            assert statuses[4] == 413
            assert statuses[5:] == [200, 200, 200, 200]
            # a report on tenant A's DID is listed to A only, and touched no call
            b_sees = (await http.get("/v1/reports", headers={"Authorization": f"Bearer {key_b}"})).json()["items"]
            assert b_sees == []
    assert await db.fetchval("SELECT count(*) FROM calls") == 0
    assert await db.fetchval("SELECT count(*) FROM provider_reports") == 4
    assert "unhandled_error" not in (tmp_path / "serve.log").read_text()


DEEP = b"[" * 1000 + b"]" * 1000
JSON_ROUTES = [
    ("POST", "/v1/sessions"),
    ("POST", "/v1/dids"),
    ("POST", "/v1/dids/bulk"),
    ("PATCH", "/v1/dids/+918068281234"),
    ("POST", "/v1/sessions/{session}/calls"),
    ("PATCH", "/v1/sessions/{session}"),
    ("POST", "/v1/sessions/{session}/close"),
    ("POST", "/v1/sessions/expire"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_deeply_nested_json_is_400_on_every_json_route(
    client: httpx.AsyncClient, keys: Keys, method: str, path: str
) -> None:
    """A 2 KB body of 1,000 nested arrays answers 400 invalid_request, never 500, and changes nothing."""
    session = await open_session(client, keys.a, dids=["+918068281234"])
    url = path.replace("{session}", session["id"])
    headers = {**keys.a, "content-type": "application/json"}
    body = assert_problem(await client.request(method, url, content=DEEP, headers=headers), 400, "invalid_request")
    assert "nested" in body["detail"]
    after = (await client.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()
    assert after["status"] == "active" and after["expires_at"] == session["expires_at"]


@asynccontextmanager
async def _app(dsn: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-loop with these settings, no sweeper."""
    app = create_app(make_settings(dsn, **overrides), dsn=dsn, clock=FakeClock(), background=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=request_context(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://masking.test") as http:
            yield http


async def test_ten_thousand_pools_in_one_bulk_are_refused_by_the_default_pool_cap(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """A bulk of 10,000 DIDs each in its own pool answers 409 too_many_pools and adds nothing."""
    numbers = did_numbers(10_000)
    dids = [{"number": n, "pool": f"p{i}"} for i, n in enumerate(numbers)]
    r = await client.post("/v1/dids/bulk", json={"dids": dids}, headers=keys.a)
    body = assert_problem(r, 409, "too_many_pools")
    assert body["max_pools"] == 100 and "MASKING_MAX_POOLS_PER_TENANT" in body["detail"]
    assert await db.fetchval("SELECT count(*) FROM dids") == 0


async def test_the_pool_cap_holds_on_every_way_to_make_a_pool(dsn: str, keys: Keys, db: asyncpg.Connection) -> None:
    """With MASKING_MAX_POOLS_PER_TENANT=3: a 4th pool by add, bulk or move is 409; existing pools still take DIDs."""
    async with _app(dsn, max_pools_per_tenant=3) as http:
        await add_dids(http, keys.a, did_numbers(3), pool="a")
        await add_dids(http, keys.a, did_numbers(2, start=3), pool="b")
        assert (
            await http.post("/v1/dids", json={"number": did_numbers(1, 5)[0], "pool": "c"}, headers=keys.a)
        ).status_code == 201
        four = {"number": did_numbers(1, 6)[0], "pool": "d"}
        assert_problem(await http.post("/v1/dids", json=four, headers=keys.a), 409, "too_many_pools")
        assert_problem(await http.post("/v1/dids/bulk", json={"dids": [four]}, headers=keys.a), 409, "too_many_pools")
        moved = await http.patch(f"/v1/dids/{did_numbers(1)[0]}", json={"pool": "d"}, headers=keys.a)
        assert_problem(moved, 409, "too_many_pools")
        await add_dids(http, keys.a, did_numbers(1, 7), pool="b")
        await add_dids(http, keys.b, did_numbers(1, 8), pool="d")  # another tenant has its own cap
        pools = await db.fetch(
            "SELECT DISTINCT pool FROM dids d JOIN tenants t ON t.id = d.tenant_id WHERE t.name = 'tenant-a'"
        )
        assert sorted(r["pool"] for r in pools) == ["a", "b", "c"]


async def test_metrics_carry_at_most_the_capped_pool_series(dsn: str, keys: Keys) -> None:
    """60 pools with MASKING_METRICS_POOL_SERIES=5: /metrics has 5 named pools and one `_other` summing the rest."""
    async with _app(dsn, metrics_pool_series=5) as http:
        numbers = did_numbers(60)
        dids = [{"number": n, "pool": f"p{i:02d}"} for i, n in enumerate(numbers)]
        assert (await http.post("/v1/dids/bulk", json={"dids": dids}, headers=keys.a)).status_code == 200
        text = (await http.get("/metrics")).text
        series = [line for line in text.splitlines() if line.startswith("masking_pool_dids{")]
        pools = {re.search(r'pool="([^"]+)"', line).group(1) for line in series}  # type: ignore[union-attr]
        assert pools == {"p00", "p01", "p02", "p03", "p04", "_other"}
        assert 'masking_pool_dids{pool="_other",status="all",tenant="tenant-a"} 55.0' in text
        assert len(text) < 20_000


async def test_dids_come_a_page_at_a_time_with_a_cursor(client: httpx.AsyncClient, keys: Keys) -> None:
    """GET /v1/dids pages by limit and next_cursor: 250 DIDs in pages of 100 by default, each once, in order."""
    numbers = did_numbers(250)
    await add_dids(client, keys.a, numbers[:150], pool="a")
    await add_dids(client, keys.a, numbers[150:], pool="b")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"cursor": cursor} if cursor else {}
        page = (await client.get("/v1/dids", params=params, headers=keys.a)).json()
        pages += 1
        assert len(page["items"]) <= 100
        seen += [d["number"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == numbers
    small = (await client.get("/v1/dids", params={"limit": 7, "pool": "b"}, headers=keys.a)).json()
    assert [d["number"] for d in small["items"]] == numbers[150:157] and small["next_cursor"]
    assert_problem(await client.get("/v1/dids", params={"cursor": "nonsense"}, headers=keys.a), 422, "invalid_request")
    assert (await client.get("/v1/dids", params={"limit": 1001}, headers=keys.a)).status_code in (400, 422)


async def test_stats_come_a_page_of_pools_at_a_time(client: httpx.AsyncClient, keys: Keys) -> None:
    """GET /v1/stats?limit=2 pages the pools by name with next_cursor; every pool once."""
    for i, name in enumerate(["e", "a", "d", "b", "c"]):
        await add_dids(client, keys.a, did_numbers(1, start=i), pool=name)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/stats", params=params, headers=keys.a)).json()
        assert len(page["pools"]) <= 2
        seen += [p["pool"] for p in page["pools"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a", "b", "c", "d", "e"]
    everything = (await client.get("/v1/stats", headers=keys.a)).json()
    assert [p["pool"] for p in everything["pools"]] == seen and everything["next_cursor"] is None
