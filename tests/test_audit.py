"""The audit log: recorded in the action's transaction, listed over HTTP per tenant, append-only in the database."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from litestar import post
from litestar.params import FromPath

from service.api.audit import audit_context
from service.api.deps import Db, MaskingRequest, require_key
from service.app import create_app, request_context
from service.broker import audit, sweeps
from service.broker.audit import Actor, Target
from service.broker.errors import InvalidRequest
from tests.helpers import FakeClock, Keys, make_settings

API_KEY = Actor.api_key("41", "msk_AbCd1234")
CONSOLE = Actor.console("42")
CLI = Actor.cli("ops@host-1")


async def _tenant(db: asyncpg.Connection, name: str) -> int:
    tenant_id: int = await db.fetchval("SELECT id FROM tenants WHERE name = $1", name)
    return tenant_id


async def _record(
    db: asyncpg.Connection,
    tenant_id: int | None,
    at: datetime,
    actor: Actor = API_KEY,
    action: audit.Action = "did.drain",
    target: Target | None = None,
    reason: str | None = None,
) -> int:
    return await audit.record(
        db, tenant_id, actor, action, target or Target("did", "+918068200000"), reason, "203.0.113.9", "req-1", at
    )


async def _list(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/audit", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_ops_actions_are_listed_with_who_what_when_and_why(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """Each entry has the contract's shape; the actor is a key (id, name), a key's console session, or a CLI user."""
    a = await _tenant(db, "tenant-a")
    first = await _record(db, a, clock(), API_KEY, "did.drain", Target("did", "+918068200000"))
    await _record(db, a, clock(), CONSOLE, "session.reveal", Target("session", "5f0c"), reason="customer complaint #88")
    await _record(db, a, clock(), CLI, "sessions.expire", Target("order", "ord-7"))
    page = await _list(client, keys.a)
    assert [e["action"] for e in page["items"]] == ["did.drain", "session.reveal", "sessions.expire"]
    assert page["items"][0] == {
        "id": f"aud_{first}",
        "at": clock().isoformat().replace("+00:00", "Z"),
        "tenant_id": a,
        "actor": {"key_id": "41", "key_name": "msk_AbCd1234"},
        "action": "did.drain",
        "target": {"type": "did", "id": "+918068200000"},
        "reason": None,
        "client_address": "203.0.113.9",
        "request_id": "req-1",
    }
    assert page["items"][1]["actor"] == {"console_session_of": "42"}
    assert page["items"][1]["reason"] == "customer complaint #88"
    assert page["items"][2]["actor"] == {"command_line": "ops@host-1"}


async def test_pages_follow_the_cursor_without_repeats_or_gaps(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """limit=2 over five entries gives 2, 2, 1 in id order; past the end, an empty page keeps the cursor."""
    a = await _tenant(db, "tenant-a")
    made = [await _record(db, a, clock(), target=Target("did", f"d{i}")) for i in range(5)]
    seen, cursor, sizes = [], None, []
    while True:
        page = await _list(client, keys.a, limit=2, **({"after": cursor} if cursor else {}))
        if not page["items"]:
            assert page["next_cursor"] == cursor
            break
        sizes.append(len(page["items"]))
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert sizes == [2, 2, 1] and seen == [f"aud_{i}" for i in made]


async def test_entries_filter_by_action_and_by_actor(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """action= keeps one action's entries, actor= one key's (as API key or console session), and both combine."""
    a = await _tenant(db, "tenant-a")
    await _record(db, a, clock(), API_KEY, "did.drain")
    await _record(db, a, clock(), Actor.console("41"), "session.close", Target("session", "s1"))
    await _record(db, a, clock(), CONSOLE, "did.drain")
    drains = await _list(client, keys.a, action="did.drain")
    assert [e["actor"] for e in drains["items"]] == [
        {"key_id": "41", "key_name": "msk_AbCd1234"},
        {"console_session_of": "42"},
    ]
    by_41 = await _list(client, keys.a, actor="41")
    assert [e["action"] for e in by_41["items"]] == ["did.drain", "session.close"]
    assert [e["action"] for e in (await _list(client, keys.a, actor="41", action="session.close"))["items"]] == [
        "session.close"
    ]
    assert (await _list(client, keys.a, actor="nobody"))["items"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [({"action": "did.explode"}, "action"), ({"after": "not-a-cursor"}, "after"), ({"limit": "201"}, "limit")],
)
async def test_a_bad_filter_is_a_problem_naming_its_field(
    client: httpx.AsyncClient, keys: Keys, params: dict[str, str], field: str
) -> None:
    """An unknown action, a cursor the service never gave, or a limit past 200 answer a 4xx problem naming the field."""
    response = await client.get("/v1/audit", params=params, headers=keys.a)
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.text


async def test_a_tenant_sees_only_its_own_entries(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """Tenant B's ops key sees none of tenant A's entries (nor service-wide ones), only its own."""
    a, b = await _tenant(db, "tenant-a"), await _tenant(db, "tenant-b")
    await _record(db, a, clock(), action="did.drain")
    await _record(db, None, clock(), CLI, "keys.rotate", Target("data_key", "d2"))
    mine = await _record(db, b, clock(), action="webhook.delete", target=Target("webhook", "w1"))
    assert [e["id"] for e in (await _list(client, keys.b))["items"]] == [f"aud_{mine}"]
    assert (await _list(client, keys.b, action="did.drain"))["items"] == []
    assert [e["action"] for e in (await _list(client, keys.a))["items"]] == ["did.drain"]


async def test_the_audit_log_needs_the_ops_scope(client: httpx.AsyncClient, keys: Keys) -> None:
    """A sessions-scope key gets 403 forbidden and no key 401: the audit log is for ops."""
    response = await client.get("/v1/audit", headers=Keys.auth(keys.a_sessions))
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert (await client.get("/v1/audit")).status_code == 401


async def test_an_entry_is_written_or_rolled_back_with_its_action(db: asyncpg.Connection, clock: FakeClock) -> None:
    """record() joins the caller's transaction: when the action rolls back, its audit row goes with it."""
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await _record(db, 1, clock())
            raise RuntimeError("the action failed")
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 0
    async with db.transaction():
        await _record(db, 1, clock())
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 1


async def test_a_reveal_needs_a_reason_and_every_reason_is_short(db: asyncpg.Connection, clock: FakeClock) -> None:
    """session.reveal without a reason, or any reason over 500 characters, is refused naming `reason`."""
    with pytest.raises(InvalidRequest) as missing:
        await _record(db, 1, clock(), CONSOLE, "session.reveal", reason="   ")
    assert missing.value.extra == {"field": "reason"}
    with pytest.raises(InvalidRequest, match="500"):
        await _record(db, 1, clock(), CONSOLE, "did.drain", reason="x" * 501)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_a_number_typed_into_a_reason_or_target_is_kept_masked(db: asyncpg.Connection, clock: FakeClock) -> None:
    """Rule 11 holds in the audit log too: a party number in a reason or a target id is stored masked, a DID is not."""
    await _record(db, 1, clock(), CONSOLE, "session.reveal", reason="customer +919876543210 says agent no-show")
    await _record(db, 1, clock(), API_KEY, "erasure", Target("number", "+919876543210"))
    await _record(db, 1, clock(), API_KEY, "did.drain", Target("did", "+918068200000"))
    rows = await db.fetch("SELECT reason, target_id FROM audit_log ORDER BY id")
    assert rows[0]["reason"] == "customer +91******3210 says agent no-show"
    assert rows[1]["target_id"] == "+91******3210"
    assert rows[2]["target_id"] == "+918068200000"


def test_an_actor_is_exactly_one_kind() -> None:
    """An Actor naming both a key and a console session (or nothing) is refused before it is stored."""
    for actor in (Actor(key_id="1", console_session_of="1"), Actor(), Actor(key_id="1", command_line="me@here")):
        with pytest.raises(ValueError, match="exactly one"):
            actor.stored()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET reason = 'nothing to see'",
        "UPDATE audit_log SET at = at - interval '1000 days'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ],
)
async def test_the_database_refuses_to_change_or_delete_audit_rows(
    db: asyncpg.Connection, clock: FakeClock, statement: str
) -> None:
    """UPDATE, DELETE and TRUNCATE on audit_log raise in the database itself, whoever sends them."""
    await _record(db, 1, clock())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE reason IS NULL") == 1


async def test_the_purge_cut_off_lets_only_older_rows_go(db: asyncpg.Connection, clock: FakeClock) -> None:
    """Even with the purge setting made by hand, a DELETE reaching a row newer than the cut-off is refused."""
    await _record(db, 1, clock() - timedelta(days=500))
    await _record(db, 1, clock())
    async with db.transaction():
        await db.execute("SELECT set_config('masking.audit_purge_before', $1, true)", str(clock() - timedelta(days=1)))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with db.transaction():
                await db.execute("DELETE FROM audit_log")
        assert await db.execute("DELETE FROM audit_log WHERE at < $1", clock() - timedelta(days=1)) == "DELETE 1"
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the setting ended with its transaction
        await db.execute("DELETE FROM audit_log")


async def test_the_retention_purge_deletes_only_rows_past_the_retention(
    db: asyncpg.Connection, clock: FakeClock
) -> None:
    """The sweeper's purge_audit(400 days) removes the rows older than 400 days, past one batch, keeps the rest."""
    ages = [900, 500, 401, 401, 399, 10, 0]
    for days in ages:
        await _record(db, 1, clock() - timedelta(days=days), target=Target("did", f"age-{days}"))
    old = clock() - timedelta(days=600)
    await db.execute(  # more than one batch of old rows, written as record() writes them
        """INSERT INTO audit_log (at, tenant_id, actor_kind, actor_id, action)
           SELECT $1, 1, 'command_line', 'ops@host', 'did.add' FROM generate_series(1, $2)""",
        old,
        sweeps.BATCH + 1,
    )
    assert await sweeps.purge_audit(db, clock(), 400) == 4 + sweeps.BATCH + 1
    left = [r[0] for r in await db.fetch("SELECT target_id FROM audit_log ORDER BY id")]
    assert left == ["age-399", "age-10", "age-0"]
    assert await sweeps.purge_audit(db, clock(), 400) == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nothing left open for anyone else
        await db.execute("DELETE FROM audit_log")


async def test_the_sweepers_tidy_purges_the_audit_log_by_its_setting(db: asyncpg.Connection, clock: FakeClock) -> None:
    """tidy() runs the purge with MASKING_AUDIT_RETENTION_DAYS: with 30 days a 31-day-old row goes, a 29-day one stays."""
    await _record(db, 1, clock() - timedelta(days=31), target=Target("did", "old"))
    await _record(db, 1, clock() - timedelta(days=29), target=Target("did", "young"))
    done = await sweeps.tidy(db, make_settings("postgresql://unused", audit_retention_days=30), clock())
    assert done["audit_rows_purged"] == 1
    assert [r[0] for r in await db.fetch("SELECT target_id FROM audit_log")] == ["young"]


@post("/v1/_audited/{number:str}", guards=[require_key], opt={"scope": "ops"}, status_code=204)
async def _audited_action(request: MaskingRequest, conn: Db, number: FromPath[str]) -> None:
    """An ops action wired the way real routes are to be: the audit row in the action's transaction."""
    context = audit_context(request, Actor.api_key("41", "msk_AbCd1234"))
    async with conn.transaction():
        await context.record(conn, "did.drain", Target("did", number), request.runtime.clock())


async def test_an_api_request_is_recorded_with_its_tenant_key_client_address_and_request_id(
    dsn: str, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """audit_context() takes the tenant from the key, the client behind a trusted proxy, and the request id."""
    app = create_app(make_settings(dsn, trusted_proxies="127.0.0.1"), dsn=dsn, clock=clock, background=False)
    app.register(_audited_action)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=request_context(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://masking.test") as http:
            headers = {**keys.a, "x-forwarded-for": "198.51.100.7", "x-request-id": "req-abc"}
            assert (await http.post("/v1/_audited/+918068200000", headers=headers)).status_code == 204
            page = (await http.get("/v1/audit", headers=keys.a)).json()
    (entry,) = page["items"]
    assert entry["tenant_id"] == await _tenant(db, "tenant-a")
    assert (entry["client_address"], entry["request_id"]) == ("198.51.100.7", "req-abc")
    assert entry["actor"] == {"key_id": "41", "key_name": "msk_AbCd1234"}
    assert entry["target"] == {"type": "did", "id": "+918068200000"}
