"""A Hypothesis state machine drives the broker at random and checks its rules with SQL after every step."""

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from service.app import create_app, request_context
from service.broker.sweeps import sweep_expired
from service.broker.tenants import create_key
from service.db import sealed
from service.db.pool import _init_connection
from tests.helpers import FakeClock, make_settings

T = TypeVar("T")
COOLOFF = 300
IN_DIDS = ["+918068200001", "+918068200002", "+918068200003"]
US_DIDS = ["+14155550101"]
CUSTOMERS = ["+919870000001", "+919870000002", "+919870000003", "+14155550199"]
AGENTS = ["+918760000001", "+918760000002", "+918760000003"]

# Independent of the service's SQL: the rules written straight from the contract, over all sessions.
ACTIVE = "status = 'active' AND expires_at > $1"
ENDED_AT = "coalesce(closed_at, expires_at)"

CROSSED = f"""
SELECT count(*) FROM (
    SELECT did, n FROM (SELECT did, customer_ix AS n FROM sessions WHERE {ACTIVE}
                        UNION ALL SELECT did, agent_ix FROM sessions WHERE {ACTIVE}) x
    GROUP BY did, n HAVING count(*) > 1) y
"""

COOLOFF_BROKEN = f"""
SELECT count(*) FROM sessions old JOIN sessions new
  ON new.did = old.did AND new.id <> old.id
 AND new.created_at >= {ENDED_AT.replace("closed_at", "old.closed_at").replace("expires_at", "old.expires_at")}
 AND new.created_at < {ENDED_AT.replace("closed_at", "old.closed_at").replace("expires_at", "old.expires_at")}
                      + make_interval(secs => $1)
 AND (new.customer_ix IN (old.customer_ix, old.agent_ix) OR new.agent_ix IN (old.customer_ix, old.agent_ix))
 AND NOT (least(new.customer_ix, new.agent_ix) = least(old.customer_ix, old.agent_ix)
          AND greatest(new.customer_ix, new.agent_ix) = greatest(old.customer_ix, old.agent_ix))
"""

ELIGIBLE = f"""
WITH geo AS (SELECT EXISTS (SELECT 1 FROM dids WHERE pool = 'default' AND status = 'active' AND country = $4) AS only)
SELECT d.number FROM dids d, geo
WHERE d.pool = 'default' AND d.status = 'active' AND (NOT geo.only OR d.country = $4)
  AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.did = d.number AND s.{ACTIVE.replace("expires_at", "s.expires_at")}
                  AND (s.customer_ix IN ($2, $3) OR s.agent_ix IN ($2, $3)))
  AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.did = d.number
                  AND NOT (s.{ACTIVE.replace("expires_at", "s.expires_at")})
                  AND coalesce(s.closed_at, s.expires_at) > $1 - make_interval(secs => $5)
                  AND (s.customer_ix IN ($2, $3) OR s.agent_ix IN ($2, $3))
                  AND NOT (least(s.customer_ix, s.agent_ix) = least($2, $3)
                           AND greatest(s.customer_ix, s.agent_ix) = greatest($2, $3)))
"""


class Harness:
    """The app, a database connection and a clock, driven from synchronous Hypothesis rules."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.app = create_app(make_settings(dsn, cooloff_seconds=COOLOFF), dsn=dsn, clock=self.clock, background=False)
        self.manager: LifespanManager = self.run(self._start())
        transport = httpx.ASGITransport(app=request_context(self.app))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://masking.test")
        self.db: asyncpg.Connection = self.run(asyncpg.connect(dsn))
        self.run(_init_connection(self.db))
        self.headers: dict[str, str] = {}

    async def _start(self) -> LifespanManager:
        manager = LifespanManager(self.app)  # must be made inside the loop it will run in
        await manager.__aenter__()
        return manager

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def reset(self) -> None:
        self.run(self.db.execute("TRUNCATE tenants, idempotency_keys, bindings RESTART IDENTITY CASCADE"))
        key = self.run(create_key(self.db, "t", ["ops"]))
        self.headers = {"Authorization": f"Bearer {key.api_key}"}
        for number in IN_DIDS + US_DIDS:
            r = self.run(self.http.post("/v1/dids", json={"number": number}, headers=self.headers))
            assert r.status_code == 201

    def close(self) -> None:
        self.run(self.http.aclose())
        self.run(self.db.close())
        self.run(self.manager.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture
def harness(dsn: str) -> Iterator[Harness]:
    h = Harness(dsn)
    try:
        yield h
    finally:
        h.close()


def test_broker_rules_hold_under_random_operations(harness: Harness) -> None:
    """Creates, closes, expiries, TTL changes, DID status changes and a moving clock never break the rules."""
    h = harness

    class Broker(RuleBasedStateMachine):
        sessions = Bundle("sessions")

        def __init__(self) -> None:
            super().__init__()
            h.reset()
            self.exhausted = 0

        def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
            response = h.run(h.http.request(method, url, headers=h.headers, **kwargs))
            assert response.status_code < 500, response.text
            return response

        @rule(
            target=sessions,
            customer=st.sampled_from(CUSTOMERS),
            agent=st.sampled_from(AGENTS),
            order=st.sampled_from(["o1", "o2", "o3"]),
            ttl=st.sampled_from([60, 200, 3600]),
        )
        def create(self, customer: str, agent: str, order: str, ttl: int) -> str:
            now = h.clock()
            country = "US" if customer.startswith("+1") else "IN"
            # the oracle compares blind indexes, as the stored rows hold (service/db/sealed.py)
            tenant = h.run(h.db.fetchval("SELECT id FROM tenants WHERE name = 't'"))
            pair = sealed.indexes(tenant, [customer, agent])
            eligible = h.run(h.db.fetch(ELIGIBLE, now, *pair, country, COOLOFF))
            body = {"order_id": order, "customer": customer, "agent": agent, "ttl_seconds": ttl}
            r = self.call("POST", "/v1/sessions", json=body)
            if r.status_code == 409 and r.json()["code"] == "conflicting_repeat":
                # The pair's live session for this order has another TTL: a repeat may not change it.
                assert r.json()["fields"] == ["ttl_seconds"]
                return ""
            if r.status_code == 409:
                assert r.json()["code"] == "pool_exhausted"
                assert eligible == [], f"pool_exhausted while {eligible} were eligible"
                self.exhausted += 1
                return ""
            assert r.status_code in (200, 201), r.text
            session = r.json()
            if r.status_code == 201:
                assert session["masked_number"] in {e["number"] for e in eligible}
            return str(session["id"])

        @rule(session=sessions)
        def close(self, session: str) -> None:
            if session:
                assert self.call("POST", f"/v1/sessions/{session}/close").status_code == 200

        @rule(session=sessions, ttl=st.sampled_from([60, 100, 1000]))
        def change_ttl(self, session: str, ttl: int) -> None:
            if session:
                r = self.call("PATCH", f"/v1/sessions/{session}", json={"ttl_seconds": ttl})
                assert r.status_code in (200, 409)

        @rule(customer=st.sampled_from(CUSTOMERS))
        def expire_customer(self, customer: str) -> None:
            assert self.call("POST", "/v1/sessions/expire", json={"customer": customer}).status_code == 200

        @rule(did=st.sampled_from(IN_DIDS + US_DIDS), status=st.sampled_from(["active", "draining", "retired"]))
        def set_did_status(self, did: str, status: str) -> None:
            r = self.call("PATCH", f"/v1/dids/{did}", json={"status": status})
            assert r.status_code in (200, 409)

        @rule(seconds=st.integers(min_value=0, max_value=400))
        def tick(self, seconds: int) -> None:
            h.clock.advance(seconds)

        @rule()
        def sweep(self) -> None:
            h.run(sweep_expired(h.db, h.clock()))

        @invariant()
        def no_crossed_lines(self) -> None:
            assert h.run(h.db.fetchval(CROSSED, h.clock())) == 0

        @invariant()
        def cool_off_holds(self) -> None:
            assert h.run(h.db.fetchval(COOLOFF_BROKEN, COOLOFF)) == 0

        @invariant()
        def retired_dids_carry_nothing(self) -> None:
            busy = h.run(
                h.db.fetchval(
                    f"SELECT count(*) FROM sessions s JOIN dids d ON d.number = s.did "
                    f"WHERE d.status = 'retired' AND s.{ACTIVE.replace('expires_at', 's.expires_at')}",
                    h.clock(),
                )
            )
            assert busy == 0

    run_state_machine_as_test(
        Broker,
        settings=hsettings(
            max_examples=30,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_allocation_and_the_exhaustion_count_run_the_one_text_of_the_eligibility_rules() -> None:
    """allocate.sql and exhaustion.sql each run rules.sql's geo and barred CTEs as written, so they cannot drift."""
    from service.db import Query
    from service.db.sessions.create import ALLOCATE, EXHAUSTION, RULES

    rules = Query(RULES).sql  # both statements name the rules' parameters first, so their numbers agree
    assert "geo AS (" in rules and "barred AS (" in rules
    assert rules in ALLOCATE.sql and rules in EXHAUSTION.sql
    assert ALLOCATE.sql.count("FROM bindings\n") == EXHAUSTION.sql.count("FROM bindings\n") == 1
