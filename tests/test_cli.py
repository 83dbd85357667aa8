"""The command line: its help and version, listing tenants and their keys, revoking a key, expiring by tenant."""

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import httpx
import msgspec

from service.broker.tenants import revoke_key
from service.settings import PREFIX, Settings
from tests.processes import ServeProcess, masking_env, run_cli


def test_version_prints_the_package_version() -> None:
    """`masking --version` prints `masking X.Y.Z` and exits 0."""
    result = run_cli("--version", env=masking_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("masking ") and result.stdout.strip()[8:9].isdigit()


def test_help_lists_every_command() -> None:
    """`masking --help` names every command down to its action, with what it does."""
    out = run_cli("--help", env=masking_env()).stdout
    for command in (
        "serve",
        "migrate",
        "tenant create",
        "tenant list",
        "key revoke",
        "dids import",
        "sessions expire",
        "reports",
        "provider-urls",
    ):
        assert f"masking {command}" in out, f"`masking {command}` is missing from --help"


def test_serve_help_lists_the_variables_it_reads() -> None:
    """`masking serve --help` lists every MASKING_* variable with its default."""
    out = run_cli("serve", "--help", env=masking_env()).stdout
    for field in msgspec.structs.fields(Settings):
        assert PREFIX + field.name.upper() in out
    assert "MASKING_PORT (default 8000)" in " ".join(out.split())


def test_sessions_expire_without_a_tenant_is_refused(dsn: str) -> None:
    """Expiring an order's sessions names its tenant: without --tenant nothing is expired and the exit is 2."""
    result = run_cli("sessions", "expire", "--order-id", "ORD-1", env=masking_env(MASKING_DATABASE_URL=dsn))
    assert result.returncode == 2
    assert "--tenant" in result.stderr.strip().splitlines()[-1]


def test_tenant_list_shows_tenants_and_their_keys_but_never_a_key(dsn: str) -> None:
    """Each tenant is one JSON line with its keys' ids, prefixes, scopes and times; no key or hash is printed."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    made = [
        json.loads(run_cli("tenant", "create", name, "--scope", scope, env=env).stdout)
        for name, scope in [("acme", "ops"), ("acme", "sessions"), ("zeta", "sessions")]
    ]
    result = run_cli("tenant", "list", env=env)
    assert result.returncode == 0, result.stderr
    tenants = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["tenant"] for t in tenants] == ["acme", "zeta"]
    acme = tenants[0]
    assert [k["scopes"] for k in acme["keys"]] == [["ops"], ["sessions"]]
    assert set(acme["keys"][0]) == {"id", "prefix", "scopes", "created_at", "revoked_at"}
    assert acme["keys"][0]["prefix"] == made[0]["api_key"][:12]
    assert all(k["revoked_at"] is None for t in tenants for k in t["keys"])
    for key in made:
        assert key["api_key"] not in result.stdout


def test_a_revoked_key_gets_401_and_is_listed_as_revoked(tmp_path: Path, dsn: str) -> None:
    """`masking key revoke ID` stops a key a running service accepted."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    other = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    listed = json.loads(run_cli("tenant", "list", env=env).stdout)
    key_id = next(k["id"] for k in listed["keys"] if k["prefix"] == key[:12])
    auth = {"Authorization": f"Bearer {key}"}
    with ServeProcess(env, cwd=tmp_path) as service:
        assert httpx.get(service.url + "/v1/dids", headers=auth).status_code == 200
        revoked = run_cli("key", "revoke", str(key_id), env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["key_id"] == key_id
        deadline = time.monotonic() + 15
        while httpx.get(service.url + "/v1/dids", headers=auth).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.5)
        assert httpx.get(service.url + "/v1/dids", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    keys = json.loads(run_cli("tenant", "list", env=env).stdout)["keys"]
    assert [k["revoked_at"] is not None for k in keys] == [True, False]
    again = run_cli("key", "revoke", str(key_id), env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["revoked_at"] == json.loads(revoked.stdout)["revoked_at"]
    unknown = run_cli("key", "revoke", "999999", env=env)
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1


async def test_a_revoked_key_is_refused_by_every_worker_within_a_second(tmp_path: Path, dsn: str) -> None:
    """Revocation reaches both workers of `masking serve` within the principal cache's ttl of 1 s (it was 10 s)."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_WORKERS="2")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    with ServeProcess(env, cwd=tmp_path) as service:
        # No keep-alive: each request is a new connection, so both workers answer some of them.
        async with httpx.AsyncClient(base_url=service.url, limits=httpx.Limits(max_keepalive_connections=0)) as http:

            async def statuses() -> set[int]:
                return {(await http.get("/v1/sessions/x", headers=auth)).status_code for _ in range(20)}

            assert await statuses() == {404}  # each worker has the key in its cache just before the revocation
            conn = await asyncpg.connect(dsn)
            try:
                key_id = await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", key[:12])
                assert await revoke_key(conn, key_id) is not None
            finally:
                await conn.close()
            await asyncio.sleep(1.5)  # the ttl, and a little
            assert await statuses() == {401}
