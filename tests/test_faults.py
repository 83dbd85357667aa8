"""Faults on purpose: PostgreSQL going away under load, and the service SIGKILLed mid-load, repeatedly."""

import asyncio
import json
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.embedded import EmbeddedPostgres
from tests.helpers import CROSSED_LINES, dsn_for, wait_for
from tests.processes import ServeProcess, masking_env, run_cli

OUTAGE_SECONDS = float(os.environ.get("MASKING_TEST_OUTAGE_SECONDS", "20"))
TOKEN = "faults-callback-token-0123456789"


async def _fresh_database(base: str) -> str:
    admin = await asyncpg.connect(base)
    try:
        await admin.execute("CREATE DATABASE faults")
    finally:
        await admin.close()
    return dsn_for(base, "faults")


async def test_postgres_down_fails_fast_with_503_and_recovers_without_restart(tmp_path: Path) -> None:
    """With the database gone: 503 problem+json within seconds, /readyz 503, callbacks not 200; back within 10 s."""
    root = Path(tempfile.mkdtemp(prefix="masking-pgdown-"))
    server = EmbeddedPostgres(root)
    dsn = await _fresh_database(server.start())
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN=TOKEN, MASKING_LOG_LEVEL="warning")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    service = ServeProcess(env, log_path=tmp_path / "serve.log").start()
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            await http.post("/v1/dids", json={"number": "+918068281234"}, headers=auth)
            server.stop()
            outage_started = time.monotonic()
            during: list[tuple[int, float, str]] = []
            while time.monotonic() - outage_started < OUTAGE_SECONDS:
                for method, url, body in (
                    ("POST", "/v1/sessions", {"order_id": "o", "customer": "+919876543210", "agent": "+918765432109"}),
                    ("GET", "/v1/sessions", None),
                    ("POST", f"/v1/provider/thundersms/callback/{TOKEN}", {"bridge": 1, "from": 2, "to": 3}),
                    ("GET", "/readyz", None),
                ):
                    started = time.monotonic()
                    r = await http.request(method, url, json=body, headers=auth)
                    during.append((r.status_code, time.monotonic() - started, r.headers.get("content-type", "")))
                await asyncio.sleep(0.2)
            statuses = Counter(s for s, _, _ in during)
            slowest = max(t for _, t, _ in during)
            print(f"\nduring a {OUTAGE_SECONDS:.0f}s outage: {dict(statuses)}, slowest answer {slowest:.2f}s")
            assert set(statuses) == {503}, statuses
            assert slowest < 5
            assert all(ct.startswith(("application/problem+json", "application/json")) for _, _, ct in during)
            server = EmbeddedPostgres(root)
            server.start()
            back = time.monotonic()

            async def recovered() -> bool:
                r = await http.get("/readyz")
                s = await http.get("/v1/sessions", headers=auth)
                return r.status_code == 200 and s.status_code == 200

            await wait_for(recovered, within=10, interval=0.1)
            print(f"recovered {time.monotonic() - back:.2f}s after the database came back")
            r = await http.post("/v1/sessions", json={"order_id": "o", "customer": "+919876543210",
                                                      "agent": "+918765432109"}, headers=auth)  # fmt: skip
            assert r.status_code == 201
        assert "unhandled_error" not in (tmp_path / "serve.log").read_text()
    finally:
        service.stop()
        server.stop()


@pytest.mark.slow
async def test_killing_the_service_five_times_under_load_loses_nothing(dsn: str, db: asyncpg.Connection) -> None:
    """Creates, clicks and reports run while the service is SIGKILLed five times; every promise is counted."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN=TOKEN, MASKING_LOG_LEVEL="warning",
                      MASKING_CALL_REPORT_TIMEOUT_SECONDS="5", MASKING_SWEEP_INTERVAL_SECONDS="0.5")  # fmt: skip
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    service = ServeProcess(env).start()
    acked_reports: set[int] = set()
    created: set[str] = set()
    stop = asyncio.Event()

    async def load(http: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                body = {
                    "order_id": f"w{worker}-{n}",
                    "customer": f"+91987{worker:02d}{n:05d}",
                    "agent": "+918760000000",
                }
                r = await http.post(service.url + "/v1/sessions", json=body, headers=auth)
                if r.status_code == 201:
                    created.add(r.json()["id"])
                    await http.post(f"{service.url}/v1/sessions/{r.json()['id']}/calls", headers=auth)
                report = worker * 100_000 + n
                r = await http.post(f"{service.url}/v1/provider/thundersms/callback/{TOKEN}",
                                    content=json.dumps({"bridge": 1, "from": 2, "to": 3, "n": report}))  # fmt: skip
                if r.status_code == 200:
                    acked_reports.add(report)
            except httpx.HTTPError:
                await asyncio.sleep(0.05)

    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await http.post(service.url + "/v1/dids/bulk", json={"dids": [{"number": f"+9180682{i:05d}"} for i in range(60)]},
                            headers=auth)  # fmt: skip
            workers = [asyncio.create_task(load(http, w)) for w in range(8)]
            for _ in range(5):
                await asyncio.sleep(2)
                service.stop(signal.SIGKILL)
                await asyncio.to_thread(service.start)
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*workers)

            async def settled() -> bool:
                return await db.fetchval("SELECT count(*) FROM calls WHERE in_flight") == 0

            await wait_for(settled, within=30)
    finally:
        service.stop()
    stored = {json.loads(bytes(r["body"])).get("n") for r in await db.fetch("SELECT body FROM provider_reports")}
    figures = {
        "reports acknowledged": len(acked_reports),
        "acknowledged but not stored": len(acked_reports - stored),
        "sessions created (201)": len(created),
        "201 but no session": len(created - {str(r["id"]) for r in await db.fetch("SELECT id FROM sessions")}),
        "calls dialled twice": await db.fetchval(
            "SELECT count(*) FROM (SELECT session_id FROM calls GROUP BY session_id HAVING count(*) > 1) x"
        ),
        "crossed lines": await db.fetchval(CROSSED_LINES),
        "calls stuck in flight": await db.fetchval("SELECT count(*) FROM calls WHERE in_flight"),
    }
    print("\n" + json.dumps(figures, indent=2))
    assert figures["reports acknowledged"] > 100 and figures["sessions created (201)"] > 50
    assert [figures[k] for k in list(figures)[1:] if k != "sessions created (201)"] == [0, 0, 0, 0, 0]
