"""Test factories: tenants with keys, pools with DIDs, sessions, calls and provider reports, made the way users make them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from service.app import create_app, request_context
from service.broker.tenants import create_key
from service.db import sealed
from tests.helpers import (
    AGENT_FIRST,
    CALL_COLUMNS,
    FakeClock,
    add_dids,
    did_numbers,
    make_settings,
    mobile_numbers,
    session_body,
)

IST = ZoneInfo("Asia/Kolkata")
Json = dict[str, Any]


@asynccontextmanager
async def app_client(dsn: str, clock: FakeClock | None = None, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """The app in the test's loop with these settings overridden (no sweeper), and a client for it."""
    app = create_app(make_settings(dsn, **overrides), dsn=dsn, clock=clock or FakeClock(), background=False)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=request_context(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://masking.test") as http:
            yield http


async def tenant(db: asyncpg.Connection, name: str, scope: str = "ops") -> dict[str, str]:
    """A tenant (made when new) and the Authorization header of a new key of this scope."""
    key = await create_key(db, name, [scope])  # type: ignore[list-item]
    return {"Authorization": f"Bearer {key.api_key}"}


async def bare_tenant(db: asyncpg.Connection, name: str) -> int:
    """A tenant with no key, for a test below the API: its id."""
    made: int = await db.fetchval("INSERT INTO tenants (name) VALUES ($1) RETURNING id", name)
    return made


async def pool(
    http: httpx.AsyncClient, headers: dict[str, str], name: str = "default", dids: int | list[str] = 1, **settings: Any
) -> list[str]:
    """A pool with these DIDs (a count: the first of did_numbers) and, when given, these settings; its DIDs."""
    numbers = did_numbers(dids) if isinstance(dids, int) else dids
    if numbers:
        await add_dids(http, headers, numbers, name)
    if settings:
        r = await http.put(f"/v1/pools/{name}", json=settings, headers=headers)
        assert r.status_code == 200, r.text
    return numbers


async def create_session(http: httpx.AsyncClient, headers: dict[str, str], *pair: str, **body: Any) -> httpx.Response:
    """POST /v1/sessions with session_body(*pair, **body) (order, customer, agent): the raw response."""
    return await http.post("/v1/sessions", json=session_body(*pair, **body), headers=headers)


async def open_session(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    dids: int | list[str] = 0,
    pool_name: str = "default",
    **body: Any,
) -> Json:
    """A new session (201), after adding DIDs to its pool when asked: the session resource."""
    if dids:
        await pool(http, headers, pool_name, dids)
    if pool_name != "default":
        body["pool"] = pool_name
    r = await create_session(http, headers, **body)
    assert r.status_code == 201, r.text
    result: Json = r.json()
    return result


def pair(i: int) -> Json:
    """The i-th of many distinct pairs of numbers, as a body's customer and agent."""
    return {"customer": mobile_numbers(1, i, "+91987")[0], "agent": mobile_numbers(1, i, "+91876")[0]}


async def open_sessions(
    http: httpx.AsyncClient, headers: dict[str, str], count: int, start: int = 0, **body: Any
) -> list[Json]:
    """`count` new sessions of orders o{start}..., each with its own pair(i) of numbers: the session resources."""
    return [await open_session(http, headers, order=f"o{i}", **pair(i), **body) for i in range(start, start + count)]


async def make_sessions(http: httpx.AsyncClient, headers: dict[str, str], count: int, start: int = 0) -> list[str]:
    """open_sessions' ids."""
    return [s["id"] for s in await open_sessions(http, headers, count, start)]


async def close_session(
    http: httpx.AsyncClient, headers: dict[str, str], session: Json, reason: str | None = None
) -> Json:
    """POST /v1/sessions/{id}/close (with the client's reason when given): the session resource."""
    body = {"reason": reason} if reason is not None else None
    r = await http.post(f"/v1/sessions/{session['id']}/close", json=body, headers=headers)
    assert r.status_code == 200, r.text
    result: Json = r.json()
    return result


async def place_call(http: httpx.AsyncClient, headers: dict[str, str], session: Json) -> Json:
    """POST /v1/sessions/{id}/calls, accepted (202): the call resource."""
    r = await http.post(f"/v1/sessions/{session['id']}/calls", headers=headers)
    assert r.status_code == 202, r.text
    result: Json = r.json()
    return result


async def calls_for_every_session(db: asyncpg.Connection) -> list[Json]:
    """An in-flight call for each session, recorded without asking the provider: each call's bridge, from and to."""
    # its numbers copied sealed from its session, as a click copies them, and opened for the caller
    rows = await db.fetch(
        f"""INSERT INTO calls ({CALL_COLUMNS}, created_at) SELECT {AGENT_FIRST}, now() FROM sessions
            RETURNING bridge, tenant_id, {sealed.sealed_text("from_ct", "from_mask")} AS "from",
                      {sealed.sealed_text("to_ct", "to_mask")} AS "to" """
    )
    return [
        {
            "bridge": r["bridge"],
            "from": sealed.opened(r["tenant_id"], sealed.label("agent"), r["from"]),
            "to": sealed.opened(r["tenant_id"], sealed.label("customer"), r["to"]),
        }
        for r in rows
    ]


def served_session(http: httpx.Client, dids: list[str], **body: Any) -> Json:
    """open_session for a served process over a blocking client that carries its key: adds the DIDs, then the session."""
    r = http.post("/v1/dids/bulk", json={"dids": [{"number": n} for n in dids]})
    assert r.status_code == 200, r.text
    r = http.post("/v1/sessions", json=session_body(**body))
    assert r.status_code == 201, r.text
    result: Json = r.json()
    return result


def served_call_completed(http: httpx.Client, session: Json, within: float = 15) -> Json:
    """place_call (agent first) for a served process over a blocking client, then wait for the call to complete."""
    r = http.post(f"/v1/sessions/{session['id']}/calls", json={"first": "agent"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + within
    while (call := http.get(f"/v1/calls/{r.json()['id']}").json())["status"] != "completed":
        assert time.monotonic() < deadline, "the simulated call did not complete"
        time.sleep(0.1)
    result: Json = call
    return result


def report_for(
    call: Json, *, billing: int = 23, start: datetime | None = None, seconds: int | None = None, **extra: Any
) -> bytes:
    """A provider report of this call shaped like the provider's example (no mid), its times in the provider's zone."""
    start = start or datetime.now(UTC)
    fmt = "%Y-%m-%d %H:%M:%S"
    end = start + timedelta(seconds=billing + 5 if seconds is None else seconds)
    body = {
        "bridge": int(call["bridge"][1:]),
        "from": int(call["from"][1:]),
        "to": int(call["to"][1:]),
        "source": "C2C",
        "start_at": start.astimezone(IST).strftime(fmt),
        "end_at": end.astimezone(IST).strftime(fmt),
        "date": end.astimezone(IST).strftime(fmt),
        "unixtime": str(int(end.timestamp())),
        "duration": str(int((end - start).total_seconds())),
        "billing": str(billing),
        "status": "COMPLETED" if billing else "NOANSWER",
        "status1": "RECEIVED",
        "status2": "ANSWER" if billing else "NOANSWER",
        "recording_url": "",
        "hangup_by": "caller",
        **extra,
    }
    return json.dumps(body).encode()
