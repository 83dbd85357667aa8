"""`masking serve` runs on its own embedded PostgreSQL, stops it on SIGTERM, and reuses its data."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.factories import served_call_completed, served_session
from tests.processes import ServeProcess, masking_env, run_cli


def postgres_processes_for(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and any(str(data_dir) in part for part in cmdline):
            found.append(proc)
    return found


def test_serve_on_the_embedded_database_stops_it_on_sigterm_and_reuses_data(tmp_path: Path) -> None:
    """From an empty folder: ready, a tenant made, SIGTERM leaves no PostgreSQL, the next start still has it."""
    env = masking_env()
    data = tmp_path / ".masking"
    with ServeProcess(env, cwd=tmp_path, log_path=tmp_path / "serve.log") as service:
        assert httpx.get(service.url + "/readyz").json() == {"status": "ok"}
        created = run_cli("tenant", "create", "acme", "--scope", "ops", env=env, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["api_key"]
        added = httpx.post(
            service.url + "/v1/dids", json={"number": "+918068200001"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert added.status_code == 201, added.text
        assert postgres_processes_for(data)
    assert service.proc is not None and service.proc.returncode == 0
    assert postgres_processes_for(data) == []
    log = (tmp_path / "serve.log").read_text()
    assert "serving" in log and "embedded PostgreSQL" in log and "simulator" in log

    with ServeProcess(env, cwd=tmp_path) as again:
        listed = httpx.get(again.url + "/v1/dids", headers={"Authorization": f"Bearer {key}"})
        assert [d["number"] for d in listed.json()["items"]] == ["+918068200001"]
    assert postgres_processes_for(data) == []


def test_tenant_create_prints_the_contract_json_and_stores_only_a_hash(dsn: str) -> None:
    """The CLI prints tenant, key and scopes once; the database holds a SHA-256 hash, never the key."""
    result = run_cli(
        "tenant", "create", "shop", "--scope", "sessions", "--scope", "ops", env=masking_env(MASKING_DATABASE_URL=dsn)
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"tenant", "api_key", "scopes"}
    assert printed["tenant"] == "shop" and printed["scopes"] == ["ops", "sessions"]
    assert printed["api_key"].startswith("msk_")
    dump = subprocess.run([sys.executable, "-c", DUMP, dsn], capture_output=True, text=True, check=True).stdout
    assert printed["api_key"] not in dump
    assert printed["api_key"][12:] not in dump
    assert hashlib.sha256(printed["api_key"].encode()).hexdigest() in dump


# Every row of every table as text, to look for secrets anywhere in the database.
DUMP = """
import asyncio, sys, asyncpg
async def main():
    c = await asyncpg.connect(sys.argv[1])
    for t in await c.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
        for r in await c.fetch(f'SELECT * FROM {t["tablename"]}'):
            print(t["tablename"], [v.hex() if isinstance(v, bytes) else v for v in r.values()])
asyncio.run(main())
"""


def test_a_bad_setting_stops_the_command_with_the_variable_named(tmp_path: Path) -> None:
    """A bad MASKING_* value: exit code 2 and a message naming the variable."""
    result = run_cli("migrate", env=masking_env(MASKING_COOLOFF_SECONDS="soon"), cwd=tmp_path)
    assert result.returncode == 2
    assert "MASKING_COOLOFF_SECONDS" in result.stderr


def test_the_readme_demo_places_a_simulated_call_end_to_end(tmp_path: Path, dsn: str) -> None:
    """`masking serve` on defaults runs the simulator in-process: a click completes within seconds."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    with (
        ServeProcess(env, cwd=tmp_path) as service,
        httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        session = served_session(http, ["+918068281234"], order="ORD-1042")
        served_call_completed(http, session)
        urls = json.loads(run_cli("provider-urls", "--base-url", "https://masking.example.com", env=env).stdout)
        assert urls["callback_url"].startswith("https://masking.example.com/v1/provider/thundersms/callback/")
        token = urls["callback_url"].rsplit("/", 1)[1]
        route = http.get(
            f"/v1/provider/thundersms/route/{token}", params={"did": "918068281234", "caller": "918765432109"}
        )
        assert route.json() == {"session_id": session["id"], "connect_to": "919876543210"}


def test_migrate_on_an_empty_folder_says_it_created_the_schema_and_then_that_nothing_was_left(tmp_path: Path) -> None:
    """`masking migrate` from nothing reports created: true; run again, created: false and nothing applied."""
    env = masking_env()
    first = run_cli("migrate", env=env, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    again = run_cli("migrate", env=env, cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    made, current = json.loads(first.stdout), json.loads(again.stdout)
    assert made["created"] is True and made["applied"] == []
    assert current["created"] is False and current["applied"] == []
    assert made["schema_version"] == current["schema_version"]
