"""The provider's callback report: one effect per report, final outcomes for odd values, one round trip, no starving."""

import asyncio
import json
import socket
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from service.broker import reports
from service.broker.reports import PENDING_GRACE, rematch_pending
from service.provider.simulator import Fault
from tests.factories import IST, calls_for_every_session, create_session, open_session, pool, report_for
from tests.helpers import Keys, assert_problem, opened_body, sealed_body
from tests.live import Live, live_service
from tests.processes import ServeProcess, masking_env

DID = "+918068281234"
TOKEN = "reports-callback-token-0123456789"
MATCHING = reports.Matching(zone=IST, timeout_seconds=7200, tolerance_seconds=300)


@pytest.fixture
async def live(dsn: str) -> Any:
    async with live_service(dsn) as service:
        yield service


async def click(live: Live, keys: Keys, session: dict[str, Any]) -> dict[str, Any]:
    live.sim.inject(Fault(report="none"))
    r = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
    assert r.status_code == 202, r.text
    result: dict[str, Any] = r.json()
    return result


async def read(live: Live, keys: Keys, path: str) -> dict[str, Any]:
    result: dict[str, Any] = (await live.http.get(path, headers=keys.a)).json()
    return result


async def outcomes(db: asyncpg.Connection) -> Counter[tuple[str, str | None]]:
    rows = await db.fetch("SELECT outcome, reason FROM provider_reports")
    return Counter((r["outcome"], r["reason"]) for r in rows)


async def test_a_resent_report_does_not_complete_the_next_call(live: Live, keys: Keys, db: asyncpg.Connection) -> None:
    """Call 1's report re-sent while call 2 is in flight is a duplicate; call 2's own report completes call 2."""
    session = await open_session(live.http, keys.a, dids=[DID], max_calls=2)
    first = await click(live, keys, session)
    r1 = report_for(first, billing=23)
    assert (await live.http.post(live.callback, content=r1)).status_code == 200
    assert (await read(live, keys, f"/v1/calls/{first['id']}"))["status"] == "completed"
    second = await click(live, keys, session)
    assert (await live.http.post(live.callback, content=r1)).status_code == 200
    assert (await read(live, keys, f"/v1/calls/{second['id']}"))["status"] == "initiated"
    assert (await read(live, keys, f"/v1/sessions/{session['id']}"))["status"] == "active"
    r2 = report_for(second, billing=61)
    assert (await live.http.post(live.callback, content=r2)).status_code == 200
    done = await read(live, keys, f"/v1/calls/{second['id']}")
    assert (done["status"], done["billing_seconds"]) == ("completed", 61)
    closed = await read(live, keys, f"/v1/sessions/{session['id']}")
    assert (closed["status"], closed["close_reason"]) == ("closed", "max_calls_reached")
    assert await outcomes(db) == {("matched", None): 2, ("duplicate", "same_report"): 1}


async def test_a_report_of_a_conversation_before_the_call_was_placed_is_not_applied_to_it(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """A different report about call 1, its conversation begun before call 2 was placed, leaves call 2 in flight."""
    async with live_service(dsn, report_clock_tolerance_seconds=2) as live:
        session = await open_session(live.http, keys.a, dids=[DID], max_calls=3)
        first = await click(live, keys, session)
        began = datetime.now(UTC)
        await live.http.post(live.callback, content=report_for(first, billing=0, start=began, seconds=1))
        await asyncio.sleep(3.5)
        second = await click(live, keys, session)
        late = report_for(first, billing=1, start=began, seconds=2)
        assert (await live.http.post(live.callback, content=late)).status_code == 200
        assert (await read(live, keys, f"/v1/calls/{second['id']}"))["status"] == "initiated"
        assert (await read(live, keys, f"/v1/calls/{first['id']}"))["status"] == "missed"
    assert await outcomes(db) == {("matched", None): 1, ("duplicate", "call_already_reported"): 1}


@pytest.mark.parametrize(
    ("zone", "reason"), [("UTC", "before_call"), ("Asia/Tokyo", "times_in_future")], ids=["west", "east"]
)
async def test_a_misconfigured_provider_time_zone_leaves_reports_unmatched_and_says_so(
    live: Live, keys: Keys, db: asyncpg.Connection, zone: str, reason: str
) -> None:
    """Times written in another zone than MASKING_PROVIDER_TIMEZONE: unmatched with a reason, a metric, a log line."""
    session = await open_session(live.http, keys.a, dids=[DID])
    call = await click(live, keys, session)
    now = datetime.now(ZoneInfo(zone)).replace(tzinfo=IST)  # the provider's wall clock, read as if in IST
    assert (await live.http.post(live.callback, content=report_for(call, start=now))).status_code == 200
    assert (await read(live, keys, f"/v1/calls/{call['id']}"))["status"] == "initiated"
    assert await outcomes(db) == {("unmatched", reason): 1}
    metrics = (await live.http.get("/metrics")).text
    assert f'masking_report_time_mismatch_total{{reason="{reason}"}}' in metrics
    listed = (await live.http.get("/v1/reports", params={"matched": "false"}, headers=keys.a)).json()["items"]
    assert [r["reason"] for r in listed] == [reason]


async def test_odd_field_values_are_stored_answered_and_settled(live: Live, keys: Keys, db: asyncpg.Connection) -> None:
    """Year 1, huge durations and a NUL in status: 200, a final outcome, the call finished, the odd fields empty."""
    session = await open_session(live.http, keys.a, dids=[DID])
    call = await click(live, keys, session)
    odd = json.loads(report_for(call))
    odd.update(start_at="0001-01-01 00:00:00", duration=99999999999, billing=3000000000, status="COMP\u0000LETED")
    assert (await live.http.post(live.callback, content=json.dumps(odd).encode())).status_code == 200
    assert [r["outcome"] for r in await db.fetch("SELECT outcome FROM provider_reports")] == ["matched"]
    done = await read(live, keys, f"/v1/calls/{call['id']}")
    assert (done["started_at"], done["duration_seconds"], done["billing_seconds"]) == (None, None, None)
    assert done["provider"]["status"] is None and done["status"] == "missed"
    stored = opened_body(await db.fetchval("SELECT body FROM provider_reports"))
    assert json.loads(stored)["billing"] == 3000000000, "the raw body is kept as sent"


async def test_one_bad_pending_report_does_not_stop_the_sweepers_batch(
    live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Pending reports (stored by a process that died before matching): an odd one first, a valid one behind it."""
    session = await open_session(live.http, keys.a, dids=[DID])
    call = await click(live, keys, session)
    odd = json.loads(report_for(call))
    odd.update(start_at="0001-01-01 00:00:00", billing=3000000000, status="A\u0000B", bridge="+" + "9" * 15)
    received = datetime.now(UTC) - 2 * PENDING_GRACE
    for raw in (json.dumps(odd).encode(), b"\xff\xfe not json", report_for(call)):
        await db.execute("INSERT INTO provider_reports (body, received_at) VALUES ($1, $2)", sealed_body(raw), received)
    await rematch_pending(db, MATCHING, datetime.now(UTC))
    assert Counter(r["outcome"] for r in await db.fetch("SELECT outcome FROM provider_reports")) == {
        "unmatched": 1,
        "unparseable": 1,
        "matched": 1,
    }
    assert (await read(live, keys, f"/v1/calls/{call['id']}"))["status"] == "completed"


async def test_a_pending_report_that_cannot_be_applied_tells_its_tenant(
    live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Applying fails (a fault injected in the database): the report settles unmatched and its DID's tenant gets report.unmatched."""
    session = await open_session(live.http, keys.a, dids=[DID])
    call = await click(live, keys, session)
    await db.execute(
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON report_keys FOR EACH ROW EXECUTE FUNCTION refuse();
        """
    )
    received = datetime.now(UTC) - 2 * PENDING_GRACE
    await db.execute(
        "INSERT INTO provider_reports (body, received_at) VALUES ($1, $2)", sealed_body(report_for(call)), received
    )
    await rematch_pending(db, MATCHING, datetime.now(UTC))
    row = await db.fetchrow("SELECT outcome, reason, bridge FROM provider_reports")
    assert (row["outcome"], row["reason"], row["bridge"]) == ("unmatched", "matching_failed", session["masked_number"])
    feed = await read(live, keys, "/v1/events?type=report.unmatched")
    assert [e["data"]["reason"] for e in feed["items"]] == ["matching_failed"]
    assert feed["items"][0]["data"]["bridge"] == session["masked_number"]


async def test_a_report_that_parses_is_stored_and_matched_in_one_statement(
    live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Ingest runs one statement for a matched report and one for its copy: one round trip each."""
    session = await open_session(live.http, keys.a, dids=[DID])
    call = await click(live, keys, session)
    statements: list[str] = []
    db.add_query_logger(lambda record: statements.append(record.query))
    body = report_for(call)
    first = await reports.ingest(db, body, MATCHING, datetime.now(UTC))
    again = await reports.ingest(db, body, MATCHING, datetime.now(UTC))
    await asyncio.sleep(0.1)  # asyncpg calls query loggers soon after, not during, the query
    assert (first.outcome, again.outcome) == ("matched", "duplicate")
    assert first.call is not None and first.call.status == "completed"
    assert len(statements) == 2


async def test_two_copies_on_two_processes_at_once_complete_the_call_once(
    dsn: str, db: asyncpg.Connection, keys: Keys
) -> None:
    """The same report posted to two service processes at the same moment, for 20 calls: one match, one duplicate."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN=TOKEN, MASKING_PROVIDER="simulator")
    with ServeProcess(env) as one, ServeProcess(env) as two:
        async with httpx.AsyncClient(base_url=one.url, timeout=30) as http:
            await pool(http, keys.a, dids=[f"+91806820{i:04d}" for i in range(20)])
            for i in range(20):
                await open_session(http, keys.a, order=f"o{i}", customer=f"+9198700{i:05d}", agent=f"+9187600{i:05d}")
            bodies = [report_for(call) for call in await calls_for_every_session(db)]

            async def both(body: bytes) -> list[int]:
                answers = await asyncio.gather(
                    *(http.post(f"{p.url}/v1/provider/thundersms/callback/{TOKEN}", content=body) for p in (one, two))
                )
                return [a.status_code for a in answers]

            statuses = await asyncio.gather(*(both(b) for b in bodies))
    assert all(s == [200, 200] for s in statuses)
    assert Counter(r["outcome"] for r in await db.fetch("SELECT outcome FROM provider_reports")) == {
        "matched": 20,
        "duplicate": 20,
    }
    assert await db.fetchval("SELECT count(*) FROM calls WHERE status = 'completed'") == 20
    assert await db.fetchval("SELECT count(DISTINCT report_id) FROM calls") == 20


def _slow_body(port: int, path: str, auth: str = "") -> socket.socket:
    """A client that sends a POST's headers and one byte of its 200-byte body, then goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port))
    extra = f"Authorization: {auth}\r\n" if auth else ""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{"
    sock.sendall(head.encode())
    return sock


async def test_slow_callback_bodies_hold_no_pooled_connection(dsn: str, keys: Keys) -> None:
    """Callbacks and creates stuck mid-body on a two-connection pool: a session is still created; they end with 408."""
    async with live_service(dsn, db_pool_size=2, body_timeout_seconds=3) as live:
        await pool(live.http, keys.a, dids=[DID])
        port = int(live.url.rsplit(":", 1)[1])
        auth = Keys.auth(keys.a_sessions)["Authorization"]
        stuck = [_slow_body(port, live.callback) for _ in range(6)]
        stuck += [_slow_body(port, "/v1/sessions", auth) for _ in range(4)]
        try:
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await open_session(live.http, keys.a)
            assert time.monotonic() - started < 2.5, "answered before the stuck bodies timed out"
            answers = await asyncio.gather(*(asyncio.to_thread(_answer, s) for s in stuck))
        finally:
            for s in stuck:
                s.close()
    assert all(a.startswith(b"HTTP/1.1 408") and b"application/problem+json" in a for a in answers), answers[:1]
    assert all(b'"code":"request_timeout"' in a for a in answers)


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(15)
    data = b""
    while b"}" not in data.partition(b"\r\n\r\n")[2]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_a_request_that_cannot_get_a_connection_answers_503_quickly(dsn: str, keys: Keys) -> None:
    """Every pooled connection busy for longer than the acquire timeout: 503 database_unavailable, not a hang."""
    async with live_service(dsn, db_pool_size=1, db_acquire_timeout_seconds=1) as live:
        await pool(live.http, keys.a, dids=[DID])
        holder = await asyncpg.connect(dsn)
        try:
            await holder.execute("BEGIN; LOCK TABLE dids IN ACCESS EXCLUSIVE MODE")
            slow = asyncio.create_task(create_session(live.http, keys.a))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            r = await create_session(live.http, keys.a, "o2")
            assert r.status_code == 503 and r.json()["code"] == "database_unavailable"
            assert time.monotonic() - started < 5
            await holder.execute("ROLLBACK")
            assert (await slow).status_code == 201
        finally:
            await holder.close()


async def test_every_list_refuses_a_cursor_of_non_ascii_digits_and_report_pages_walk_once(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """'٣' is not a cursor of reports, sessions or events (422 naming it); pages of unmatched reports walk each once."""
    tenant_a = await db.fetchval("SELECT id FROM tenants WHERE name = 'tenant-a'")
    await db.executemany(
        "INSERT INTO provider_reports (body, received_at, outcome, reason, tenant_id) VALUES ($1, now(), 'unmatched', 'no_call', $2)",
        [(sealed_body(f"report {i}".encode()), tenant_a) for i in range(5)],
    )
    for path, field in (("/v1/reports", "cursor"), ("/v1/sessions", "cursor"), ("/v1/events", "after")):
        for bad in ("٣", "12٣", "²", "nonsense!"):
            problem = assert_problem(
                await client.get(path, params={field: bad}, headers=keys.a), 422, "invalid_request"
            )
            assert problem["field"] == field and f"`{field}`" in problem["detail"]
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"matched": "false", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/reports", params=params, headers=keys.a)).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor.isascii() and "=" not in cursor
    assert len(seen) == 5 == len(set(seen)) and seen == sorted(seen, reverse=True)
