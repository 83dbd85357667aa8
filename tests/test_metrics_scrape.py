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


async def test_a_scrape_that_names_other_series_counts_no_pool(client: httpx.AsyncClient, keys: Keys, dsn: str) -> None:
    """`name[]` asks for some series only: a scrape of the event-loop lag alone answers with those series and
    starts no count of the pools (it answered after the 2 s wait before, while a count queued behind the lock);
    one that names a pool series still counts."""
    await add_dids(client, keys.a, did_numbers(2))
    assert (await create_session(client, keys.a)).status_code == 201
    blocker = await asyncpg.connect(dsn)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE bindings IN ACCESS EXCLUSIVE MODE")
            lag = {"name[]": ["masking_event_loop_lag_seconds_bucket"]}
            scrape = await asyncio.wait_for(client.get("/metrics", params=lag), timeout=30)
            assert scrape.status_code == 200
            series = {line.split("{")[0] for line in scrape.text.splitlines() if not line.startswith("#")}
            assert series == {"masking_event_loop_lag_seconds_bucket"}, series
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            assert waiting == 0, "a scrape that asked for no pool series queued a count of the pools"
    finally:
        await blocker.close()
    pools = {"name[]": ["masking_active_sessions"]}
    shown = await wait_for(lambda: _shown(client, pools), within=30)
    assert shown == ['masking_active_sessions{pool="default",tenant="tenant-a"} 1.0']


async def _shown(client: httpx.AsyncClient, params: dict[str, list[str]]) -> list[str]:
    return active_sessions((await client.get("/metrics", params=params)).text)
