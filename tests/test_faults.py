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

from service.broker import dids as dids_broker
from service.embedded import EmbeddedPostgres
from tests.factories import create_session, pool
from tests.helpers import CROSSED_LINES, Keys, assert_problem, dsn_for, opened_body, wait_for
from tests.processes import ServeProcess, masking_env, run_cli

OUTAGE_SECONDS = float(os.environ.get("MASKING_TEST_OUTAGE_SECONDS", "20"))
SHORT_OUTAGE_SECONDS = 3.0
TOKEN = "faults-callback-token-0123456789"


async def _fresh_database(base: str) -> str:
    admin = await asyncpg.connect(base)
    try:
        await admin.execute("CREATE DATABASE faults")
    finally:
        await admin.close()
    return dsn_for(base, "faults")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.InternalClientError('cannot switch to state 12; protocol is in the "failed" state'),
        asyncpg.exceptions.InternalClientError("cannot switch to state 1; another operation (2) is in progress"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionResetError("Connection reset by peer"),
    ],
    ids=["failed-state", "busy-state", "closed-mid-operation", "reset"],
)
async def test_a_connection_broken_mid_request_is_503_database_unavailable(
    client: httpx.AsyncClient, keys: Keys, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """However asyncpg reports a connection lost mid-request, the answer is 503 database_unavailable, never 500."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(dids_broker, "list_dids", broken)
    assert_problem(await client.get("/v1/dids", headers=keys.a), 503, "database_unavailable")


async def test_postgres_down_fails_fast_with_503_and_recovers_without_restart(tmp_path: Path) -> None:
    """With the database gone for a few seconds under concurrent load: only 503s, fast; back within 10 s."""
    await _outage(tmp_path, seconds=SHORT_OUTAGE_SECONDS, workers=8)


@pytest.mark.slow
async def test_postgres_down_for_long_under_heavy_load_fails_fast_and_recovers(tmp_path: Path) -> None:
    """The long form: the database gone for MASKING_TEST_OUTAGE_SECONDS (20) under 32 concurrent clients."""
    await _outage(tmp_path, seconds=OUTAGE_SECONDS, workers=32)


async def _outage(tmp_path: Path, seconds: float, workers: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="masking-pgdown-"))
    server = EmbeddedPostgres(root)
    dsn = await _fresh_database(server.start())
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN=TOKEN, MASKING_LOG_LEVEL="warning")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    service = ServeProcess(env, log_path=tmp_path / "serve.log").start()
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            await pool(http, auth, dids=["+918068281234"])
            during: list[tuple[int, float, str, str, bool]] = []
            outage, stopped = asyncio.Event(), asyncio.Event()
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    for method, url, body in (
                        (
                            "POST",
                            "/v1/sessions",
                            {"order_id": "o", "customer": "+919876543210", "agent": "+918765432109"},
                        ),
                        ("GET", "/v1/sessions", None),
                        ("GET", "/v1/dids", None),
                        ("POST", f"/v1/provider/thundersms/callback/{TOKEN}", {"bridge": 1, "from": 2, "to": 3}),
                        ("GET", "/readyz", None),
                    ):
                        started, down = time.monotonic(), stopped.is_set()
                        r = await http.request(method, url, json=body, headers=auth)
                        if outage.is_set():
                            during.append((r.status_code, time.monotonic() - started,
                                           r.headers.get("content-type", ""), url, down))  # fmt: skip
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(load()) for _ in range(workers)]
            await asyncio.sleep(0.5)  # the load is running, connections are busy, when the database stops
            outage.set()
            await asyncio.to_thread(server.stop)
            stopped.set()
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
            statuses = Counter(s for s, _, _, _, down in during if down)
            slowest = max(t for _, t, _, _, down in during if down)  # asked once the database was gone
            print(
                f"\nduring a {seconds:.0f}s outage, {workers} clients: {dict(statuses)}, slowest answer {slowest:.2f}s"
            )
            # Requests in flight while the server stops may still succeed; none may be a 5xx other than 503.
            wrong = Counter((s, url) for s, _, _, url, _ in during if s >= 500 and s != 503)
            print(f"while it stopped: {dict(Counter(s for s, _, _, _, down in during if not down))}")
            assert not wrong, wrong
            assert set(statuses) == {503}, statuses
            assert slowest < 5
            assert all(ct.startswith(("application/problem+json", "application/json")) for _, _, ct, _, _ in during)
            server = EmbeddedPostgres(root)
            server.start()
            back = time.monotonic()

            async def recovered() -> bool:
                r = await http.get("/readyz")
                s = await http.get("/v1/sessions", headers=auth)
                return r.status_code == 200 and s.status_code == 200

            await wait_for(recovered, within=10, interval=0.1)
            print(f"recovered {time.monotonic() - back:.2f}s after the database came back")
            r = await create_session(http, auth, "o", "+919876543210", "+918765432109")
            assert r.status_code in (200, 201)
        assert "unhandled_error" not in (tmp_path / "serve.log").read_text()
    finally:
        service.stop()
        server.stop()


async def test_killing_the_service_once_under_load_loses_nothing(dsn: str, db: asyncpg.Connection) -> None:
    """The short form, in every run: one SIGKILL under load from 4 clients; every promise is counted."""
    figures = await _kill_under_load(dsn, db, kills=1, workers=4, every=1.5)
    assert figures["reports acknowledged"] > 20 and figures["sessions created (201)"] > 10


@pytest.mark.slow
async def test_killing_the_service_five_times_under_load_loses_nothing(dsn: str, db: asyncpg.Connection) -> None:
    """Creates, clicks and reports run while the service is SIGKILLed five times; every promise is counted."""
    figures = await _kill_under_load(dsn, db, kills=5, workers=8, every=2)
    assert figures["reports acknowledged"] > 100 and figures["sessions created (201)"] > 50


async def _kill_under_load(dsn: str, db: asyncpg.Connection, kills: int, workers: int, every: float) -> dict[str, int]:
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
            tasks = [asyncio.create_task(load(http, w)) for w in range(workers)]
            for _ in range(kills):
                await asyncio.sleep(every)
                service.stop(signal.SIGKILL)
                await asyncio.to_thread(service.start)
            await asyncio.sleep(every)
            stop.set()
            await asyncio.gather(*tasks)

            async def settled() -> bool:
                return await db.fetchval("SELECT count(*) FROM calls WHERE in_flight") == 0

            await wait_for(settled, within=30)
    finally:
        service.stop()
    stored = {json.loads(opened_body(r["body"])).get("n") for r in await db.fetch("SELECT body FROM provider_reports")}
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
    assert [figures[k] for k in list(figures)[1:] if k != "sessions created (201)"] == [0, 0, 0, 0, 0]
    return figures
