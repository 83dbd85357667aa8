"""The ops actions that came on record later: a key revoked, the indexes rebuilt, a webhook tested, a refused console
sign-in, and recordings the retention sweep destroys, each one audit row written with its action."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from service.broker.tenants import hash_key
from tests.factories import pool
from tests.helpers import Keys, did_numbers, make_settings, wait_for
from tests.live import live_service
from tests.processes import masking_env, run_cli
from tests.receiver import Receiver
from tests.test_recordings import PUBLIC, recorded_call
from tests.test_webhooks import register


@pytest.fixture
def settings(dsn: str) -> Any:
    """A webhook endpoint on loopback may be registered."""
    return make_settings(dsn, webhook_allow_http=True, webhook_allow_private=True)


COLUMNS = "tenant_id, actor_kind, actor_id, actor_name, target_type, target_id, reason, client_address, request_id"


async def _rows(db: asyncpg.Connection, action: str) -> list[dict[str, Any]]:
    """The audit rows of one action, oldest first."""
    return [dict(r) for r in await db.fetch(f"SELECT {COLUMNS} FROM audit_log WHERE action = $1 ORDER BY id", action)]


async def _form_token(client: httpx.AsyncClient) -> str:
    found = re.search(r'name="_csrf_token" value="([^"]+)"', (await client.get("/console/sign-in")).text)
    assert found is not None
    return found.group(1)


async def test_a_key_revoke_is_recorded_once_under_the_keys_tenant_by_the_command_line_user(
    dsn: str, db: asyncpg.Connection
) -> None:
    """`masking key revoke ID` writes key.revoke (target the key, tenant its tenant, actor user@host); revoking it
    again or an unknown id writes nothing; `masking audit` prints it."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    assert run_cli("tenant", "create", "zeta", "--scope", "ops", env=env).returncode == 0
    made = run_cli("tenant", "create", "acme", "--scope", "ops", env=env)
    key = json.loads(made.stdout)["api_key"]
    row = await db.fetchrow("SELECT id, tenant_id FROM api_keys WHERE prefix = $1", key[:12])
    key_id, tenant_id = row["id"], row["tenant_id"]
    for _ in range(2):
        revoked = run_cli("key", "revoke", str(key_id), env=env)
        assert revoked.returncode == 0, revoked.stderr
    assert run_cli("key", "revoke", "999999", env=env).returncode == 1
    rows = await _rows(db, "key.revoke")
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["tenant_id"], row["actor_kind"], row["target_type"], row["target_id"]) == (
        tenant_id, "command_line", "api_key", str(key_id)
    )  # fmt: skip
    assert "@" in row["actor_id"] and row["actor_name"] is None
    printed = run_cli("audit", "--tenant", "acme", "--since", "1h", "--action", "key.revoke", env=env)
    assert printed.returncode == 0, printed.stderr
    assert [json.loads(line)["target"] for line in printed.stdout.splitlines()] == [
        {"type": "api_key", "id": str(key_id)}
    ]


async def test_keys_reindex_is_recorded_service_wide_naming_the_new_index_key(dsn: str, db: asyncpg.Connection) -> None:
    """`masking keys reindex` writes keys.reindex with no tenant, as the command-line user, target the new index key."""
    done = run_cli("keys", "reindex", env=masking_env(MASKING_DATABASE_URL=dsn))
    assert done.returncode == 0, done.stderr
    index_key = json.loads(done.stdout.splitlines()[-1])["index_key_id"]
    rows = await _rows(db, "keys.reindex")
    assert [(r["tenant_id"], r["actor_kind"], r["target_type"], r["target_id"]) for r in rows] == [
        (None, "command_line", "index_key", index_key)
    ]
    assert "@" in rows[0]["actor_id"]


async def test_a_webhook_test_is_recorded_by_the_key_and_by_the_console_and_a_foreign_one_is_not(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """POST /v1/webhooks/{id}/test and the console's Test button each write webhook.test (target the endpoint) by
    their actor, with the test event delivered; another tenant's test of it (404) writes none."""
    async with Receiver() as receiver:
        endpoint = await register(client, keys.a, receiver.url)
        receiver.secrets = [endpoint["secret"]]
        sent = await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.a)
        assert sent.status_code == 200 and sent.json()["status"] == "delivered", sent.text
        assert (await client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=keys.b)).status_code == 404
        token = await _form_token(client)
        signed_in = await client.post("/console/sign-in", data={"_csrf_token": token, "key": keys.a_ops})
        assert signed_in.status_code == 303
        pressed = await client.post(f"/console/webhooks/{endpoint['id']}/test", data={"_csrf_token": token})
        assert pressed.status_code == 303 and "outcome=delivered" in pressed.headers["location"]
        assert sum(receiver.delivered.values()) == 2
    key = await db.fetchrow("SELECT id, prefix, tenant_id FROM api_keys WHERE prefix = $1", keys.a_ops[:12])
    key_id, prefix, tenant_id = key["id"], key["prefix"], key["tenant_id"]
    rows = await _rows(db, "webhook.test")
    assert [(r["tenant_id"], r["actor_kind"], r["actor_id"], r["actor_name"]) for r in rows] == [
        (tenant_id, "api_key", str(key_id), prefix),
        (tenant_id, "console", str(key_id), None),
    ]
    assert {(r["target_type"], r["target_id"]) for r in rows} == {("webhook", endpoint["id"])}
    assert all(r["request_id"] and r["client_address"] for r in rows)
    listed = (await client.get("/v1/audit", params={"action": "webhook.test"}, headers=keys.a)).json()["items"]
    assert [e["target"] for e in listed] == [{"type": "webhook", "id": endpoint["id"]}] * 2


async def test_a_refused_console_sign_in_is_recorded_with_its_address_and_nothing_of_the_key_tried(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """An unknown key (401) and a sessions key (403) at sign-in each write console.sign_in_failed: no tenant, an
    anonymous actor, no target, the client address and request id; neither key's text, prefix or hash is kept;
    attempts past the throttle (429) write none."""
    token = await _form_token(client)
    tried = ["msk_NotAKeyOfOursAtAll", keys.a_sessions]
    for key, status in zip(tried, (401, 403), strict=True):
        refused = await client.post("/console/sign-in", data={"_csrf_token": token, "key": key})
        assert refused.status_code == status, refused.text
    rows = await _rows(db, "console.sign_in_failed")
    assert [(r["tenant_id"], r["actor_kind"], r["actor_id"], r["actor_name"], r["target_type"]) for r in rows] == [
        (None, "anonymous", "console", None, None)
    ] * 2
    assert [r["reason"] for r in rows] == ["unauthorized", "forbidden"]
    assert all(r["client_address"] == "127.0.0.1" and r["request_id"] for r in rows)
    stored = json.dumps(rows, default=str)
    for key in tried:
        for part in (key, key[:12], key[4:12], hash_key(key).hex()):
            assert part not in stored
    throttled = 0
    for _ in range(12):
        r = await client.post("/console/sign-in", data={"_csrf_token": token, "key": "msk_stillnotakey"})
        throttled += r.status_code == 429
    assert throttled > 0
    assert len(await _rows(db, "console.sign_in_failed")) == 2 + 12 - throttled


async def test_masking_audit_service_wide_prints_the_entries_of_no_tenant(
    client: httpx.AsyncClient, keys: Keys, dsn: str, db: asyncpg.Connection
) -> None:
    """Refused console sign-ins have no tenant, so no tenant's log shows them; `masking audit --service-wide` prints
    them (and only rows of no tenant); `masking audit` needs --tenant or --service-wide, not both."""
    token = await _form_token(client)
    assert (await client.post("/console/sign-in", data={"_csrf_token": token, "key": "msk_NotOurs"})).status_code == 401
    env = masking_env(MASKING_DATABASE_URL=dsn)
    made = run_cli("tenant", "create", "acme", "--scope", "ops", env=env)
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE prefix = $1", json.loads(made.stdout)["api_key"][:12])
    # a row of a tenant in the same hour, which --service-wide must leave out
    assert run_cli("key", "revoke", str(key_id), env=env).returncode == 0
    assert "key.revoke" in run_cli("audit", "--tenant", "acme", "--since", "1h", env=env).stdout
    printed = run_cli("audit", "--service-wide", "--since", "1h", env=env)
    assert printed.returncode == 0, printed.stderr
    entries = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [(e["action"], e["tenant_id"], e["actor"], e["reason"]) for e in entries] == [
        ("console.sign_in_failed", None, {"anonymous": "console"}, "unauthorized")
    ]
    only = run_cli("audit", "--service-wide", "--since", "1h", "--action", "keys.rotate", env=env)
    assert only.returncode == 0 and only.stdout == ""
    assert "console.sign_in_failed" not in run_cli("audit", "--tenant", "acme", "--since", "1h", env=env).stdout
    for wrong in ([], ["--tenant", "acme", "--service-wide"]):
        refused = run_cli("audit", *wrong, "--since", "1h", env=env)
        assert refused.returncode == 2 and "--service-wide" in refused.stderr, refused.stderr


async def test_recordings_the_served_retention_sweep_destroys_are_recorded_as_the_service(
    dsn: str, keys: Keys, db: asyncpg.Connection
) -> None:
    """A served sweeper that ends a recording past its pool's retention writes recording.delete for the call, under
    its tenant, by {"system": "retention"}: GET /v1/audit shows it (and finds it by that actor), so does the console's
    Audit page; a recording still within its retention writes none."""
    async with live_service(dsn, public_url=PUBLIC) as live:
        await pool(live.http, keys.a, "short", dids=did_numbers(1, start=10), recording_retention_days=1)
        old = await recorded_call(live, keys, "ORD-OLD", "short")
        young = await recorded_call(live, keys, "ORD-YOUNG", "short")
    await db.execute(
        "UPDATE calls SET created_at = created_at - $2::interval WHERE id = $1", uuid.UUID(old["id"]), timedelta(days=2)
    )
    # Not on PUBLIC (https): the console's cookies would be Secure, and this client speaks plain http.
    async with live_service(dsn, background=True, sweep_interval_seconds=0.2) as live:

        async def deleted() -> list[dict[str, Any]]:
            r = await live.http.get("/v1/audit", params={"action": "recording.delete"}, headers=keys.a)
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        entries = await wait_for(deleted, within=20, interval=0.2)
        by_actor = (await live.http.get("/v1/audit", params={"actor": "retention"}, headers=keys.a)).json()["items"]
        token = await _form_token(live.http)
        signed_in = await live.http.post("/console/sign-in", data={"_csrf_token": token, "key": keys.a_ops})
        assert signed_in.status_code == 303
        page = await live.http.get("/console/audit", params={"action": "recording.delete"})
        young_now = (await live.http.get(f"/v1/calls/{young['id']}", headers=keys.a)).json()
    assert len(entries) == 1 and by_actor == entries
    entry = entries[0]
    assert entry["actor"] == {"system": "retention"} and entry["target"] == {"type": "call", "id": old["id"]}
    assert entry["tenant_id"] == await db.fetchval("SELECT tenant_id FROM api_keys WHERE prefix = $1", keys.a_ops[:12])
    assert "recording_retention_days (1)" in entry["reason"]
    assert page.status_code == 200 and "the service (retention)" in page.text and "recording.delete" in page.text
    assert young_now["recording"]["available"] is True
