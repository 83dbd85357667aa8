"""Hostile input: Schemathesis over the OpenAPI document, a tenant-isolation sweep, and abusive callbacks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.helpers import Keys, add_dids, assert_problem, session_body
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
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_LOG_LEVEL="warning")
    key_a = json.loads(run_cli("tenant", "create", "a", "--scope", "ops", env=env).stdout)["api_key"]
    key_b = json.loads(run_cli("tenant", "create", "b", "--scope", "ops", env=env).stdout)["api_key"]
    with ServeProcess(env) as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            a = {"Authorization": f"Bearer {key_a}"}
            b = {"Authorization": f"Bearer {key_b}"}
            assert (await http.post("/v1/dids", json={"number": "+918068281234"}, headers=a)).status_code == 201
            body = {"order_id": "A-1", "customer": "+919876543210", "agent": "+918765432109"}
            session = (await http.post("/v1/sessions", json=body, headers=a)).json()
            call = (await http.post(f"/v1/sessions/{session['id']}/calls", headers=a)).json()
            ids = {"session_id": session["id"], "call_id": call["id"], "number": "+918068281234"}
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
                    payload = (
                        {"status": "retired"} if "dids" in path else {"ttl_seconds": 60} if method == "patch" else {}
                    )
                    r = await http.request(method, url, headers=b, json=payload if method != "get" else None)
                    tried += 1
                    assert r.status_code == 404, (method, path, r.status_code, r.text)
            lists = ["/v1/sessions?order_id=A-1", "/v1/dids", "/v1/reports?matched=false"]
            for url in lists:
                assert (await http.get(url, headers=b)).json()["items"] == []
            expired = await http.post("/v1/sessions/expire", json={"order_id": "A-1"}, headers=b)
            assert expired.json() == {"expired": 0}
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
            await http.post("/v1/dids", json={"number": "+918068281234"}, headers=a)
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
    await add_dids(client, keys.a, ["+918068281234"])
    session = (await client.post("/v1/sessions", json=session_body(), headers=keys.a)).json()
    url = path.replace("{session}", session["id"])
    headers = {**keys.a, "content-type": "application/json"}
    body = assert_problem(await client.request(method, url, content=DEEP, headers=headers), 400, "invalid_request")
    assert "nested" in body["detail"]
    after = (await client.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()
    assert after["status"] == "active" and after["expires_at"] == session["expires_at"]
