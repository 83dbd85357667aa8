"""Starting another `masking serve` on a live, current database runs no DDL: no failed start, no 500."""

import asyncio
import contextlib
import json
from collections import Counter

import httpx

from tests.helpers import did_numbers, mobile_numbers
from tests.processes import ServeProcess, masking_env, run_cli


async def test_a_third_process_starts_five_times_while_two_serve_creates_and_clicks(dsn: str) -> None:
    """Five starts of a third process under a steady create-and-click load all succeed and nothing answers 5xx."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_LOG_LEVEL="warning", MASKING_SESSION_CALLS_PER_WINDOW="0")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    serving = [ServeProcess(env).start() for _ in range(2)]
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def load(http: httpx.AsyncClient, worker: int) -> None:
        customers = mobile_numbers(10_000, prefix="+91987")
        agents = mobile_numbers(10_000, prefix="+91876")
        i = 0
        while not stop.is_set():
            base = serving[i % 2].url
            r = await http.post(
                base + "/v1/sessions",
                json={"order_id": f"w{worker}-{i}", "customer": customers[i], "agent": agents[worker * 100 + i % 100]},
            )
            statuses[r.status_code] += 1
            if r.status_code == 201:
                click = await http.post(f"{base}/v1/sessions/{r.json()['id']}/calls")
                statuses[click.status_code] += 1
            i += 1

    try:
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
            r = await http.post(
                serving[0].url + "/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(200)]}
            )
            assert r.status_code == 200
            workers = [asyncio.create_task(load(http, w)) for w in range(4)]
            exits = []
            for _ in range(5):
                third = ServeProcess(env)
                await asyncio.to_thread(third.start)  # raises when the process exits or never becomes ready
                exits.append(await asyncio.to_thread(third.stop))
            stop.set()
            await asyncio.gather(*workers)
    finally:
        stop.set()
        for s in serving:
            with contextlib.suppress(Exception):
                s.stop()
    print(f"\nstarts: {len(exits)} clean, exit codes {exits}; answers under load: {dict(statuses)}")
    assert exits == [0] * 5
    assert statuses[201] > 20 and statuses[202] > 0
    assert not [s for s in statuses if s >= 500], statuses
