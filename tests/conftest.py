"""Test harness: one PostgreSQL per run, a fresh database per test from a schema template, the app in-loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app, request_context
from service.broker.tenants import create_key
from service.db.schema import migrate
from service.embedded import EmbeddedPostgres
from service.settings import Settings

TEMPLATE = "masking_template"


def dsn_for(base: str, dbname: str) -> str:
    """The same server's DSN for another database."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session", autouse=True)
def privacy_checked_logs() -> None:
    """In-process apps log through the service's own pipeline into the run's log folder."""
    from service.logging import configure_logging
    from tests.processes import LOG_DIR

    configure_logging("json", "debug", path=str(LOG_DIR / "in-process.log"))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A PostgreSQL for the whole run: MASKING_DATABASE_URL, or an embedded one in a temporary folder."""
    if os.environ.get("MASKING_DATABASE_URL"):
        yield os.environ["MASKING_DATABASE_URL"]
        return
    root = tempfile.mkdtemp(prefix="masking-test-")
    server = EmbeddedPostgres(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def template(server_dsn: str) -> str:
    """A database holding the schema, copied for each test."""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_for(server_dsn, TEMPLATE))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE


@pytest.fixture
async def dsn(server_dsn: str, template: str) -> AsyncIterator[str]:
    """A fresh database with the schema, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        yield dsn_for(server_dsn, name)
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for setting up and checking with SQL."""
    from service.db.pool import _init_connection

    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    try:
        yield conn
    finally:
        await conn.close()


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(dsn: str, **overrides: object) -> Settings:
    """Settings for a test, pointing at its database."""
    values: dict[str, object] = {"database_url": dsn, "log_format": "json", "cooloff_seconds": 3600}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(dsn: str) -> Settings:
    return make_settings(dsn)


@pytest.fixture
async def client(settings: Settings, dsn: str, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """The app in the test's event loop, over httpx's ASGI transport, with a fake clock and no sweeper."""
    app = create_app(settings, dsn=dsn, clock=clock, background=False)
    # The raw app, not manager.app: asgi-lifespan hands every request the same state dict, which
    # would share Litestar's per-request state between requests.
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=request_context(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://masking.test") as http:
            yield http


class Keys:
    """API keys of two tenants, A and B, each with a sessions and an ops key."""

    def __init__(self, a_sessions: str, a_ops: str, b_sessions: str, b_ops: str) -> None:
        self.a_sessions, self.a_ops, self.b_sessions, self.b_ops = a_sessions, a_ops, b_sessions, b_ops

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    @property
    def a(self) -> dict[str, str]:
        return self.auth(self.a_ops)

    @property
    def b(self) -> dict[str, str]:
        return self.auth(self.b_ops)


@pytest.fixture
async def keys(db: asyncpg.Connection) -> Keys:
    made = [
        await create_key(db, tenant, [scope])  # type: ignore[list-item]
        for tenant in ("tenant-a", "tenant-b")
        for scope in ("sessions", "ops")
    ]
    return Keys(*(k.api_key for k in made))


async def add_dids(
    client: httpx.AsyncClient, headers: dict[str, str], numbers: list[str], pool: str = "default"
) -> None:
    """Add DIDs to a pool through the API."""
    response = await client.post(
        "/v1/dids/bulk", json={"dids": [{"number": n, "pool": pool} for n in numbers]}, headers=headers
    )
    assert response.status_code == 200, response.text


def did_numbers(count: int, start: int = 0, prefix: str = "+9180682") -> list[str]:
    """Valid Indian landline-style DIDs."""
    return [f"{prefix}{start + i:05d}" for i in range(count)]


def mobile_numbers(count: int, start: int = 0, prefix: str = "+91987") -> list[str]:
    """Valid Indian mobile numbers."""
    return [f"{prefix}{start + i:07d}" for i in range(count)]


async def wait_for(predicate, within: float = 10.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll an async predicate until it returns something truthy, or fail after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await predicate()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
