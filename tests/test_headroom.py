"""Honest headroom: a pair needs a DID free for both, so headroom counts the pool's two busiest parties."""

import asyncio
from datetime import timedelta

import asyncpg
import httpx
from structlog.testing import capture_logs

from service.broker import sweeps
from tests.factories import create_session
from tests.helpers import FakeClock, Keys, add_dids, assert_problem, did_numbers, make_settings


async def test_the_old_headroom_said_fine_and_the_pair_was_refused(client: httpx.AsyncClient, keys: Keys) -> None:
    """4 DIDs, customer C live on two, agent A live on the other two: the old headroom (DIDs - busiest party)
    said 2, yet C and A together are refused; the honest headroom says 0."""
    first, second = did_numbers(2), did_numbers(2, start=2)
    c, a = "+919876500001", "+918765400001"
    await add_dids(client, keys.a, first)
    # A's earlier orders on the first two DIDs keep A off them (cool-off), so C's and A's DIDs are disjoint.
    for i in range(2):
        r = await create_session(client, keys.a, f"old{i}", f"+91987650010{i}", a)
        await client.post(f"/v1/sessions/{r.json()['id']}/close", headers=keys.a)
    for i in range(2):
        r = await create_session(client, keys.a, f"c{i}", c, f"+91876540010{i}")
        assert r.status_code == 201 and r.json()["masked_number"] in first, r.text
    await add_dids(client, keys.a, second)
    for i in range(2):
        r = await create_session(client, keys.a, f"a{i}", f"+91987650020{i}", a)
        assert r.status_code == 201 and r.json()["masked_number"] in second, r.text
    stats = (await client.get("/v1/stats", headers=keys.a)).json()["pools"][0]
    old_headroom = stats["active_dids"] - stats["busiest_party_sessions"]
    assert old_headroom == 2  # what the old rule reported: "room for two more"
    assert stats["second_party_sessions"] == 2
    assert stats["headroom"] == 0  # the honest figure: the two busiest parties may be refused together
    refused = await create_session(client, keys.a, "pair", c, a)
    problem = assert_problem(refused, 409, "pool_exhausted")
    assert problem["pool_dids"] == 4 and problem["ruled_out"]["party_busy"] >= 2
    pool = (await client.get("/v1/pools/default", headers=keys.a)).json()
    assert pool["stats"]["headroom"] == 0 and pool["stats"]["low_headroom"] is True
    text = (await client.get("/metrics")).text
    assert 'masking_pool_headroom{pool="default",tenant="tenant-a"} 0.0' in text


async def test_headroom_above_zero_means_the_two_busiest_parties_can_still_pair(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """With one more DID, headroom is 1 and the busiest pair is served."""
    await add_dids(client, keys.a, did_numbers(5))
    c, a = "+919876500001", "+918765400001"
    for i, (customer, agent) in enumerate([(c, "+918765400002"), (c, "+918765400003"),
                                           ("+919876500002", a), ("+919876500003", a)]):  # fmt: skip
        await create_session(client, keys.a, f"o{i}", customer, agent)
    assert (await client.get("/v1/stats", headers=keys.a)).json()["pools"][0]["headroom"] == 1
    assert (await create_session(client, keys.a, "pair", c, a)).status_code == 201


def test_a_slow_stats_computation_is_reused_briefly_and_a_fast_one_never() -> None:
    """Big pools' stats (seconds to count) are reused for 20x their cost, at most 10 minutes; small ones stay fresh."""
    from service.broker.pools import PoolStats, StatsCache

    stats = [
        PoolStats(tenant="t", pool="p", dids=1, active_dids=1, active_sessions=0, busiest_party_sessions=0, headroom=1)
    ]
    cache = StatsCache()
    cache.put((1, None), started=100.0, took=0.01, stats=stats)
    assert cache.get((1, None), 100.02) is None
    cache.put((1, None), started=100.0, took=0.5, stats=stats)
    assert cache.get((1, None), 110.0) == stats and cache.get((1, None), 110.6) is None
    cache.put((2, None), started=100.0, took=5.0, stats=stats)
    assert cache.get((2, None), 204.0) == stats and cache.get((2, None), 205.1) is None
    cache.put((4, None), started=100.0, took=60.0, stats=stats)  # a minute to count: reused 10 minutes, not 20
    assert cache.get((4, None), 759.0) == stats and cache.get((4, None), 760.1) is None
    assert cache.get((3, None), 100.0) is None


async def test_the_headroom_check_runs_once_per_period_for_all_processes_and_later_when_slow(
    dsn: str, clock: FakeClock
) -> None:
    """The check counts every live binding (seconds at a million sessions): two processes sweeping at the same
    moment run it once between them, nobody again within the minute; a check that took 3.5 s (its table locked)
    puts the next one at least 20 x 3.5 s = 70 s on, not 60."""
    conns = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        sweepers = [sweeps.Sweeper(make_settings(dsn)) for _ in range(2)]
        with capture_logs() as logs:
            await asyncio.gather(*(s.sweep_once(c, clock()) for s, c in zip(sweepers, conns, strict=False)))
        assert [e["event"] for e in logs].count("pool_headroom_checked") == 1
        start = clock()
        assert not await sweeps.headroom_turn(conns[0], start + timedelta(seconds=59))
        blocker = conns[2]
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE dids IN ACCESS EXCLUSIVE MODE")
            slow = asyncio.create_task(sweeps.headroom_turn(conns[1], start + timedelta(seconds=60)))
            await asyncio.sleep(3.5)
        assert await slow
        later = start + timedelta(seconds=60)
        # at least 20 x the 3.5 s it took (exactly how much longer depends on the machine)
        due = await conns[0].fetchval("SELECT due_at FROM job_turns WHERE job = 'pool_headroom'")
        assert due >= later + timedelta(seconds=70), due - later
        assert not await sweeps.headroom_turn(conns[0], due - timedelta(seconds=1))
        assert await sweeps.headroom_turn(conns[0], due)
    finally:
        for c in conns:
            await c.close()
