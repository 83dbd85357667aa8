"""Crypto primitives: ciphertexts bound to tenant and column, per-tenant blind indexes, key ring loading and rotation.

Run as a script (`python -m tests.test_crypto`) to print microseconds per encrypt, decrypt and blind index.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from service import crypto
from service.crypto import DecryptionFailed, KeyRing, KeysError, UnknownKey
from service.settings import Settings

NUMBER = "+919876543210"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


def test_a_number_encrypted_for_a_tenant_and_column_decrypts_to_itself(ring: KeyRing) -> None:
    """encrypt then decrypt with the same tenant and column gives the number back, and no clear text is stored."""
    sealed = ring.encrypt(7, "sessions.customer", NUMBER)
    assert NUMBER.encode() not in sealed and NUMBER[1:].encode() not in sealed
    assert ring.decrypt_text(7, "sessions.customer", sealed) == NUMBER
    assert ring.encrypt(7, "sessions.customer", NUMBER) != sealed  # a fresh nonce each time


def test_raw_bodies_of_any_size_round_trip(ring: KeyRing) -> None:
    """Bytes (a provider's raw report body) round-trip too, including an empty one; a provider report may lack a tenant."""
    body = os.urandom(5000)
    assert ring.decrypt(None, "provider_reports.body", ring.encrypt(None, "provider_reports.body", body)) == body
    assert ring.decrypt(3, "events.data", ring.encrypt(3, "events.data", b"")) == b""


@pytest.mark.parametrize(
    ("tenant", "column"), [(8, "sessions.customer"), (7, "sessions.agent"), (None, "sessions.customer")]
)
def test_a_ciphertext_moved_to_another_tenant_or_column_does_not_open(
    ring: KeyRing, tenant: int | None, column: str
) -> None:
    """The associated data names tenant and column: a ciphertext copied to another tenant's row or column fails."""
    sealed = ring.encrypt(7, "sessions.customer", NUMBER)
    with pytest.raises(DecryptionFailed, match="altered or copied"):
        ring.decrypt(tenant, column, sealed)


def test_a_tampered_ciphertext_or_key_id_does_not_open(ring: KeyRing) -> None:
    """Flipping a byte of the body, or renaming the key id in the header, fails to decrypt."""
    sealed = bytearray(ring.encrypt(7, "calls.from", NUMBER))
    sealed[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        ring.decrypt(7, "calls.from", bytes(sealed))
    with pytest.raises(DecryptionFailed, match="not a ciphertext"):
        ring.decrypt(7, "calls.from", b"+919876543210")


def test_a_ciphertext_under_an_unknown_key_id_raises_an_error_naming_it(ring: KeyRing) -> None:
    """A ring without the key a ciphertext names refuses it with that key id in the message."""
    sealed = ring.encrypt(7, "sessions.customer", NUMBER)
    stranger = KeyRing({"d2": os.urandom(32)}, "d2", {"i1": os.urandom(32)}, "i1")
    with pytest.raises(UnknownKey, match="'d1'") as refused:
        stranger.decrypt(7, "sessions.customer", sealed)
    assert refused.value.key_ids == ["d1"]


def test_the_key_ids_in_a_set_of_ciphertexts_are_listed_and_missing_ones_named(ring: KeyRing) -> None:
    """key_ids() lists every key id named in a set of ciphertexts; require() names those the ring lacks."""
    newer = ring.rotated()
    stored = [ring.encrypt(1, "sessions.agent", NUMBER), newer.encrypt(1, "sessions.agent", NUMBER), None]
    assert crypto.key_ids(stored) == {"d1", "d2"}
    newer.require(crypto.key_ids(stored))
    with pytest.raises(UnknownKey, match="'d2'"):
        ring.require(crypto.key_ids(stored))


def test_after_rotation_old_ciphertexts_still_open_and_new_ones_use_the_new_key(ring: KeyRing) -> None:
    """Rotating makes a new data key current; a value written under k1 still decrypts, new values name k2."""
    old = ring.encrypt(5, "sessions.customer", NUMBER)
    rotated = KeyRing.parse(ring.rotated().dumps())
    assert rotated.current == "d2" and crypto.key_ids([old]) == {"d1"}
    assert rotated.decrypt_text(5, "sessions.customer", old) == NUMBER
    new = rotated.encrypt(5, "sessions.customer", NUMBER)
    assert crypto.key_ids([new]) == {"d2"}
    assert rotated.blind_index(5, NUMBER) == ring.blind_index(5, NUMBER)  # the index key did not change


def test_a_key_added_but_not_yet_current_opens_values_and_becomes_current_later(ring: KeyRing) -> None:
    """The two-step rotation: a ring with d2 added reads d2 values while still writing under d1, then switches."""
    added = ring.rotated(make_current=False)
    assert added.current == "d1" and set(added.data) == {"d1", "d2"}
    switched = added.with_current("d2")
    assert added.decrypt_text(1, "calls.to", switched.encrypt(1, "calls.to", NUMBER)) == NUMBER
    assert crypto.key_ids([switched.encrypt(1, "calls.to", NUMBER)]) == {"d2"}
    with pytest.raises(UnknownKey, match="'d7'"):
        added.with_current("d7")


def test_blind_indexes_match_within_a_tenant_and_differ_between_tenants(ring: KeyRing) -> None:
    """One tenant's index of a number is stable; another tenant's, or another index key's, differs."""
    a = ring.blind_index(1, NUMBER)
    assert len(a) == 32 and ring.blind_index(1, NUMBER) == a
    assert ring.blind_index(2, NUMBER) != a
    assert ring.blind_index(1, "+919876543211") != a
    assert KeyRing.generate().blind_index(1, NUMBER) != a


def test_a_blind_index_takes_only_a_normalised_number(ring: KeyRing) -> None:
    """A number without its + (or with spaces) is refused rather than indexed to a value no lookup will match."""
    for raw in ("919876543210", "+91 98765 43210", "+0123"):
        with pytest.raises(ValueError, match=r"E\.164"):
            ring.blind_index(1, raw)


def test_a_key_file_open_to_group_or_others_is_refused(tmp_path: Path) -> None:
    """A key file readable by group or others is refused with its mode and the chmod that fixes it."""
    path = tmp_path / "keys.json"
    crypto.write_key_file(path, KeyRing.generate())
    assert path.stat().st_mode & 0o777 == 0o600
    assert crypto.load(str(path), None).current == "d1"
    path.chmod(0o640)
    with pytest.raises(KeysError, match=r"mode 0640.*chmod 600"):
        crypto.load(str(path), None)
    path.chmod(0o604)
    with pytest.raises(KeysError, match="group or others"):
        crypto.load(str(path), None)


def test_keys_come_from_the_variable_or_the_file_but_not_both(tmp_path: Path) -> None:
    """MASKING_KEYS holds the same JSON as the file; both set, neither set, or a missing file are errors."""
    ring = KeyRing.generate()
    from_variable = crypto.load(None, ring.dumps().decode())
    assert from_variable.blind_index(1, NUMBER) == ring.blind_index(1, NUMBER)
    with pytest.raises(KeysError, match="not both"):
        crypto.load(str(tmp_path / "k.json"), ring.dumps().decode())
    with pytest.raises(KeysError, match="Set MASKING_KEYS_FILE"):
        crypto.load(None, None)
    with pytest.raises(KeysError, match="cannot be read"):
        crypto.load(str(tmp_path / "absent.json"), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not a key file"),
        ('{"data": {"current": "d1", "keys": {"d1": "c2hvcnQ="}}, "index": {"current": "i1", "keys": {}}}', "32"),
        ('{"data": {"current": "d9", "keys": {}}, "index": {"current": "i1", "keys": {}}}', "current data key 'd9'"),
    ],
)
def test_a_malformed_key_ring_is_refused_naming_the_problem(text: str, message: str) -> None:
    """Bad JSON, a key that is not 32 bytes, or a current key that is absent: a KeysError saying which."""
    with pytest.raises(KeysError, match=message):
        KeyRing.parse(text)


def test_the_embedded_default_creates_a_private_key_file_once(tmp_path: Path) -> None:
    """With the embedded database, keys.json is created beside its data on first start (0600) and reused after."""
    ring, path, created = crypto.embedded_key_file(tmp_path / "data")
    assert created and path == (tmp_path / "data" / "keys.json").resolve()
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(path.read_text())) == {"data", "index"}
    again, _, created_again = crypto.embedded_key_file(tmp_path / "data")
    assert not created_again and again.blind_index(1, NUMBER) == ring.blind_index(1, NUMBER)
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no scratch file left behind


def test_a_rotated_ring_replaces_the_key_file_in_place(tmp_path: Path) -> None:
    """write_key_file(replace=True) swaps in the rotated ring, still 0600; without replace an existing file is kept."""
    ring, path, _ = crypto.embedded_key_file(tmp_path)
    with pytest.raises(FileExistsError):
        crypto.write_key_file(path, ring.rotated())
    crypto.write_key_file(path, ring.rotated(), replace=True)
    assert crypto.load(str(path), None).current == "d2" and path.stat().st_mode & 0o777 == 0o600


def test_the_service_takes_configured_keys_else_the_embedded_file_else_refuses(tmp_path: Path) -> None:
    """Configured keys win; the embedded database gets a key file beside its data; an external database needs keys."""
    ring = KeyRing.generate()
    configured, said = crypto.for_settings(Settings(keys=ring.dumps().decode(), database_url="postgresql://x/y"))
    assert configured.blind_index(1, NUMBER) == ring.blind_index(1, NUMBER) and said == "keys from MASKING_KEYS"
    made, said = crypto.for_settings(Settings(data_dir=str(tmp_path)))
    assert said.startswith("created a new key file") and (tmp_path / "keys.json").exists()
    again, said = crypto.for_settings(Settings(data_dir=str(tmp_path)))
    assert said.startswith("keys from") and again.blind_index(1, NUMBER) == made.blind_index(1, NUMBER)
    with pytest.raises(KeysError, match="MASKING_DATABASE_URL is set but no keys"):
        crypto.for_settings(Settings(database_url="postgresql://x/y"))


def _timings(rounds: int = 20_000) -> dict[str, float]:
    """Microseconds per operation, best of three runs (a measurement, not a test)."""
    ring = KeyRing.generate()
    sealed = ring.encrypt(1, "sessions.customer", NUMBER)
    ring.blind_index(1, NUMBER)
    work = {
        "encrypt": lambda: ring.encrypt(1, "sessions.customer", NUMBER),
        "decrypt": lambda: ring.decrypt_text(1, "sessions.customer", sealed),
        "blind_index": lambda: ring.blind_index(1, NUMBER),
        "blind_index (new tenant: HKDF)": lambda: KeyRing.blind_index(ring, time.perf_counter_ns(), NUMBER),
    }
    result = {}
    for name, step in work.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(rounds):
                step()
            best = min(best, (time.perf_counter() - started) / rounds * 1e6)
        result[name] = round(best, 2)
    return result


if __name__ == "__main__":
    for name, micros in _timings().items():
        print(f"{name:32} {micros:7.2f} µs")
