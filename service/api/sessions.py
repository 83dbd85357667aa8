"""HTTP routes for masking sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from litestar import Controller, Response, get, patch, post
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from service.api.audit import key_context
from service.api.deps import Db, MaskingRequest, Runtime
from service.api.idempotency import run_once
from service.api.problems import API_RESPONSES
from service.broker import pools
from service.broker import sessions as broker
from service.broker.bodies import ChangeSession, CloseSession, CreateSession, ExpireFilter
from service.broker.errors import InvalidRequest
from service.models import Session

if TYPE_CHECKING:
    from service.db import Conn

JSON = "application/json"


class Expired(msgspec.Struct, frozen=True):
    """How many sessions a bulk expiry ended."""

    expired: int


async def produce_session(runtime: Runtime, conn: Conn, tenant_id: int, data: CreateSession) -> tuple[int, bytes]:
    """Create (201) or find the live repeat (200) of a session, with its pool's settings; the answer's bytes."""
    # The pool's own settings (default max_calls and TTL, cool-off) resolved before allocation.
    body, rules = await pools.for_create(conn, runtime.pools, tenant_id, data, runtime.rules)
    session, created = await broker.create_session(conn, tenant_id, body, rules, runtime.clock)
    return (201 if created else 200), msgspec.json.encode(session)


class SessionController(Controller):
    """Create, read, extend, close and expire sessions."""

    path = "/v1/sessions"
    tags = ["sessions"]

    @post(
        "/",
        status_code=201,
        summary="Create a masking session (200 with the live one on a repeat)",
        responses=API_RESPONSES,
    )
    async def create(
        self,
        request: MaskingRequest,
        data: JSONBody[CreateSession],
        conn: Db,
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)] = None,
    ) -> Response[Session]:
        request.runtime.session_buckets.take(request.principal.tenant_id, "sessions")

        async def produce() -> tuple[int, bytes]:
            return await produce_session(request.runtime, conn, request.principal.tenant_id, data)

        if idempotency_key is None:
            status, body = await produce()
        else:
            raw = await request.body()
            status, body = await run_once(
                conn, request.principal.tenant_id, idempotency_key, raw, request.runtime.clock(), produce
            )
        return Response(body, status_code=status, media_type=JSON)  # type: ignore[arg-type]

    @get("/", summary="List sessions, newest first", responses=API_RESPONSES)
    async def list(
        self,
        request: MaskingRequest,
        conn: Db,
        order_id: FromQuery[str | None] = None,
        status: FromQuery[Literal["active", "closed", "expired"] | None] = None,
        customer: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> broker.Page:
        return await broker.list_sessions(
            conn,
            request.principal.tenant_id,
            request.runtime.clock(),
            order_id=order_id,
            customer=customer,
            status=status,
            limit=limit,
            cursor=cursor,
        )

    @get("/{session_id:str}", summary="One session", responses=API_RESPONSES)
    async def read(
        self,
        request: MaskingRequest,
        session_id: FromPath[str],
        conn: Db,
    ) -> Session:
        return await broker.get_session(conn, request.principal.tenant_id, session_id, request.runtime.clock())

    @patch(
        "/{session_id:str}",
        summary="Change an active session's TTL (from now) or reassign its agent or customer",
        description=(
            "With `agent` or `customer`: the session keeps its id and, when the broker's rules allow the new pair "
            "there, its DID. Otherwise 409 `reassign_conflict` (with a `reason`: `party_busy`, `cooling_off`, "
            "`did_not_active`, `other_country`, `duplicate_pair`), unless `allow_new_number` is true: then it moves "
            "to another DID (`masked_number` changes; 409 `pool_exhausted` when none fits). The replaced party's "
            "binding ends at once. 409 `call_in_progress` while a call awaits its report; 409 `session_not_active` "
            "once ended; 422 `invalid_request` / `invalid_phone_number` naming the field."
        ),
        responses=API_RESPONSES,
    )
    async def change(
        self,
        request: MaskingRequest,
        session_id: FromPath[str],
        data: JSONBody[ChangeSession],
        conn: Db,
    ) -> Session:
        runtime, tenant_id = request.runtime, request.principal.tenant_id
        if data.ttl_seconds is None and data.agent is None and data.customer is None:
            raise InvalidRequest("Give at least one of `ttl_seconds`, `agent` or `customer`.", field="body")
        if data.agent is None and data.customer is None:
            assert data.ttl_seconds is not None
            return await broker.change_ttl(conn, tenant_id, session_id, data.ttl_seconds, runtime.clock())
        # Parties (and a TTL given with them) change in one transaction with one session.updated.
        change = broker.Reassign(
            customer=data.customer,
            agent=data.agent,
            allow_new_number=data.allow_new_number,
            ttl_seconds=data.ttl_seconds,
        )

        async def rules_of(pool: str) -> broker.Rules:
            return await pools.rules_of_pool(conn, runtime.pools, tenant_id, pool, runtime.rules)

        return await broker.reassign(conn, tenant_id, session_id, change, rules_of, runtime.clock)

    @post("/{session_id:str}/close", status_code=200, summary="Close a session", responses=API_RESPONSES)
    async def close(
        self,
        request: MaskingRequest,
        session_id: FromPath[str],
        conn: Db,
        data: JSONBody[CloseSession | None] = None,
    ) -> Session:
        note = data.reason if data is not None else None
        now, tenant_id = request.runtime.clock(), request.principal.tenant_id
        return await broker.close_session(conn, tenant_id, session_id, now, note, audit=key_context(request))

    @post(
        "/expire",
        status_code=200,
        opt={"scope": "ops"},
        summary="Expire every active session matching all filters",
        responses=API_RESPONSES,
    )
    async def expire(
        self,
        request: MaskingRequest,
        data: JSONBody[ExpireFilter],
        conn: Db,
    ) -> Expired:
        now, tenant_id = request.runtime.clock(), request.principal.tenant_id
        return Expired(await broker.expire_sessions(conn, tenant_id, data, now, audit=key_context(request)))
