"""Reports acknowledged with 200 are stored, even when the service is SIGKILLed mid-stream and restarted."""

import asyncio
import json
import signal

import asyncpg
import httpx

from tests.helpers import opened_body, wait_for
from tests.processes import ServeProcess, masking_env

TOKEN = "durability-token-0123456789"


async def test_no_acknowledged_report_is_lost_across_a_sigkill(dsn: str, db: asyncpg.Connection) -> None:
    """1,000 reports, 50 at a time; the service is killed with SIGKILL part-way, restarted, and retried to."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN=TOKEN)
    acknowledged: set[int] = set()
    service = ServeProcess(env).start()
    limit = asyncio.Semaphore(50)

    async def deliver(http: httpx.AsyncClient, n: int) -> None:
        body = json.dumps({"bridge": 918068281234, "from": 918765432109, "to": 919876543210, "n": n})
        async with limit:
            for _ in range(200):  # the provider retries until it hears 200
                try:
                    r = await http.post(f"{service.url}/v1/provider/thundersms/callback/{TOKEN}", content=body)
                    if r.status_code == 200:
                        acknowledged.add(n)
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)

    async def kill_midway() -> None:
        await wait_for(lambda: asyncio.sleep(0, len(acknowledged) >= 300), within=60, interval=0.01)
        service.stop(signal.SIGKILL)
        await asyncio.to_thread(service.start)

    try:
        async with httpx.AsyncClient(timeout=10) as http:
            killer = asyncio.create_task(kill_midway())
            await asyncio.gather(*(deliver(http, n) for n in range(1000)))
            await killer
    finally:
        service.stop()
    stored = {json.loads(opened_body(r["body"]))["n"] for r in await db.fetch("SELECT body FROM provider_reports")}
    lost = acknowledged - stored
    print(f"\nacknowledged {len(acknowledged)}, stored {len(stored)}, acknowledged but lost {len(lost)}")
    assert len(acknowledged) == 1000 and lost == set()
