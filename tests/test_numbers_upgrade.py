"""The upgrade to numbers at rest: a clear-text database's every number sealed, indexed and masked, then its clear columns dropped."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service import crypto
from service.crypto import KeyRing
from service.db import backfill, schema, sealed
from service.db.idempotency import request_key
from service.logging import mask_number
from tests.test_migrations import V1, _fresh

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
CUSTOMER, AGENT, OTHER = "+919876543210", "+919812345678", "+14155550123"
DID = "+918068200000"


@pytest.fixture
def ring() -> Iterator[KeyRing]:
    """A fresh key ring installed as the process's for the test (the one before it put back after)."""
    before = crypto._INSTALLED[:]
    made = KeyRing.generate()
    crypto.install(made)
    try:
        yield made
    finally:
        crypto._INSTALLED[:] = before


async def _at_version(server_dsn: str, name: str, version: int) -> asyncpg.Connection:
    """A new database made as the release at this schema version made it: version 1's schema plus migrations."""
    conn = await _fresh(server_dsn, name)
    await conn.execute(V1)
    for migration in schema.migrations():
        if migration.version > version:
            break
        await conn.execute(migration.sql)
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", migration.version)
    return conn


@pytest.fixture
async def old(server_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A database at schema 14 (the last release with numbers in clear)."""
    conn = await _at_version(server_dsn, "upgrade_" + uuid.uuid4().hex[:8], backfill.SEALED_FROM - 1)
    try:
        yield conn
    finally:
        await conn.close()


async def _session(
    conn: asyncpg.Connection, tenant: int, customer: str, agent: str, *, status: str = "active", redacted: bool = False
) -> uuid.UUID:
    session_id = uuid.uuid4()
    ended = status != "active"
    await conn.execute(
        """INSERT INTO sessions (id, tenant_id, order_id, customer, agent, did, pool, status, close_reason, created_at,
                                 expires_at, closed_at, redacted_at)
           VALUES ($1, $2, $11, $3, $4, $5, 'default', $6, $7, $8::timestamptz, $8::timestamptz + interval '1 hour', $9, $10)""",
        session_id,
        tenant,
        mask_number(customer) if redacted else customer,
        mask_number(agent) if redacted else agent,
        DID,
        status,
        "ttl" if ended else None,
        T0,
        T0 + timedelta(minutes=5) if ended else None,
        T0 + timedelta(days=40) if redacted else None,
        f"o-{session_id}",
    )
    return session_id


async def _call(
    conn: asyncpg.Connection, tenant: int, session: uuid.UUID, first: str, from_: str, to: str, flow: str | None = None
) -> uuid.UUID:
    call_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO calls (id, tenant_id, session_id, first, from_number, to_number, bridge, flow, status, in_flight,
                              created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'completed', false, $9)""",
        call_id,
        tenant,
        session,
        first,
        from_,
        to,
        DID,
        flow,
        T0,
    )
    return call_id


async def _event(conn: asyncpg.Connection, tenant: int, type_: str, data: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO events (tenant_id, type, created_at, data) VALUES ($1, $2, $3, $4::jsonb)",
        tenant,
        type_,
        T0,
        json.dumps(data),
    )


class Made:
    """What the old release's rows held, to compare with what the upgrade made of them."""

    def __init__(self) -> None:
        self.tenant = 0
        self.sessions: dict[uuid.UUID, tuple[str, str, bool]] = {}
        self.calls: dict[uuid.UUID, tuple[str, str, str]] = {}
        self.bindings: list[tuple[str, str]] = []
        self.reports: dict[int, bytes] = {}
        self.idempotent: dict[str, bytes] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []


async def _fill_old(conn: asyncpg.Connection, sessions: int = 3) -> Made:
    """Rows in every table that holds a number, as the clear-text release wrote them (more than one batch of some)."""
    made = Made()
    made.tenant = tenant = await conn.fetchval("INSERT INTO tenants (name) VALUES ('acme') RETURNING id")
    await conn.execute(
        "INSERT INTO dids (number, tenant_id, pool, country) VALUES ($1, $2, 'default', 'IN')", DID, tenant
    )
    for i in range(sessions):
        customer, agent = f"+9198{i:08d}", f"+9197{i:08d}"
        sid = await _session(conn, tenant, customer, agent, status="closed" if i % 2 else "active")
        made.sessions[sid] = (customer, agent, False)
        await conn.execute(
            "INSERT INTO bindings (number, did, peer, session_id, ends_at) VALUES ($1, $2, $3, $4, $5), ($3, $2, $1, $4, $5)",
            customer,
            DID,
            agent,
            sid,
            T0,
        )
        made.bindings += [(customer, DID), (agent, DID)]
    main = await _session(conn, tenant, CUSTOMER, OTHER, status="closed")
    made.sessions[main] = (CUSTOMER, OTHER, False)
    redacted = await _session(conn, tenant, CUSTOMER, AGENT, status="expired", redacted=True)
    made.sessions[redacted] = (mask_number(CUSTOMER), mask_number(AGENT), True)
    call = await _call(conn, tenant, main, "agent", OTHER, CUSTOMER)
    made.calls[call] = ("agent", OTHER, CUSTOMER)
    customer_first = await _call(conn, tenant, main, "customer", CUSTOMER, OTHER)
    made.calls[customer_first] = ("customer", CUSTOMER, OTHER)
    flow = await _call(conn, tenant, main, "agent", OTHER, "flow:ivr1", flow="ivr1")
    made.calls[flow] = ("agent", OTHER, "flow:ivr1")
    old_call = await _call(conn, tenant, redacted, "agent", mask_number(AGENT), mask_number(CUSTOMER))
    made.calls[old_call] = ("agent", mask_number(AGENT), mask_number(CUSTOMER))
    body = json.dumps({"from": OTHER[1:], "to": CUSTOMER[1:], "bridge": DID[1:]}).encode()
    report = await conn.fetchval(
        "INSERT INTO provider_reports (body, outcome, bridge, tenant_id, call_id) VALUES ($1, 'matched', $2, $3, $4) "
        "RETURNING id",
        body,
        DID,
        tenant,
        call,
    )
    made.reports[report] = body
    await conn.execute(
        "INSERT INTO report_keys (key, report_id, received_at) VALUES ($1, $2, $3)", bytes(range(32)), report, T0
    )
    unmatched = b"from=919999999999&to=918068200000"
    made.reports[await conn.fetchval("INSERT INTO provider_reports (body) VALUES ($1) RETURNING id", unmatched)] = (
        unmatched
    )
    answer = json.dumps({"id": str(main), "customer": CUSTOMER, "agent": OTHER}).encode()
    await conn.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, status_code, body, created_at) "
        "VALUES ($1, 'k1', $2, 201, $3, $4), ($1, 'k2', $2, NULL, NULL, $4)",
        tenant,
        b"\x00" * 32,
        answer,
        T0,
    )
    made.idempotent["k1"] = answer
    made.events = [
        ("session.created", {"id": str(main), "customer": CUSTOMER, "agent": OTHER, "status": "active"}),
        ("call.completed", {"id": str(call), "session_id": str(main), "first": "agent", "from": OTHER, "to": CUSTOMER}),
        (
            "call.initiated",
            {"id": str(flow), "session_id": str(main), "first": "agent", "from": OTHER, "to": "flow:ivr1"},
        ),
        ("report.unmatched", {"id": 7, "body": unmatched.decode()}),
        ("pool.low_headroom", {"pool": "default", "headroom": 1}),
    ]
    for type_, data in made.events:
        await _event(conn, tenant, type_, data)
    return made


async def _check_sealed(conn: asyncpg.Connection, ring: KeyRing, made: Made, *, request_hashes: bool = True) -> None:
    """Every value of the old rows opens from its ciphertext, its index is the ring's, its mask the masked number.

    request_hashes=False: the stored requests' keyed hashes are not compared (a reindex does not rebuild them).
    """
    tenant = made.tenant
    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM sessions")}
    assert rows.keys() == made.sessions.keys()
    for sid, (customer, agent, redacted) in made.sessions.items():
        row = rows[sid]
        for party, number in (("customer", customer), ("agent", agent)):
            assert row[f"{party}_mask"] == mask_number(number)
            if redacted:
                assert row[f"{party}_ct"] is None and row[f"{party}_ix"] is None
            else:
                assert ring.decrypt_text(tenant, sealed.label(party), row[f"{party}_ct"]) == number
                assert row[f"{party}_ix"] == sealed.index(tenant, number)
                assert sealed.opened(tenant, sealed.label(party), sealed.as_text(row[f"{party}_ct"])) == number
    bindings = {(r["number_ix"], r["did"]) for r in await conn.fetch("SELECT number_ix, did FROM bindings")}
    assert bindings == {(sealed.index(tenant, n), d) for n, d in made.bindings}
    calls = {r["id"]: r for r in await conn.fetch("SELECT * FROM calls")}
    for cid, (first, from_, to) in made.calls.items():
        row = calls[cid]
        for side, party, number in (("from", first, from_), ("to", sealed.other(first), to)):
            if number.startswith("flow:") or "*" in number:
                assert row[f"{side}_ct"] is None and row[f"{side}_ix"] is None
                assert row[f"{side}_mask"] == number
            else:
                assert ring.decrypt_text(tenant, sealed.label(party), row[f"{side}_ct"]) == number
                assert row[f"{side}_ix"] == sealed.index(tenant, number) and row[f"{side}_mask"] == mask_number(number)
    for report_id, body in made.reports.items():
        stored = await conn.fetchval("SELECT body FROM provider_reports WHERE id = $1", report_id)
        assert stored[0] == crypto.FORMAT and ring.decrypt(None, sealed.REPORT_BODY, stored) == body
    identities = [tuple(r) for r in await conn.fetch("SELECT key, report_id FROM report_keys")]
    assert not request_hashes or identities == [(sealed.keyed_hash(None, bytes(range(32))), min(made.reports))]
    answers = dict(await conn.fetch("SELECT key, body FROM idempotency_keys"))
    assert answers["k2"] is None
    assert ring.decrypt(tenant, sealed.IDEMPOTENT_BODY, answers["k1"]) == made.idempotent["k1"]
    hashes = dict(await conn.fetch("SELECT key, request_hash FROM idempotency_keys"))
    assert not request_hashes or hashes == {
        "k1": request_key(tenant, bytes(32)),
        "k2": bytes(32),
    }  # a claim without answer keeps its own
    events = [
        (r["type"], json.loads(r["data"])) for r in await conn.fetch("SELECT type, data::text FROM events ORDER BY id")
    ]
    assert [t for t, _ in events] == [t for t, _ in made.events]
    for (type_, stored_data), (_, data) in zip(events, made.events, strict=True):
        assert sealed.open_event(tenant, type_, stored_data) == data
        for field in ("customer", "agent", "from", "body"):
            if field in stored_data:
                assert stored_data[field].startswith("\\x"), (type_, field)
    assert [r[0] for r in await conn.fetch("SELECT id FROM data_keys")] == [ring.current]


async def test_a_clear_text_database_upgraded_holds_every_number_sealed_and_no_clear_column(
    old: asyncpg.Connection, ring: KeyRing
) -> None:
    """Migrating a schema-14 database with rows in every table seals, indexes and masks each number, then drops the clear ones."""
    made = await _fill_old(old)
    done = await schema.migrate(old)
    assert done.applied[:2] == ["0015_sealed_numbers.sql", "0016_drop_clear_numbers.sql"]
    await _check_sealed(old, ring, made)
    clear = await old.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND (table_name, column_name) IN (('sessions', 'customer'), ('sessions', 'agent'), ('bindings', 'number'), "
        "('bindings', 'peer'), ('calls', 'from_number'), ('calls', 'to_number'))"
    )
    assert clear == []


async def test_the_fill_goes_in_batches_and_a_second_run_finds_nothing(old: asyncpg.Connection, ring: KeyRing) -> None:
    """The fill at schema 15 seals in batches of the size given, and run again (resumed) seals nothing more."""
    await old.execute(next(m for m in schema.migrations() if m.version == backfill.SEALED_FROM).sql)
    await old.execute("INSERT INTO schema_version (version) VALUES ($1)", backfill.SEALED_FROM)
    made = await _fill_old(old, sessions=7)
    first = await backfill.fill(old, batch=2)
    assert (first.sessions, first.bindings, first.calls) == (len(made.sessions), len(made.bindings), len(made.calls))
    assert (first.reports, first.idempotent, first.events) == (2, 1, 4)
    assert (await backfill.fill(old, batch=2)).total() == 0
    await schema.migrate(old)
    await _check_sealed(old, ring, made)


async def test_rows_an_old_version_writes_after_the_fill_are_sealed_before_the_clear_columns_go(
    old: asyncpg.Connection, ring: KeyRing
) -> None:
    """A clear row written between the fill and migration 0016 is sealed by the last round under the tables' locks."""
    await old.execute(next(m for m in schema.migrations() if m.version == backfill.SEALED_FROM).sql)
    await old.execute("INSERT INTO schema_version (version) VALUES ($1)", backfill.SEALED_FROM)
    made = await _fill_old(old)
    await backfill.fill(old)
    late = await _session(old, made.tenant, "+919800000077", OTHER)
    made.sessions[late] = ("+919800000077", OTHER, False)
    async with old.transaction():
        filled = await backfill.final_round(old)
    assert filled.sessions == 1
    await schema.migrate(old)
    await _check_sealed(old, ring, made)


async def test_migration_16_is_refused_while_a_clear_row_remains(old: asyncpg.Connection, ring: KeyRing) -> None:
    """Applied by hand before the fill, migration 0016 refuses with a sentence saying to run `masking migrate`."""
    await old.execute(next(m for m in schema.migrations() if m.version == backfill.SEALED_FROM).sql)
    made = await _fill_old(old, sessions=1)
    contract = next(m for m in schema.migrations() if m.version == backfill.SEALED_FROM + 1)
    with pytest.raises(asyncpg.RaiseError, match="numbers are still in clear"):
        await old.execute(contract.sql)
    assert await old.fetchval("SELECT count(*) FROM sessions WHERE customer_mask IS NULL") == len(made.sessions)
