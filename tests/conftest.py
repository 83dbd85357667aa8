"""Test harness: one PostgreSQL per run, a fresh database per test from a schema template, the app in-loop."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app, request_context
from service.broker.tenants import create_key
from service.db.schema import migrate
from service.embedded import EmbeddedPostgres
from service.settings import Settings
from tests import processes  # noqa: F401  (installs the run's key ring)
from tests.helpers import FakeClock, Keys, dsn_for, make_settings

TEMPLATE = "masking_template"

# The run's key ring is installed by tests.processes (imported above), for pytest and standalone runs alike.


@pytest.fixture(scope="session", autouse=True)
def privacy_checked_logs() -> None:
    """In-process apps log through the service's own pipeline into the run's log folder."""
    from service.logging import configure_logging
    from tests.processes import LOG_DIR

    configure_logging("json", "debug", path=str(LOG_DIR / "in-process.log"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close every run with the privacy scan of all its logs; a leak fails the run."""
    from tests.privacy import scan
    from tests.processes import LOG_DIR

    count, leaked = scan(LOG_DIR)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(f"privacy scan: {count} log lines, {len(leaked)} leaks")
        for line in leaked[:20]:
            reporter.write_line(f"  leak: {line}")
    if leaked:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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


@pytest.fixture
async def keys(db: asyncpg.Connection) -> Keys:
    made = [
        await create_key(db, tenant, [scope])  # type: ignore[list-item]
        for tenant in ("tenant-a", "tenant-b")
        for scope in ("sessions", "ops")
    ]
    return Keys(*(k.api_key for k in made))


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Names the service resolves to the addresses the test sets (in-process only: the loop's getaddrinfo)."""
    table: dict[str, str] = {}
    real = socket.getaddrinfo

    def resolve(name: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        if name not in table:
            return real(name, port, family, type, proto, flags)
        ip = ipaddress.ip_address(table[name])
        if ip.version == 6:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(ip), port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(ip), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    yield table
