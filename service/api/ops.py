"""HTTP routes for operations: health, readiness, pool statistics and Prometheus metrics."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from typing import Annotated

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import FromQuery, QueryParameter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service import metrics
from service.api.deps import MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker.costs import NO_CALLS, CallUsage, pool_usage
from service.broker.errors import InvalidRequest
from service.broker.pools import PoolStats, pool_stats
from service.db.pool import ping


class Health(msgspec.Struct, frozen=True):
    """Liveness or readiness."""

    status: str


@get("/healthz", summary="200 while the process runs", tags=["ops"], security=[{}])
async def healthz() -> Health:
    return Health("ok")


@get(
    "/readyz",
    summary="200 when the database answers, else 503",
    tags=["ops"],
    security=[{}],
    responses={503: ResponseSpec(data_container=Health, description="The database does not answer")},
)
async def readyz(
    request: MaskingRequest,
) -> Response[Health]:
    try:
        async with asyncio.timeout(2):
            await ping(request.runtime.db)
    except Exception:
        return Response(Health("database unavailable"), status_code=503, media_type=MediaType.JSON)
    return Response(Health("ok"), status_code=200)


# How long a /metrics scrape waits for pool statistics before answering with the last ones.
SCRAPE_WAIT_SECONDS = 2.0
# The series the pool statistics feed, by their sample names (what `name[]` names).
_POOL_SERIES = {"masking_active_sessions", "masking_pool_dids", "masking_pool_headroom"}


class PoolReport(PoolStats, frozen=True, kw_only=True):
    """A pool's size and use, and the calls placed in it in the last 24 hours and the last 30 days."""

    last_24h: CallUsage
    last_30d: CallUsage


class Stats(msgspec.Struct, frozen=True):
    """A page of pools (by name): DIDs, active sessions, headroom, calls and cost; next_cursor None on the last page."""

    pools: list[PoolReport]
    next_cursor: str | None = None


class _Page(msgspec.Struct, frozen=True):
    pools: list[PoolStats]
    next_cursor: str | None = None


def _page_of(pools: list[PoolStats], limit: int, cursor: str | None) -> _Page:
    """The pools after the cursor's, at most limit of them, by name (code point order, whatever the collation)."""
    pools = sorted(pools, key=lambda p: p.pool)
    if cursor:
        try:
            after = base64.urlsafe_b64decode(cursor.encode()).decode()
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "`cursor` is not one this service gave out; start again without it.", field="cursor"
            ) from None
        pools = [p for p in pools if p.pool > after]
    if len(pools) <= limit:
        return _Page(pools)
    return _Page(pools[:limit], base64.urlsafe_b64encode(pools[limit - 1].pool.encode()).decode())


class StatsController(Controller):
    """Pool statistics for the tenant's ops."""

    path = "/v1/stats"
    tags = ["ops"]
    opt = {"scope": "ops"}

    @get(
        "/",
        summary="Per pool: DIDs, active sessions, headroom, and calls, minutes and cost of the last 24 h and 30 days",
        responses=API_RESPONSES,
    )
    async def stats(
        self,
        request: MaskingRequest,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: FromQuery[str | None] = None,
    ) -> Stats:
        now = request.runtime.clock()
        async with request.runtime.db.acquire() as conn:
            pools = await pool_stats(conn, request.principal.tenant_id, now, cache=request.runtime.stats)
            page = _page_of(pools, limit, cursor)
            usage = await pool_usage(conn, request.principal.tenant_id, now) if page.pools else {}
        return Stats(
            [
                PoolReport(**msgspec.structs.asdict(p), last_24h=day, last_30d=month)
                for p in page.pools
                for day, month in [usage.get(p.pool, (NO_CALLS, NO_CALLS))]
            ],
            page.next_cursor,
        )


def _bounded(pools: Sequence[PoolStats], cap: int) -> list[PoolStats]:
    """At most `cap` pools by name, and per tenant one `_other` pool summing the rest."""
    shown = list(pools[:cap])
    rest: dict[str, PoolStats] = {}
    for p in pools[cap:]:
        o = rest.get(p.tenant)
        rest[p.tenant] = PoolStats(
            tenant=p.tenant,
            pool=metrics.OTHER_POOLS,
            dids=p.dids + (o.dids if o else 0),
            active_dids=p.active_dids + (o.active_dids if o else 0),
            active_sessions=p.active_sessions + (o.active_sessions if o else 0),
            busiest_party_sessions=max(p.busiest_party_sessions, o.busiest_party_sessions if o else 0),
            second_party_sessions=max(p.second_party_sessions, o.second_party_sessions if o else 0),
            headroom=p.headroom + (o.headroom if o else 0),
        )
    return shown + list(rest.values())


class MetricsController(Controller):
    """Prometheus text; pool gauges are refreshed from the database at each scrape, at most a capped number."""

    path = "/metrics"
    include_in_schema = False

    @get()
    async def metrics(
        self,
        request: MaskingRequest,
    ) -> Response[bytes]:
        runtime = request.runtime
        # `name[]` asks for some series only (as Prometheus' own clients allow): the pools are counted only when
        # their series are asked for, so a scrape of, say, the event-loop lag costs the database nothing.
        names = request.query_params.getall("name[]", [])
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        if names and not set(names) & _POOL_SERIES:
            return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def count() -> list[PoolStats]:
            async with runtime.db.acquire(timeout=2) as conn:
                return await pool_stats(conn, None, runtime.clock(), cache=runtime.stats)

        # A big pool takes long to count: the scrape answers within 2 s with the last counts (none at first),
        # and the counting goes on in the background for the next scrape.
        pools = await runtime.stats.within((None, "/metrics"), count, SCRAPE_WAIT_SECONDS)
        # Pools that are gone (or now summed) must not linger as series: rebuild the gauges each scrape.
        for gauge in (metrics.ACTIVE_SESSIONS, metrics.POOL_DIDS, metrics.POOL_HEADROOM):
            gauge.clear()
        for p in _bounded(pools, request.runtime.settings.metrics_pool_series):
            metrics.ACTIVE_SESSIONS.labels(p.tenant, p.pool).set(p.active_sessions)
            metrics.POOL_DIDS.labels(p.tenant, p.pool, "all").set(p.dids)
            metrics.POOL_DIDS.labels(p.tenant, p.pool, "active").set(p.active_dids)
            metrics.POOL_HEADROOM.labels(p.tenant, p.pool).set(p.headroom)
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
