"""Round trips per request: how many statements a create, an ingest and a get send to PostgreSQL, held to a budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app, request_context
from service.db import pool as db_pool
from tests.factories import calls_for_every_session, create_session, pool, report_for
from tests.helpers import FakeClock, Keys, make_settings

# Today's statements per request, with the caches warm (the key, pool-settings and DID-tenant caches, each
# connection's prepared statements). A change that adds a round trip fails here; one that removes
# one should lower its budget. See docs/performance.md, "Round trips per request". A create is one
# statement: the repeat check, the allocation and its event together (it was five: BEGIN, the repeat
# check, the allocation, the event, COMMIT).
BUDGET = {"create": 1, "ingest": 1, "get": 1}


class Statements:
    """Every statement the service's connections send, in order (asyncpg's query loggers)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def add(self, record: Any) -> None:
        self.sent.append(" ".join(record.query.split())[:90])

    async def during(self, request: Any) -> tuple[httpx.Response, list[str]]:
        """The response of an awaited request, and the statements sent while it ran."""
        await asyncio.sleep(0)
        start = len(self.sent)
        response = await request
        await asyncio.sleep(0.05)  # asyncpg calls query loggers soon after, not during, the query
        return response, self.sent[start:]


@pytest.fixture
async def counted(
    dsn: str, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Statements, str]]:
    """The app in-loop, every connection its pools open logging its statements; the client, the log, the callback."""
    statements = Statements()
    init = db_pool._init_connection

    async def logged(conn: asyncpg.Connection) -> None:
        await init(conn)
        conn.add_query_logger(statements.add)

    monkeypatch.setattr(db_pool, "_init_connection", logged)
    # One connection: each request finds its statements prepared by the warm-up request before it.
    app = create_app(make_settings(dsn, db_pool_size=1), dsn=dsn, clock=FakeClock(), background=False)
    async with LifespanManager(app):
        app.state.runtime.keys.ttl = 3600  # warm means warm however slow the machine (revocation is not tested here)
        callback = f"/v1/provider/thundersms/callback/{app.state.runtime.callback_token}"
        transport = httpx.ASGITransport(app=request_context(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://masking.test") as http:
            yield http, statements, callback


def show(name: str, sent: list[str]) -> None:
    print(f"\n{name}: {len(sent)} round trips (budget {BUDGET[name]})")
    for n, statement in enumerate(sent, 1):
        print(f"  {n}. {statement}")


async def test_create_ingest_and_get_each_send_no_more_statements_than_today(
    counted: tuple[httpx.AsyncClient, Statements, str], keys: Keys, db: asyncpg.Connection
) -> None:
    """A warm create sends at most 5 statements, a matched ingest 1, a get 1."""
    http, statements, callback = counted
    await pool(http, keys.a, dids=1)  # one bridge: the first ingest warms its DID-tenant cache
    auth = keys.auth(keys.a_sessions)
    sessions, sent = [], []
    for i in range(2):  # the first warms the caches, the second is counted
        pair = f"+9198765{i:05d}", f"+9187654{i:05d}"
        response, created = await statements.during(create_session(http, auth, f"ORD-{i}", *pair))
        assert response.status_code == 201, response.text
        sessions.append(response.json())
        sent.append(created)
    show("create", created)
    print("  (cold, caches empty:", *sent[0], sep="\n    ")

    for call in await calls_for_every_session(db):
        response, ingested = await statements.during(http.post(callback, content=report_for(call)))
        assert response.status_code == 200, response.text
    show("ingest", ingested)
    assert await db.fetchval("SELECT count(*) FROM calls WHERE status = 'completed'") == 2

    for session in sessions:
        response, read = await statements.during(http.get(f"/v1/sessions/{session['id']}", headers=auth))
        assert response.status_code == 200, response.text
    show("get", read)

    assert len(created) <= BUDGET["create"]
    assert len(ingested) <= BUDGET["ingest"]
    assert len(read) <= BUDGET["get"]
