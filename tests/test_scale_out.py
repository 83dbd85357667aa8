"""Three `masking serve` processes on one database behind round-robin: invariants hold, sweeps never double."""

import asyncio
import itertools
import json
import re
from collections import Counter

import asyncpg
import httpx

from tests.helpers import AGENT_FIRST, CALL_COLUMNS, CROSSED_LINES, did_numbers, mobile_numbers, wait_for
from tests.processes import ServeProcess, masking_env, run_cli


def swept(metrics_text: str, job: str) -> float:
    match = re.search(rf'masking_swept_total{{job="{job}"}} ([\d.]+)', metrics_text)
    return float(match[1]) if match else 0.0


async def test_three_processes_keep_the_rules_and_sweep_each_row_once(dsn: str, db: asyncpg.Connection) -> None:
    """Creates, clicks and closes spread over three processes; expiry and report timeout each run once per row."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_SWEEP_INTERVAL_SECONDS="0.1", MASKING_LOG_LEVEL="warning")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    services = [ServeProcess(env) for _ in range(3)]
    try:
        for s in services:
            s.start()
        urls = itertools.cycle([s.url for s in services])
        async with httpx.AsyncClient(timeout=30, headers=auth) as http:
            dids = did_numbers(30)
            r = await http.post(next(urls) + "/v1/dids/bulk", json={"dids": [{"number": n} for n in dids]})
            assert r.status_code == 200
            customers, agents = mobile_numbers(40, prefix="+91987"), mobile_numbers(10, prefix="+91876")
            bodies = [{"order_id": f"o{i}", "customer": customers[i % 40], "agent": agents[i % 10]} for i in range(300)]
            created = await asyncio.gather(*(http.post(next(urls) + "/v1/sessions", json=b) for b in bodies))
            statuses = Counter(r.status_code for r in created)
            assert set(statuses) <= {200, 201, 409} and statuses[201] > 0, statuses
            assert await db.fetchval(CROSSED_LINES) == 0
            live = [r.json()["id"] for r in created if r.status_code == 201]
            clicks = await asyncio.gather(*(http.post(f"{next(urls)}/v1/sessions/{sid}/calls") for sid in live[:60]))
            assert {c.status_code for c in clicks} <= {202, 409}
            closes = await asyncio.gather(*(http.post(f"{next(urls)}/v1/sessions/{sid}/close") for sid in live[60:]))
            assert {c.status_code for c in closes} == {200}
            assert await db.fetchval(CROSSED_LINES) == 0

            # Rows for the sweepers: sessions past their expiry and calls past the report timeout.
            # Counted from what each statement reports: the sweepers may act the moment a row is due.
            due_sessions = _count(
                await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE status = 'active'")
            )
            due_calls = _count(
                await db.execute("UPDATE calls SET created_at = now() - interval '3 hours' WHERE in_flight")
            )
            due_calls += _count(
                await db.execute(
                    f"""
                    INSERT INTO calls ({CALL_COLUMNS}, created_at)
                    SELECT {AGENT_FIRST}, now() - interval '3 hours'
                    FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM calls c WHERE c.session_id = s.id AND c.in_flight)
                    LIMIT 50
                    """
                )
            )

            async def all_swept() -> bool:
                left = await db.fetchval(
                    "SELECT (SELECT count(*) FROM sessions WHERE status = 'active')"
                    " + (SELECT count(*) FROM calls WHERE in_flight)"
                )
                return left == 0

            await wait_for(all_swept, within=30)
            texts = [(await http.get(s.url + "/metrics")).text for s in services]
        expired_counts = [swept(t, "sessions_expired") for t in texts]
        timed_out_counts = [swept(t, "calls_timed_out") for t in texts]
        print(
            f"\nexpired {due_sessions} sessions as {expired_counts}; timed out {due_calls} calls as {timed_out_counts}"
        )
        assert sum(expired_counts) == due_sessions > 0
        assert sum(timed_out_counts) == due_calls >= 50
    finally:
        for s in services:
            s.stop()


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])
