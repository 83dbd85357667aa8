"""Benchmark scenario (issue 13): events delivered per second to a local receiver while create-session runs flat out.

How tests/bench.py should call it (the lead wires it in): with the bench's database DSN (schema migrated),
`figures = asyncio.run(events_scenario(dsn, seconds=plan.seconds, connections=plan.connections))`, then
report `figures["delivered_per_s"]` beside `figures["created_per_s"]` and fail the run if
`figures["backlog_grew"]`. Standalone: `python -m tests.bench_events [--seconds 10]`.

The scenario starts one `masking serve` process, one webhook endpoint (all events) pointing at an
in-process receiver that verifies every signature, and creates sessions with `connections` concurrent
clients for `seconds`, sampling the undelivered backlog every half second. Delivery keeps up when the
backlog stays bounded during the load (no upward trend) and drains within a couple of poll intervals
after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from typing import Any

import asyncpg
import httpx

from service.broker.tenants import create_key
from service.db.schema import migrate
from service.embedded import EmbeddedPostgres
from tests.helpers import did_numbers, mobile_numbers
from tests.processes import ServeProcess, masking_env
from tests.receiver import Receiver

PENDING = "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"


async def events_scenario(dsn: str, seconds: float = 10, connections: int = 16, workers: int = 1) -> dict[str, Any]:
    """Create sessions flat out for `seconds` while their session.created events are delivered; the figures."""
    db = await asyncpg.connect(dsn)
    try:
        key = await create_key(db, f"bench-events-{time.monotonic_ns()}", ["ops"])
        env = masking_env(
            MASKING_DATABASE_URL=dsn,
            MASKING_WEBHOOK_ALLOW_HTTP="true",
            MASKING_WEBHOOK_ALLOW_PRIVATE="true",
            MASKING_LOG_LEVEL="warning",
            MASKING_WORKERS=str(workers),
            MASKING_SESSIONS_PER_MINUTE="10000000",
        )
        auth = {"Authorization": f"Bearer {key.api_key}"}
        async with Receiver() as receiver:
            with ServeProcess(env) as service:
                limits = httpx.Limits(max_connections=connections)
                async with httpx.AsyncClient(base_url=service.url, headers=auth, timeout=30, limits=limits) as http:
                    # A block of its own: the bench's scenarios hold +918068 2-5 on the same database.
                    prefix = f"+918069{time.monotonic_ns() % 10}"
                    r = await http.post(
                        "/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(50, prefix=prefix)]}
                    )
                    assert r.status_code == 200, r.text
                    hook = await http.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"]})
                    receiver.secrets = [hook.json()["secret"]]
                    pending_before = await db.fetchval(PENDING)
                    customers = mobile_numbers(1_000_000, prefix="+91987")
                    agents = mobile_numbers(1_000_000, prefix="+91876")
                    counter = iter(range(1_000_000))
                    created = errors = 0
                    stop = time.monotonic() + seconds

                    async def client() -> None:
                        nonlocal created, errors
                        while time.monotonic() < stop:
                            i = next(counter)
                            body = {"order_id": f"b{i}", "customer": customers[i], "agent": agents[i]}
                            response = await http.post("/v1/sessions", json=body)
                            if response.status_code == 201:
                                created += 1
                            else:
                                errors += 1

                    samples: list[tuple[float, int]] = []

                    async def sample() -> None:
                        started = time.monotonic()
                        while time.monotonic() < stop:
                            samples.append((round(time.monotonic() - started, 1), await db.fetchval(PENDING)))
                            await asyncio.sleep(0.5)

                    delivered_before = sum(receiver.delivered.values())
                    started = time.monotonic()
                    await asyncio.gather(sample(), *(client() for _ in range(connections)))
                    elapsed = time.monotonic() - started
                    delivered_during = sum(receiver.delivered.values()) - delivered_before
                    drain_started = time.monotonic()
                    for _ in range(600):
                        if await db.fetchval(PENDING) <= pending_before:
                            break
                        await asyncio.sleep(0.1)
                    drain = time.monotonic() - drain_started
    finally:
        await db.close()
    half = len(samples) // 2
    first, second = samples[1:half] or samples[:1], samples[half:] or samples[-1:]
    mean_first = sum(n for _, n in first) / len(first)
    mean_second = sum(n for _, n in second) / len(second)
    return {
        "seconds": round(elapsed, 2),
        "connections": connections,
        "created_per_s": round(created / elapsed, 1),
        "delivered_per_s": round(delivered_during / elapsed, 1),
        "errors": errors,
        "backlog_samples": samples,
        "backlog_max": max((n for _, n in samples), default=0),
        "drain_seconds": round(drain, 2),
        # grew: the second half of the load holds clearly more undelivered events than the first
        "backlog_grew": mean_second > 1.5 * mean_first + 2 * created / elapsed * 0.5,
        "bad_signatures": receiver.bad_signatures,
        "duplicates": len(receiver.duplicates()),
    }


async def _standalone(seconds: float, connections: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="masking-bench-events-")
    server = EmbeddedPostgres(root)
    try:
        dsn = server.start()
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return await events_scenario(dsn, seconds, connections)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    figures = asyncio.run(_standalone(args.seconds, args.connections))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
