"""The event-loop lag metric: a blocked loop shows on /metrics, and the watcher ends with the app."""

from __future__ import annotations

import asyncio
import time

import httpx
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from service import loopwatch
from service.app import create_app, request_context
from service.settings import Settings
from tests.helpers import FakeClock, wait_for

LAG = "masking_event_loop_lag_seconds"


async def lag_histogram(http: httpx.AsyncClient) -> dict[str, float]:
    """The lag histogram's samples on /metrics: `count`, `sum`, and each bucket by its `le`."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != LAG:
            continue
        for sample in family.samples:
            key = sample.labels["le"] if sample.name.endswith("_bucket") else sample.name.removeprefix(LAG + "_")
            samples[key] = sample.value
    return samples


async def test_a_watcher_reports_a_blocked_loop_as_lag_of_almost_the_block() -> None:
    """Blocking the loop for 0.5 s makes the watcher observe a lag of at least 0.5 s less its interval."""
    seen: list[float] = []
    task = asyncio.create_task(loopwatch.watch(seen.append, interval=0.05))
    try:
        await asyncio.sleep(0.2)  # a few ticks on time
        time.sleep(0.5)  # noqa: ASYNC251  # the blocking call the metric exists to catch
        await asyncio.sleep(0.2)  # a few more ticks
    finally:
        task.cancel()
    assert max(seen) >= 0.45
    assert seen[0] < 0.45  # the watcher reports lateness, not its own sleep


async def test_a_blocked_loop_shows_on_metrics_and_the_watcher_ends_with_the_app(settings: Settings, dsn: str) -> None:
    """With the app running, 0.5 s of blocking adds one lag observation above 0.25 s to /metrics; shutdown ends the task."""
    app = create_app(settings, dsn=dsn, clock=FakeClock(), background=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=request_context(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://masking.test") as http:
            before = await lag_histogram(http)
            assert {"count", "sum", "0.25", "+Inf"} <= before.keys()
            time.sleep(0.5)  # noqa: ASYNC251  # the app serves from this loop: block it on purpose

            async def observed() -> dict[str, float] | None:
                now = await lag_histogram(http)
                return now if now["count"] > before["count"] else None

            after = await wait_for(observed, within=5)
            watchers = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "watch"]  # type: ignore[union-attr]
            assert len(watchers) == 1
    stalls = (after["+Inf"] - after["0.25"]) - (before["+Inf"] - before["0.25"])
    assert stalls >= 1
    assert after["sum"] - before["sum"] >= 0.4
    await asyncio.sleep(0)
    assert watchers[0].done() and watchers[0].cancelled()
