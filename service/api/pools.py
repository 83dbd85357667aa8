"""HTTP routes for pools as settings (scope ops): list, read and replace a pool's settings, with its stats."""

from __future__ import annotations

import msgspec
from litestar import Controller, get, put
from litestar.exceptions import ValidationException
from litestar.params import FromPath, JSONBody

from service.api.audit import key_context
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES
from service.broker import pools as broker
from service.broker.audit import Target
from service.broker.bodies import PoolSettings


class PoolController(Controller):
    """The tenant's pools: fallback for callers without a session, cool-off, defaults, headroom alert."""

    path = "/v1/pools"
    tags = ["pools"]
    opt = {"scope": "ops"}

    @get("/", summary="The tenant's pools with their settings and stats", responses=API_RESPONSES)
    async def list(self, request: MaskingRequest, conn: Db) -> broker.Pools:
        return await broker.list_pools(
            conn, request.principal.tenant_id, request.runtime.clock(), request.runtime.stats
        )

    @get(
        "/{name:str}",
        summary="One pool: settings and stats",
        description="404 `not_found` for a pool with neither a DID nor settings, or another tenant's.",
        responses=API_RESPONSES,
    )
    async def read(self, request: MaskingRequest, name: FromPath[str], conn: Db) -> broker.Pool:
        return await broker.get_pool(
            conn, request.principal.tenant_id, name, request.runtime.clock(), request.runtime.stats
        )

    @put(
        "/{name:str}",
        summary="Replace a pool's settings (creates the pool)",
        description=(
            "Every setting; null or absent: the service-wide one applies. 422 `invalid_request` or "
            "`invalid_phone_number` naming the field; 409 `too_many_pools` past MASKING_MAX_POOLS_PER_TENANT."
        ),
        responses=API_RESPONSES,
    )
    async def replace(
        self, request: MaskingRequest, name: FromPath[str], data: JSONBody[PoolSettings], conn: Db
    ) -> broker.Pool:
        runtime, now = request.runtime, request.runtime.clock()
        tenant_id = request.principal.tenant_id
        try:  # strictly, too: the body's lax decoding takes 0 and 1 for the booleans (recording_allowed)
            msgspec.json.decode(await request.body(), type=PoolSettings)
        except msgspec.ValidationError as exc:
            raise ValidationException(extra=[{"key": "data", "message": str(exc), "source": "body"}]) from None
        async with conn.transaction():  # the change and its audit row commit together (rule 12)
            pool = await broker.put_pool(
                conn, tenant_id, name, data, now, max_pools=runtime.settings.max_pools_per_tenant, cache=runtime.pools
            )
            await key_context(request).record(conn, "pool.update", Target("pool", pool.name), now)
        runtime.pools.forget(tenant_id, pool.name)  # put_pool forgot it before this commit: forget it after too
        return pool
