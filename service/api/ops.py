"""HTTP routes for operations: health, readiness, pool statistics and Prometheus metrics."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service import metrics
from service.api.deps import MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker.sessions import PoolStats, pool_stats
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


class Stats(msgspec.Struct, frozen=True):
    """Per pool: DIDs, active sessions, headroom."""

    pools: list[PoolStats]


class StatsController(Controller):
    """Pool statistics for the tenant's ops."""

    path = "/v1/stats"
    tags = ["ops"]
    opt = {"scope": "ops"}

    @get("/", summary="Per pool: DIDs, active sessions and headroom", responses=API_RESPONSES)
    async def stats(
        self,
        request: MaskingRequest,
    ) -> Stats:
        async with request.runtime.db.acquire() as conn:
            return Stats(await pool_stats(conn, request.principal.tenant_id, request.runtime.clock()))


class MetricsController(Controller):
    """Prometheus text; pool gauges are refreshed from the database at each scrape."""

    path = "/metrics"
    include_in_schema = False

    @get()
    async def metrics(
        self,
        request: MaskingRequest,
    ) -> Response[bytes]:
        try:
            async with request.runtime.db.acquire(timeout=2) as conn:
                pools = await pool_stats(conn, None, request.runtime.clock())
        except Exception:
            pools = []
        for p in pools:
            metrics.ACTIVE_SESSIONS.labels(p.tenant, p.pool).set(p.active_sessions)
            metrics.POOL_DIDS.labels(p.tenant, p.pool, "all").set(p.dids)
            metrics.POOL_DIDS.labels(p.tenant, p.pool, "active").set(p.active_dids)
            metrics.POOL_HEADROOM.labels(p.tenant, p.pool).set(p.headroom)
        return Response(generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
