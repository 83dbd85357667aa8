"""Pools: their settings (fallback, cool-off, defaults, alert level) and their statistics (use, headroom, alerts)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
import structlog

from service.broker import events
from service.broker.bodies import DEFAULT_HEADROOM_ALERT, CreateSession, Fallback, PoolSettings
from service.broker.bodies import Pool as PoolName
from service.broker.errors import InvalidRequest, NotFound, RecordingNotAllowed, TooManyPools
from service.broker.phones import normalize
from service.broker.sessions import Rules
from service.db import Conn
from service.db import dids as dids_q
from service.db import events as events_q
from service.db import pools as q

# How long a process trusts the settings it read for a pool before reading them again. A PUT is seen at
# once by the process that served it and within this many seconds by every other process.
CACHE_SECONDS = 5.0


class PoolStats(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's size and use. headroom = active DIDs - (the two busiest parties' live sessions): a new
    pair needs a DID free for both, and with the customer in m live sessions and the agent in n, up to
    m + n DIDs are ruled out; at or below 0 the two busiest parties may be refused a session together."""

    tenant: str
    pool: str
    dids: int
    active_dids: int
    active_sessions: int
    busiest_party_sessions: int
    second_party_sessions: int = 0
    headroom: int


log = structlog.get_logger("service.broker.pools")


def headroom(active_dids: int, busiest: int, second: int) -> int:
    """Active DIDs minus the two busiest parties' live sessions (negative: that many DIDs short)."""
    return active_dids - busiest - second


# Counting the two busiest parties reads every live binding of a pool (one index range per DID, then a
# hash count per number): ~2.5 s for a 50-DID pool with 300,000 live sessions on a shared 2-core machine,
# minutes for every pool of a tenant holding 1,300,000 (the benchmark's). A computation that took longer
# than STATS_SLOW_SECONDS is reused for 20x its duration (at most STATS_MAX_AGE_SECONDS) by this process,
# so stats, pool routes and /metrics scrapes of a big pool cost at most ~5% of a database core however
# often they are asked (up to 30 s computations; it was capped at 30 s of reuse, which let a minute-long
# one run two thirds of the time); small pools are always fresh.
STATS_SLOW_SECONDS = 0.1
STATS_MAX_AGE_SECONDS = 600.0

Key = tuple[int | None, str | None]
Count = Callable[[], Awaitable[list[PoolStats]]]


class StatsCache:
    """Per process (one per app): slow pool statistics, reused for a while; /metrics never waits long for them."""

    def __init__(self) -> None:
        self._hits: dict[Key, tuple[float, list[PoolStats]]] = {}
        self._last: dict[Key, list[PoolStats]] = {}
        self._running: dict[Key, asyncio.Task[list[PoolStats]]] = {}

    async def within(
        self, key: Key, compute: Callable[[], Awaitable[list[PoolStats]]], seconds: float
    ) -> list[PoolStats]:
        """compute()'s answer when it comes within `seconds`; else the last one known (none at first) while it
        goes on in the background, at most one per key at a time (a scrape answers while a big pool is counted)."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._keep(key, compute))
            self._running[key] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), seconds)
        except TimeoutError:
            return self._last.get(key, [])

    async def _keep(self, key: Key, compute: Count) -> list[PoolStats]:
        try:
            self._last[key] = stats = await compute()
            return stats
        except Exception:
            log.warning("pool_stats_failed", exc_info=True)
            return self._last.get(key, [])
        finally:
            self._running.pop(key, None)

    async def close(self) -> None:
        """Stop counting in the background (at shutdown: the pool's connections are wanted back)."""
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    def get(self, key: Key, at: float) -> list[PoolStats] | None:
        hit = self._hits.get(key)
        return hit[1] if hit is not None and hit[0] > at else None

    def put(self, key: Key, started: float, took: float, stats: list[PoolStats]) -> None:
        if took > STATS_SLOW_SECONDS:
            if len(self._hits) > 10_000:
                self._hits.clear()
            self._hits[key] = (started + took + min(20 * took, STATS_MAX_AGE_SECONDS), stats)


async def pool_stats(
    conn: Conn, tenant_id: int | None, now: datetime, pool: str | None = None, cache: StatsCache | None = None
) -> list[PoolStats]:
    """Per pool (or one pool): DIDs, active sessions and headroom (with a cache, a slow answer is reused)."""
    started = time.monotonic()
    if cache is not None and (hit := cache.get((tenant_id, pool), started)) is not None:
        return hit
    stats = await _pool_stats(conn, tenant_id, now, pool)
    if cache is not None:
        cache.put((tenant_id, pool), started, time.monotonic() - started, stats)
    return stats


async def _pool_stats(conn: Conn, tenant_id: int | None, now: datetime, pool: str | None) -> list[PoolStats]:
    return [stats_of(r) for r in await q.pool_stats(conn, tenant_id, now, pool)]


def stats_of(row: q.PoolUse) -> PoolStats:
    """A pool's statistics row as the API shows it, with its headroom."""
    return PoolStats(
        tenant=row.tenant,
        pool=row.pool,
        dids=row.dids,
        active_dids=row.active_dids,
        active_sessions=row.active_sessions,
        busiest_party_sessions=row.busiest_party,
        second_party_sessions=row.second_party,
        headroom=headroom(row.active_dids, row.busiest_party, row.second_party),
    )


class PoolUsage(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's DIDs and live use; headroom = active DIDs - the two busiest parties' live sessions."""

    dids: int
    active_dids: int
    active_sessions: int
    busiest_party_sessions: int
    second_party_sessions: int
    headroom: int
    low_headroom: bool


class Pool(msgspec.Struct, frozen=True, kw_only=True):
    """A pool: its settings and its stats."""

    name: str
    fallback: Fallback | None
    cooloff_seconds: int | None
    default_ttl_seconds: int | None
    default_max_calls: int | None
    headroom_alert: int
    recording_allowed: bool = True
    recording_retention_days: int | None = None
    stats: PoolUsage


class Pools(msgspec.Struct, frozen=True):
    """The tenant's pools, by name."""

    items: list[Pool]


def _name(name: str) -> str:
    """A pool name from a path, held to the bounds of a pool named in a body (broker/bodies.py's `Pool`)."""
    try:
        return msgspec.convert(name, PoolName)
    except msgspec.ValidationError:
        raise InvalidRequest("A pool name is 1 to 64 characters.", field="name") from None


def _pool(name: str, s: q.PoolSettingsRow | None, stats: PoolStats | None) -> Pool:
    s = s or q.PoolSettingsRow(pool=name)
    fallback = None
    if s.fallback_connect_to or s.fallback_flow:
        fallback = Fallback(connect_to=s.fallback_connect_to, flow=s.fallback_flow)
    if stats is None:
        usage = PoolUsage(
            dids=0,
            active_dids=0,
            active_sessions=0,
            busiest_party_sessions=0,
            second_party_sessions=0,
            headroom=0,
            low_headroom=True,
        )
    else:
        usage = PoolUsage(
            dids=stats.dids,
            active_dids=stats.active_dids,
            active_sessions=stats.active_sessions,
            busiest_party_sessions=stats.busiest_party_sessions,
            second_party_sessions=stats.second_party_sessions,
            headroom=stats.headroom,
            low_headroom=stats.headroom <= s.headroom_alert,
        )
    return Pool(
        name=name,
        fallback=fallback,
        cooloff_seconds=s.cooloff_seconds,
        default_ttl_seconds=s.default_ttl_seconds,
        default_max_calls=s.default_max_calls,
        headroom_alert=s.headroom_alert,
        recording_allowed=s.recording_allowed,
        recording_retention_days=s.recording_retention_days,
        stats=usage,
    )


async def list_pools(conn: Conn, tenant_id: int, now: datetime, cache: StatsCache | None = None) -> Pools:
    """The tenant's pools (those with a DID or settings), with settings and stats."""
    stats = await pool_stats(conn, tenant_id, now, cache=cache)
    settings = await q.select_all_settings(conn, tenant_id)
    return Pools([_pool(p.pool, settings.get((tenant_id, p.pool)), p) for p in sorted(stats, key=lambda p: p.pool)])


async def get_pool(conn: Conn, tenant_id: int, name: str, now: datetime, cache: StatsCache | None = None) -> Pool:
    """One of the tenant's pools, or not_found when it has neither a DID nor settings."""
    stats = await pool_stats(conn, tenant_id, now, _name(name), cache)
    if not stats:
        raise NotFound("No pool with that name: a pool exists once it has a DID or settings.")
    return _pool(name, await q.select_settings(conn, tenant_id, name), stats[0])


async def put_pool(
    conn: Conn, tenant_id: int, name: str, body: PoolSettings, now: datetime, *, max_pools: int, cache: SettingsCache
) -> Pool:
    """Replace a pool's settings (creating the pool when new); the pool as it now is."""
    name = _name(name)
    connect_to = flow = None
    if body.fallback is not None:
        if (body.fallback.connect_to is None) == (body.fallback.flow is None):
            raise InvalidRequest(
                "`fallback` takes exactly one of `connect_to` (a number) or `flow` (an IVR flow id), or is null.",
                field="fallback",
            )
        if body.fallback.connect_to is not None:
            connect_to = normalize(body.fallback.connect_to, "fallback.connect_to")
        flow = body.fallback.flow
    row = q.PoolSettingsRow(
        pool=name,
        fallback_connect_to=connect_to,
        fallback_flow=flow,
        cooloff_seconds=body.cooloff_seconds,
        default_ttl_seconds=body.default_ttl_seconds,
        default_max_calls=body.default_max_calls,
        headroom_alert=body.headroom_alert,
        recording_allowed=body.recording_allowed,
        recording_retention_days=body.recording_retention_days,
    )
    async with conn.transaction():
        await dids_q.lock_pools(conn, tenant_id)
        held, would = await q.count_pools_with(conn, tenant_id, [name])
        if would > held and would > max_pools:
            raise TooManyPools(
                f"This would make {would} pools; a tenant may hold at most {max_pools} "
                "(MASKING_MAX_POOLS_PER_TENANT). Change the settings of an existing pool instead.",
                max_pools=max_pools,
            )
        await q.upsert_settings(conn, tenant_id, row, now)
    cache.forget(tenant_id, name)
    return await get_pool(conn, tenant_id, name, now)


class SettingsCache:
    """Per process: each pool's settings row (or its absence), trusted for CACHE_SECONDS."""

    def __init__(self, seconds: float = CACHE_SECONDS) -> None:
        self.seconds = seconds
        self._rows: dict[tuple[int, str], tuple[float, q.PoolSettingsRow | None]] = {}

    def forget(self, tenant_id: int, pool: str) -> None:
        self._rows.pop((tenant_id, pool), None)

    async def get(self, conn: Conn, tenant_id: int, pool: str) -> q.PoolSettingsRow | None:
        key = (tenant_id, pool)
        hit = self._rows.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await q.select_settings(conn, tenant_id, pool)
        if len(self._rows) > 10_000:
            self._rows.clear()
        self._rows[key] = (now + self.seconds, row)
        return row


def rules_for(base: Rules, s: q.PoolSettingsRow | None) -> Rules:
    """The broker's rules for a pool: its own cool-off and default TTL where it sets them."""
    if s is None or (s.cooloff_seconds is None and s.default_ttl_seconds is None):
        return base
    return Rules(
        default_ttl_seconds=s.default_ttl_seconds if s.default_ttl_seconds is not None else base.default_ttl_seconds,
        cooloff_seconds=s.cooloff_seconds if s.cooloff_seconds is not None else base.cooloff_seconds,
    )


async def for_create(
    conn: Conn, cache: SettingsCache, tenant_id: int, body: CreateSession, base: Rules
) -> tuple[CreateSession, Rules]:
    """A create-session body and rules with the pool's settings applied (default max_calls, TTL, cool-off)."""
    s = await cache.get(conn, tenant_id, body.pool)
    if s is None:
        return body, base
    if body.record and not s.recording_allowed:
        raise RecordingNotAllowed(
            f"Pool `{body.pool}` does not allow recording; create the session without `record: true`.",
            field="record",
        )
    if body.max_calls is None and s.default_max_calls is not None:
        body = msgspec.structs.replace(body, max_calls=s.default_max_calls)
    return body, rules_for(base, s)


async def rules_of_pool(conn: Conn, cache: SettingsCache, tenant_id: int, pool: str, base: Rules) -> Rules:
    """The broker's rules for one of the tenant's pools."""
    return rules_for(base, await cache.get(conn, tenant_id, pool))


class PoolAlert(PoolStats, frozen=True, kw_only=True):
    """The data of pool.low_headroom: the pool's use as GET /v1/stats shows it, and the level it fell to."""

    alert_level: int


async def check_headroom(conn: Conn, now: datetime) -> int:
    """pool.low_headroom once for each pool whose headroom fell to its alert level since the last check.

    Headroom is the contract's: active DIDs minus the two busiest parties' live sessions; the alert level
    is the pool's `headroom_alert` (2 when the pool has no settings).
    """
    stats = await q.pool_stats(conn, None, now)
    levels = await q.select_all_settings(conn, None)
    alerts: dict[tuple[int, str], PoolAlert] = {}
    for row in stats:
        pool = stats_of(row)
        settings = levels.get((row.tenant_id, row.pool))
        alert_level = DEFAULT_HEADROOM_ALERT if settings is None else settings.headroom_alert
        if pool.headroom <= alert_level:
            alerts[(row.tenant_id, row.pool)] = PoolAlert(**msgspec.structs.asdict(pool), alert_level=alert_level)
    async with conn.transaction():
        await events_q.rearm_pools(conn, list(alerts))
        fresh = await events_q.alert_pools(conn, list(alerts), now)
        await events.emit_many(conn, now, [(key[0], "pool.low_headroom", alerts[key]) for key in fresh])
    return len(fresh)
