"""Keys over a database's life: start-up refused without a key its rows name, the embedded key file, rotate, reindex."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from service import crypto
from service.crypto import KeyRing
from service.db import backfill, rekey, schema
from tests.helpers import dsn_for
from tests.processes import ServeProcess, masking_env, run_cli
from tests.test_numbers_upgrade import Made, _at_version, _check_sealed, _fill_old


def test_serve_refuses_a_database_naming_a_data_key_it_was_not_given(dsn: str) -> None:
    """A database whose data_keys lists a key id missing from MASKING_KEYS: `masking serve` exits 2 naming it."""
    import asyncio

    async def name_a_key() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO data_keys (id) VALUES ('lost7')")
        finally:
            await conn.close()

    asyncio.run(name_a_key())
    service = ServeProcess(masking_env(MASKING_DATABASE_URL=dsn))
    assert service.wait_for_exit(60) == 2
    refusals = [line for line in service.output.splitlines() if "lost7" in line]
    assert len(refusals) == 1 and "is not in MASKING_KEYS_FILE / MASKING_KEYS" in refusals[0]


def test_the_embedded_default_creates_its_key_file_once_and_says_so(tmp_path: Path) -> None:
    """With no keys set, the first start writes keys.json (0600) beside the data and says so; the next reuses it."""
    env = masking_env(MASKING_KEYS="")
    first = tmp_path / "first.log"
    with ServeProcess(env, cwd=tmp_path, log_path=first):
        pass
    key_file = tmp_path / ".masking" / "keys.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    ring = crypto.load(str(key_file), None)
    serving = [json.loads(line) for line in first.read_text().splitlines() if '"serving"' in line]
    assert serving and serving[0]["sealing"] == f"created a new key file {key_file}"
    again = tmp_path / "again.log"
    with ServeProcess(env, cwd=tmp_path, log_path=again):
        pass
    assert f"keys from {key_file}" in again.read_text()
    assert crypto.load(str(key_file), None).dumps() == ring.dumps()


@pytest.fixture
def key_file(tmp_path: Path) -> Iterator[tuple[KeyRing, Path]]:
    """A key file (0600) with a fresh ring, installed as this process's for the test."""
    before = crypto._INSTALLED[:]
    ring = KeyRing.generate()
    path = tmp_path / "keys.json"
    crypto.write_key_file(path, ring)
    crypto.install(ring)
    try:
        yield ring, path
    finally:
        crypto._INSTALLED[:] = before


@pytest.fixture
async def upgraded(server_dsn: str, key_file: tuple[KeyRing, Path]) -> AsyncIterator[tuple[str, Made]]:
    """A database made by the clear-text release, with rows in every table, upgraded under the key file's ring."""
    name = "keys_" + uuid.uuid4().hex[:8]
    conn = await _at_version(server_dsn, name, backfill.SEALED_FROM - 1)
    try:
        made = await _fill_old(conn, sessions=5)
        await schema.migrate(conn)
    finally:
        await conn.close()
    yield dsn_for(server_dsn, name), made


def _cli(dsn: str, path: Path, *args: str) -> tuple[int, str, str]:
    done = run_cli(*args, env=masking_env(MASKING_DATABASE_URL=dsn, MASKING_KEYS_FILE=str(path), MASKING_KEYS=""))
    return done.returncode, done.stdout, done.stderr


async def test_rotate_reencrypts_every_value_under_the_new_key_and_forgets_the_old(
    upgraded: tuple[str, Made], key_file: tuple[KeyRing, Path]
) -> None:
    """`masking keys rotate`: a new current key in the file, every value still opens, none names d1, data_keys only d2."""
    dsn, made = upgraded
    path = key_file[1]
    code, out, err = _cli(dsn, path, "keys", "rotate")
    assert code == 0, err
    assert "re-encrypting sessions" in err and "re-encrypting events" in err
    result = json.loads(out.splitlines()[-1])
    new_ring = crypto.load(str(path), None)
    assert new_ring.current == result["key_id"] == "d2" and set(new_ring.data) == {"d1", "d2"}
    assert result["forgotten"] == ["d1"] and result["remaining"] == 0
    assert result["reencrypted"]["sessions"] == len(made.sessions) - 1  # the redacted one holds no ciphertext
    crypto.install(new_ring)
    conn = await asyncpg.connect(dsn)
    try:
        assert await rekey.key_ids_in_use(conn) == {"d2"}
        await _check_sealed(conn, new_ring, made)
        audit = await conn.fetch(
            "SELECT tenant_id, actor_kind, target_type, target_id FROM audit_log WHERE action = 'keys.rotate'"
        )
        assert [tuple(r) for r in audit] == [(None, "command_line", "data_key", "d2")]
    finally:
        await conn.close()
    code, out, err = _cli(dsn, path, "keys", "rotate")  # a second rotation: d3, from d2
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["forgotten"] == ["d2"]


async def test_an_interrupted_rotation_is_resumed_by_running_it_again(
    upgraded: tuple[str, Made], key_file: tuple[KeyRing, Path]
) -> None:
    """With d2 current in the file but d1 still listed (a rotation cut short), rotate makes no d3 and finishes d2."""
    dsn = upgraded[0]
    ring, path = key_file
    crypto.write_key_file(path, ring.rotated(), replace=True)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO data_keys (id) VALUES ('d2')")
    finally:
        await conn.close()
    code, out, err = _cli(dsn, path, "keys", "rotate")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["key_id"] == "d2" and set(crypto.load(str(path), None).data) == {"d1", "d2"}


async def test_reindex_rebuilds_every_blind_index_under_a_new_index_key(
    upgraded: tuple[str, Made], key_file: tuple[KeyRing, Path]
) -> None:
    """`masking keys reindex`: a new index key; every session, binding and call is found by the new ring's index."""
    dsn, made = upgraded
    old_ring, path = key_file
    code, out, err = _cli(dsn, path, "keys", "reindex")
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    new_ring = crypto.load(str(path), None)
    assert new_ring.current_index == result["index_key_id"] == "i2" and list(new_ring.index) == ["i2"]
    assert result["sessions"] == len(made.sessions) and result["calls"] == len(made.calls)
    crypto.install(new_ring)
    conn = await asyncpg.connect(dsn)
    try:
        # indexes compared with sealed.index() under the new ring
        await _check_sealed(conn, new_ring, made, request_hashes=False)
        customer = next(iter(made.sessions.values()))[0]
        found = await conn.fetchval(
            "SELECT count(*) FROM sessions WHERE tenant_id = $1 AND customer_ix = $2",
            made.tenant,
            new_ring.blind_index(made.tenant, customer),
        )
        assert found == 1
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM sessions WHERE customer_ix = $1", old_ring.blind_index(made.tenant, customer)
            )
            == 0
        )
    finally:
        await conn.close()


async def test_a_staged_key_is_added_not_current_then_made_current_by_the_rotation(
    upgraded: tuple[str, Made], key_file: tuple[KeyRing, Path]
) -> None:
    """`rotate --stage` adds d2 to the file and data_keys but keeps d1 current; the next `rotate` makes d2 current."""
    dsn, path = upgraded[0], key_file[1]
    code, out, err = _cli(dsn, path, "keys", "rotate", "--stage")
    assert code == 0, err
    staged = crypto.load(str(path), None)
    assert (staged.current, list(staged.data)) == ("d1", ["d1", "d2"]) and json.loads(out)["added"] == "d2"
    conn = await asyncpg.connect(dsn)
    try:
        assert sorted(r[0] for r in await conn.fetch("SELECT id FROM data_keys")) == ["d1", "d2"]
        assert await rekey.key_ids_in_use(conn) == {"d1"}
    finally:
        await conn.close()
    code, out, err = _cli(dsn, path, "keys", "rotate")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["key_id"] == "d2" and crypto.load(str(path), None).current == "d2"
    conn = await asyncpg.connect(dsn)
    try:
        assert await rekey.key_ids_in_use(conn) == {"d2"}
    finally:
        await conn.close()
