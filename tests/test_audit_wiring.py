"""Every ops action through the API, the console and the command line writes its audit row with the action:
the right actor, action and target, and no row for an action refused or rolled back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.broker import audit
from service.broker.audit import Actor, Target
from tests.factories import open_session
from tests.helpers import FakeClock, Keys, add_dids
from tests.processes import masking_env, run_cli

DID, SPARE, FOREIGN = "+918068281234", "+918068281235", "+918068281299"


@pytest.fixture
def settings(dsn: str) -> Any:
    """A webhook endpoint on loopback may be registered."""
    from tests.helpers import make_settings

    return make_settings(dsn, webhook_allow_http=True, webhook_allow_private=True)


async def _rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    """The audit rows, oldest first, as (actor, action, target) dicts."""
    rows = await db.fetch(
        "SELECT tenant_id, actor_kind, actor_id, actor_name, action, target_type, target_id FROM audit_log ORDER BY id"
    )
    return [dict(r) for r in rows]


async def _actions(db: asyncpg.Connection) -> list[tuple[str, str | None, str | None]]:
    return [(r["action"], r["target_type"], r["target_id"]) for r in await _rows(db)]


async def _key(db: asyncpg.Connection, key: str) -> tuple[str, str, int]:
    """(id, prefix, tenant id) of an API key, as the audit log names it."""
    row = await db.fetchrow("SELECT id, prefix, tenant_id FROM api_keys WHERE prefix = $1", key[:12])
    assert row is not None
    return str(row["id"]), row["prefix"], row["tenant_id"]


async def test_api_did_adds_drains_and_retires_are_recorded_with_the_key(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """POST /v1/dids, a bulk add of three (one row with the count), PATCH draining and retired: one row each, by the key."""
    assert (await client.post("/v1/dids", json={"number": DID}, headers=keys.a)).status_code == 201
    await add_dids(client, keys.a, [SPARE, "+918068281236", "+918068281237"])
    assert (await client.patch(f"/v1/dids/{SPARE}", json={"status": "draining"}, headers=keys.a)).status_code == 200
    assert (await client.patch(f"/v1/dids/{SPARE}", json={"status": "retired"}, headers=keys.a)).status_code == 200
    assert (await client.patch(f"/v1/dids/{SPARE}", json={"status": "active"}, headers=keys.a)).status_code == 200
    assert await _actions(db) == [
        ("did.add", "did", DID),
        ("did.add", "dids", "3"),
        ("did.drain", "did", SPARE),
        ("did.retire", "did", SPARE),
    ]  # re-activating is not a contract action: no row
    key_id, prefix, tenant = await _key(db, keys.a_ops)
    for row in await _rows(db):
        assert (row["tenant_id"], row["actor_kind"], row["actor_id"], row["actor_name"]) == (
            tenant,
            "api_key",
            key_id,
            prefix,
        )
    listed = (await client.get("/v1/audit", params={"action": "did.retire"}, headers=keys.a)).json()["items"]
    assert [e["actor"] for e in listed] == [{"key_id": key_id, "key_name": prefix}]


async def test_a_refused_did_action_writes_no_audit_row(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """Retiring a DID in use (409), a bulk add with another tenant's number (409) and a foreign DID (404) leave no row."""
    await add_dids(client, keys.b, [FOREIGN])
    await open_session(client, keys.a, dids=[DID])
    before = await _actions(db)
    r = await client.patch(f"/v1/dids/{DID}", json={"status": "retired"}, headers=keys.a)
    assert r.status_code == 409, r.text
    r = await client.post("/v1/dids/bulk", json={"dids": [{"number": SPARE}, {"number": FOREIGN}]}, headers=keys.a)
    assert r.status_code == 409, r.text
    assert (await client.post("/v1/dids", json={"number": FOREIGN}, headers=keys.a)).status_code == 409
    assert (await client.patch(f"/v1/dids/{FOREIGN}", json={"status": "draining"}, headers=keys.a)).status_code == 404
    assert await _actions(db) == before
    assert await db.fetchval("SELECT count(*) FROM dids WHERE number = $1", SPARE) == 0


async def test_an_action_whose_audit_row_cannot_be_written_is_undone(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """With audit inserts refused by the database, a drain answers an error and the DID stays active."""
    await add_dids(client, keys.a, [DID])
    await db.execute(
        """CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'audit refused for this test'; END $$;
           CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_audit();"""
    )
    r = await client.patch(f"/v1/dids/{DID}", json={"status": "draining"}, headers=keys.a)
    assert r.status_code >= 500
    assert await db.fetchval("SELECT status FROM dids WHERE number = $1", DID) == "active"


async def test_webhook_changes_redelivery_and_call_links_are_recorded(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """webhook.create/update/rotate_secret/delete, event.redeliver and call_link.create each write one row; a
    foreign webhook or event (404) writes none; no secret reaches the log."""
    session = await open_session(client, keys.a, dids=[DID])
    event = (await client.get("/v1/events", headers=keys.a)).json()["items"][0]["id"]
    made = await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}, headers=keys.a)
    assert made.status_code == 201, made.text
    hook = made.json()["id"]
    assert (await client.patch(f"/v1/webhooks/{hook}", json={"description": "x"}, headers=keys.a)).status_code == 200
    rotated = await client.post(f"/v1/webhooks/{hook}/rotate-secret", headers=keys.a)
    assert rotated.status_code == 200
    assert (await client.post(f"/v1/events/{event}/redeliver", headers=keys.a)).status_code == 202
    link = await client.post(f"/v1/sessions/{session['id']}/call-links", json={"party": "agent"}, headers=keys.a)
    assert link.status_code == 201, link.text
    assert (await client.delete(f"/v1/webhooks/{hook}", headers=keys.a)).status_code == 204
    # Refused: tenant B acting on A's webhook and event.
    assert (await client.delete(f"/v1/webhooks/{hook}", headers=keys.b)).status_code == 404
    assert (await client.post(f"/v1/events/{event}/redeliver", headers=keys.b)).status_code == 404
    assert (await client.post(f"/v1/webhooks/{hook}/rotate-secret", headers=keys.b)).status_code == 404
    assert [a for a in await _actions(db) if a[0] != "did.add"] == [
        ("webhook.create", "webhook", hook),
        ("webhook.update", "webhook", hook),
        ("webhook.rotate_secret", "webhook", hook),
        ("event.redeliver", "event", event),
        ("call_link.create", "session", session["id"]),
        ("webhook.delete", "webhook", hook),
    ]
    stored = json.dumps(await _rows(db), default=str)
    assert made.json()["secret"] not in stored and rotated.json()["secret"] not in stored


async def _console(client: httpx.AsyncClient, key: str) -> str:
    """Sign the client in to the console; its form token."""
    page = await client.get("/console/sign-in")
    found = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    token = found.group(1)
    r = await client.post("/console/sign-in", data={"_csrf_token": token, "key": key})
    assert r.status_code == 303, r.text
    return token


async def test_console_actions_are_recorded_as_the_console_session_of_the_key(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """Sign-in, drain, retire, close, expire by order, redeliver and sign-out each write one row whose actor is the
    console session of the ops key; a refused retire writes none (a wrong key at sign-in writes a row of no
    tenant: tests/test_audit_more.py)."""
    closing = await open_session(client, keys.a, dids=[DID], order="to-close")
    await open_session(client, keys.a, order="to-expire", customer="+919876500001", agent="+918765400001")
    await open_session(client, keys.a, order="in-use", customer="+919876500002", agent="+918765400002")
    await add_dids(client, keys.a, [SPARE])
    event = (await client.get("/v1/events", headers=keys.a)).json()["items"][0]["id"]
    api_rows = len(await _rows(db))

    page = await client.get("/console/sign-in")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    wrong = await client.post("/console/sign-in", data={"_csrf_token": token.group(1), "key": "msk_wrongwrongwrong"})
    assert wrong.status_code == 401
    token = await _console(client, keys.a_ops)
    form = {"_csrf_token": token}
    steps = [
        (f"/console/dids/{SPARE}", {"status": "draining"}),
        (f"/console/dids/{SPARE}", {"status": "retired", "confirm": "yes"}),
        (f"/console/sessions/{closing['id']}/close", {}),
        ("/console/expire", {"order_id": "to-expire", "confirm": "yes"}),
        ("/console/webhooks/redeliver", {"event_id": event}),
    ]
    for path, fields in steps:
        r = await client.post(path, data={**form, **fields})
        assert r.status_code == 303, f"{path}: {r.status_code} {r.text[:300]}"
    refused = await client.post(f"/console/dids/{DID}", data={**form, "status": "retired", "confirm": "yes"})
    assert refused.status_code == 409
    assert (await client.post("/console/sign-out", data=form)).status_code == 303

    key_id, _, tenant = await _key(db, keys.a_ops)
    rows = [r for r in (await _rows(db))[api_rows:] if r["action"] != "console.sign_in_failed"]
    assert [(r["action"], r["target_type"], r["target_id"]) for r in rows] == [
        ("console.sign_in", None, None),
        ("did.drain", "did", SPARE),
        ("did.retire", "did", SPARE),
        ("session.close", "session", closing["id"]),
        ("sessions.expire", "order", "to-expire"),
        ("event.redeliver", "event", event),
        ("console.sign_out", None, None),
    ]
    assert {(r["tenant_id"], r["actor_kind"], r["actor_id"], r["actor_name"]) for r in rows} == {
        (tenant, "console", key_id, None)
    }


async def test_the_console_audit_page_lists_newest_first_filters_by_action_pages_and_masks_numbers(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, clock: FakeClock
) -> None:
    """/console/audit (in the nav) shows the tenant's entries newest first, 50 a page with a link to older ones,
    only one action's when asked, a number in a reason or target masked, and none of another tenant's."""
    _, _, a = await _key(db, keys.a_ops)
    _, _, b = await _key(db, keys.b_ops)
    for i in range(55):
        await audit.record(
            db, a, Actor.api_key("7", "msk_x"), "did.add", Target("dids", f"n{i:02}"), None, None, None, clock()
        )
    await audit.record(
        db,
        a,
        Actor.console("7"),
        "session.reveal",
        Target("session", "s1"),
        "caller +919876543210",
        None,
        None,
        clock(),
    )
    await audit.record(
        db, b, Actor.cli("ops@h"), "did.drain", Target("did", "+918068200001"), None, None, None, clock()
    )
    await _console(client, keys.a_ops)
    first = await client.get("/console/audit")
    assert first.status_code == 200
    assert 'href="/console/audit"' in first.text and "Audit" in first.text
    assert "session.reveal" in first.text and "+91******3210" in first.text and "+919876543210" not in first.text
    rows = re.findall(r"<tr>(.*?)</tr>", first.text.split("<tbody>", 1)[1], re.S)
    assert len(rows) == 50 and "console.sign_in" in rows[0] and "session.reveal" in rows[1] and "dids n54" in rows[2]
    assert "8068200001" not in first.text  # tenant B's
    older = re.search(r'href="(/console/audit\?[^"]+)"', first.text)
    assert older is not None
    second = await client.get(older.group(1).replace("&amp;", "&"))
    rows2 = re.findall(r"<tr>(.*?)</tr>", second.text.split("<tbody>", 1)[1], re.S)
    assert len(rows2) == 7 and "dids n06" in rows2[0] and "dids n00" in rows2[-1]
    assert "Older entries" not in second.text
    only = await client.get("/console/audit", params={"action": "session.reveal"})
    assert len(re.findall(r"<tr>(.*?)</tr>", only.text.split("<tbody>", 1)[1], re.S)) == 1


async def test_the_console_audit_page_needs_a_sign_in(client: httpx.AsyncClient) -> None:
    """Signed out, /console/audit sends you to the sign-in page."""
    r = await client.get("/console/audit")
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"


def test_command_line_expiry_and_import_are_recorded_and_masking_audit_prints_them(tmp_path: Path, dsn: str) -> None:
    """`sessions expire` and `dids import` write rows as the command-line user; `masking audit --since 24h` prints
    them as JSON lines oldest first (newest last), `--action` keeps one action's; a refused import writes none."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    assert run_cli("tenant", "create", "acme", "--scope", "ops", env=env).returncode == 0
    good = tmp_path / "dids.csv"
    good.write_text(f"{DID}\n{SPARE}\n")
    assert run_cli("dids", "import", str(good), "--tenant", "acme", env=env).returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("+918068281236\nnot-a-number\n")
    assert run_cli("dids", "import", str(bad), "--tenant", "acme", env=env).returncode == 1
    expired = run_cli("sessions", "expire", "--tenant", "acme", "--order-id", "ORD-9", env=env)
    assert expired.returncode == 0, expired.stderr
    result = run_cli("audit", "--tenant", "acme", "--since", "24h", env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["action"], e["target"]) for e in lines] == [
        ("did.add", {"type": "dids", "id": "2"}),
        ("sessions.expire", {"type": "order", "id": "ORD-9"}),
    ]
    assert all(set(e["actor"]) == {"command_line"} and "@" in e["actor"]["command_line"] for e in lines)
    only = run_cli("audit", "--tenant", "acme", "--since", "1h", "--action", "sessions.expire", env=env)
    assert [json.loads(line)["action"] for line in only.stdout.splitlines()] == ["sessions.expire"]
    wrong = run_cli("audit", "--tenant", "acme", "--since", "yesterday", env=env)
    assert wrong.returncode == 2 and "--since" in wrong.stderr


async def test_api_closes_expiries_and_pool_changes_are_recorded_and_refused_ones_are_not(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """POST close, POST /v1/sessions/expire and PUT /v1/pools/{name} write one row each by their key; a foreign close none."""
    session = await open_session(client, keys.a, dids=[DID], order="ORD-A1")
    other = await open_session(client, keys.a, order="ORD-A2", customer="+919876500002", agent="+918765400002")
    before = len(await _rows(db))
    assert (await client.post(f"/v1/sessions/{session['id']}/close", headers=keys.b)).status_code == 404
    assert len(await _rows(db)) == before  # another tenant's close was refused: nothing on record
    by_backend = Keys.auth(keys.a_sessions)
    closed = await client.post(
        f"/v1/sessions/{session['id']}/close", json={"reason": "order delivered"}, headers=by_backend
    )
    assert closed.status_code == 200
    expired = await client.post("/v1/sessions/expire", json={"order_id": "ORD-A2"}, headers=keys.a)
    assert expired.json() == {"expired": 1}
    assert (await client.put("/v1/pools/default", json={"cooloff_seconds": 60}, headers=keys.a)).status_code == 200
    rows = (await _rows(db))[before:]
    assert [(r["action"], r["target_type"], r["target_id"]) for r in rows] == [
        ("session.close", "session", session["id"]),
        ("sessions.expire", "order", "ORD-A2"),
        ("pool.update", "pool", "default"),
    ]
    assert other["id"] != session["id"]
    reason = await db.fetchval("SELECT reason FROM audit_log WHERE action = 'session.close'")
    assert reason == "order delivered"
    for row, key in zip(rows, (keys.a_sessions, keys.a_ops, keys.a_ops), strict=True):
        key_id, prefix, tenant = await _key(db, key)
        assert (row["tenant_id"], row["actor_kind"], row["actor_id"], row["actor_name"]) == (
            tenant, "api_key", key_id, prefix
        )  # fmt: skip
