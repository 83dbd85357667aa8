"""The clear-text release's own data, upgraded by this one: every read the API offers answers the same afterwards."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import dsn_for
from tests.processes import ServeProcess, masking_env, run_cli
from tests.test_migrations import _fresh

REPO = Path(__file__).resolve().parents[1]
SEALING = "service/db/migrations/0015_sealed_numbers.sql"
CUSTOMERS = ["+919876500101", "+919876500102", "+919876500103"]
AGENTS = ["+919811100201", "+919811100202", "+919811100203"]
DIDS = [f"+9180682003{i:02d}" for i in range(10)]


def _release(into: Path) -> Path:
    """The last release before numbers were sealed, checked out from this repository's history into a folder."""
    try:
        added = subprocess.run(
            ["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--", SEALING],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        tar = subprocess.run(["git", "-C", str(REPO), "archive", f"{added[-1]}^"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError, IndexError):
        pytest.skip("the repository's history (git) is needed to run the clear-text release")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


async def _empty(server_dsn: str, name: str) -> None:
    await (await _fresh(server_dsn, name)).close()


def _get(url: str, path: str, key: str) -> Any:
    r = httpx.get(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, (path, r.text)
    return r.json()


def _reads(url: str, key: str, sessions: list[str], calls: list[str]) -> dict[str, Any]:
    """Every read of the data: each session, its calls, each call, lists and searches, the events and reports."""
    reads: dict[str, Any] = {}
    paths = [f"/v1/sessions/{s}" for s in sessions] + [f"/v1/sessions/{s}/calls" for s in sessions]
    paths += [f"/v1/calls/{c}" for c in calls]
    paths += ["/v1/sessions?limit=200", f"/v1/sessions?customer={CUSTOMERS[0].replace('+', '%2B')}"]
    paths += ["/v1/events?limit=500", "/v1/reports", "/v1/reports?matched=true"]
    for path in paths:
        reads[path] = _get(url, path, key)
    return reads


def _same(old: Any, new: Any, where: str) -> None:
    """Every value the old release answered is answered alike (fields the new release adds are allowed)."""
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        for k, v in old.items():
            if k in ("next_cursor", "cursor"):  # a position, not data
                continue
            assert k in new, f"{where}.{k} missing"
            _same(v, new[k], f"{where}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), f"{where}: {len(old)} items became {len(new)}"
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _same(a, b, f"{where}[{i}]")
    else:
        assert old == new, f"{where}: {old!r} became {new!r}"


def test_every_read_answers_the_same_after_upgrading_the_clear_text_release(server_dsn: str, tmp_path: Path) -> None:
    """The release before sealing serves sessions, calls, reports and events; this one upgrades its database and
    answers every read alike, finds the sessions by number, and replays a stored idempotent answer."""
    old_code = _release(tmp_path / "release")
    name = "release_" + uuid.uuid4().hex[:8]
    asyncio.run(_empty(server_dsn, name))
    dsn = dsn_for(server_dsn, name)
    old_env = masking_env(MASKING_DATABASE_URL=dsn, PYTHONPATH=str(old_code), MASKING_KEYS="")
    made = run_cli("tenant", "create", "acme", "--scope", "ops", "--scope", "sessions", env=old_env, cwd=old_code)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    sessions: list[str] = []
    calls: list[str] = []
    with ServeProcess(old_env, cwd=old_code, log_path=tmp_path / "old.log") as old:
        with httpx.Client(base_url=old.url, headers=auth, timeout=30) as http:
            assert http.post("/v1/dids/bulk", json={"dids": [{"number": d} for d in DIDS]}).status_code == 200
            for i, (customer, agent) in enumerate(zip(CUSTOMERS, AGENTS, strict=True)):
                headers = {"Idempotency-Key": "create-0"} if i == 0 else {}
                r = http.post(
                    "/v1/sessions", json={"order_id": f"U-{i}", "customer": customer, "agent": agent}, headers=headers
                )
                assert r.status_code == 201, r.text
                sessions.append(r.json()["id"])
            first_answer = http.post(
                "/v1/sessions",
                json={"order_id": "U-0", "customer": CUSTOMERS[0], "agent": AGENTS[0]},
                headers={"Idempotency-Key": "create-0"},
            )
            assert first_answer.status_code == 201
            for s in sessions[:2]:
                r = http.post(f"/v1/sessions/{s}/calls")
                assert r.status_code == 202, r.text
                calls.append(r.json()["id"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(http.get(f"/v1/calls/{c}").json()["status"] != "initiated" for c in calls):
                    break
                time.sleep(0.2)
            assert http.post(f"/v1/sessions/{sessions[1]}/close", json={"reason": "done"}).status_code == 200
        urls = run_cli("provider-urls", "--base-url", old.url, env=old_env, cwd=old_code)
        callback = json.loads(urls.stdout)["callback_url"]
        stray = {"bridge": DIDS[-1][1:], "from": CUSTOMERS[2][1:], "to": "919800099999", "status": "COMPLETED"}
        assert httpx.post(callback, content=json.dumps(stray).encode(), timeout=30).status_code == 200
        before = _reads(old.url, key, sessions, calls)
    assert before["/v1/reports"]["items"], "the release kept an unmatched report"
    assert any(e["type"].startswith("call.") for e in before["/v1/events?limit=500"]["items"])

    with ServeProcess(masking_env(MASKING_DATABASE_URL=dsn), log_path=tmp_path / "new.log") as new:
        after = _reads(new.url, key, sessions, calls)
        replay = httpx.post(
            new.url + "/v1/sessions",
            json={"order_id": "U-0", "customer": CUSTOMERS[0], "agent": AGENTS[0]},
            headers={**auth, "Idempotency-Key": "create-0"},
            timeout=30,
        )
    # The feed goes on: the new process's own sweeps may add events after the old ones.
    events = "/v1/events?limit=500"
    after[events]["items"] = after[events]["items"][: len(before[events]["items"])]
    for path, answer in before.items():
        _same(answer, after[path], path)
    assert replay.status_code == 201 and replay.json() == first_answer.json()
    assert [s["id"] for s in after[f"/v1/sessions?customer={CUSTOMERS[0].replace('+', '%2B')}"]["items"]] == [
        sessions[0]
    ]
