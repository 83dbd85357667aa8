"""A /metrics scrape answers while pool statistics are slow to count, and shows them once they are counted."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from tests.factories import create_session
from tests.helpers import Keys, add_dids, did_numbers, wait_for


def active_sessions(text: str) -> list[str]:
    """The scrape's active-session gauges of the default pool."""
    return [
        line for line in text.splitlines() if line.startswith("masking_active_sessions{") and 'pool="default"' in line
    ]


async def test_a_scrape_answers_while_the_pool_statistics_are_blocked_and_has_them_next_time(
    client: httpx.AsyncClient, keys: Keys, dsn: str
) -> None:
    """With the statistics' tables locked, /metrics still answers (without pool gauges); once free, they appear."""
    await add_dids(client, keys.a, did_numbers(2))
    assert (await create_session(client, keys.a)).status_code == 201
    blocker = await asyncpg.connect(dsn)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE bindings IN ACCESS EXCLUSIVE MODE")
        # Before: the scrape waited for the count, so it hung here as long as the lock was held.
        scrape = await asyncio.wait_for(client.get("/metrics"), timeout=30)
        assert scrape.status_code == 200 and "masking_event_loop_lag_seconds" in scrape.text
        assert active_sessions(scrape.text) == []  # not counted yet: nothing known to show
        await locked.rollback()
    finally:
        await blocker.close()

    async def counted() -> list[str]:
        return active_sessions((await client.get("/metrics")).text)

    shown = await wait_for(counted, within=30)
    assert shown and shown[0].endswith(" 1.0")
