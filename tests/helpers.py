"""Shared test helpers: clocks, settings, keys, numbers, waiting, and checks several test modules use."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.settings import Settings

if TYPE_CHECKING:
    from tests.live import Live


def dsn_for(base: str, dbname: str) -> str:
    """The same server's DSN for another database."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/" + dbname))


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_settings(dsn: str, **overrides: object) -> Settings:
    """Settings for a test, pointing at its database."""
    values: dict[str, object] = {"database_url": dsn, "log_format": "json", "cooloff_seconds": 3600}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


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


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["type"].endswith(code)
    return body


CUSTOMER, AGENT = "+919876543210", "+918765432109"


def session_body(order: str = "ORD-1", customer: str = CUSTOMER, agent: str = AGENT, **extra: object) -> dict:
    """A create-session body (the contract's example pair unless told)."""
    return {"order_id": order, "customer": customer, "agent": agent, **extra}


# An agent-first call inserted straight into calls, its numbers copied sealed from its session as a click
# copies them: INSERT INTO calls ({CALL_COLUMNS}, created_at) SELECT {AGENT_FIRST}, <time> FROM sessions ...
CALL_COLUMNS = "id, tenant_id, session_id, first, from_ct, from_ix, from_mask, to_ct, to_ix, to_mask, bridge"
AGENT_FIRST = "gen_random_uuid(), tenant_id, id, 'agent', agent_ct, agent_ix, agent_mask, customer_ct, customer_ix, customer_mask, did"

ROUTE_TOKEN = "route-token-0123456789abcdef"  # the callback token of apps that tests route callers through


def route(client: httpx.AsyncClient, did: str, caller: str):  # type: ignore[no-untyped-def]
    """GET the provider's routing question for a caller dialling a DID (the app's callback token: ROUTE_TOKEN)."""
    return client.get(f"/v1/provider/thundersms/route/{ROUTE_TOKEN}", params={"did": did, "caller": caller})


CROSSED_LINES = """
    SELECT count(*) FROM (
        SELECT did, number FROM (
            SELECT did, customer_ix AS number FROM sessions WHERE status = 'active' AND expires_at > now()
            UNION ALL
            SELECT did, agent_ix FROM sessions WHERE status = 'active' AND expires_at > now()) x
        GROUP BY did, number HAVING count(*) > 1) y
"""


async def call_status(live: Live, keys: Keys, call_id: str, want: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        call = (await live.http.get(f"/v1/calls/{call_id}", headers=keys.a)).json()
        return call if call["status"] == want else None

    result: dict[str, Any] = await wait_for(reached)
    return result


def index_names(plan: dict[str, Any]) -> list[str]:
    """Every index an EXPLAIN (FORMAT JSON) plan node and its children scan."""
    found = [plan["Index Name"]] if "Index Name" in plan else []
    for child in plan.get("Plans", []):
        found += index_names(child)
    return found


async def index_in(db: Any, session_id: str, number: str) -> bytes:
    """A number's blind index under the tenant of this session (what bindings and lookups hold)."""
    from service.db import sealed

    return sealed.index(await db.fetchval("SELECT tenant_id FROM sessions WHERE id = $1::uuid", session_id), number)


def sealed_body(raw: bytes) -> bytes:
    """A raw provider body as the service stores it (sealed whole: service/db/sealed.py)."""
    from service.db import sealed

    return sealed.seal(None, sealed.REPORT_BODY, raw)


def opened_body(stored: bytes) -> bytes:
    """A stored provider body, opened."""
    from service.db import sealed

    return sealed.open_bytes(None, sealed.REPORT_BODY, bytes(stored))
