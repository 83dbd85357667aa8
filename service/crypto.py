"""Party numbers at rest: AES-256-GCM ciphertexts and HMAC-SHA256 blind indexes under keys kept outside the database.

The key ring is JSON, from MASKING_KEYS_FILE (mode 0600) or MASKING_KEYS (the same text in one variable):

    {"data":  {"current": "d2", "keys": {"d1": "<base64 of 32 bytes>", "d2": "<base64 of 32 bytes>"}},
     "index": {"current": "i1", "keys": {"i1": "<base64 of 32 bytes>"}}}

A ciphertext is `0x01 | len(key id) | key id | 12-byte random nonce | AES-GCM ciphertext and tag`; its
associated data is that header plus the tenant and the column, so a ciphertext copied into another
tenant's row or another column fails to decrypt. A blind index is HMAC-SHA256 of the E.164 number under
a per-tenant key derived (HKDF-SHA256) from the current index key: equal numbers of one tenant compare
equal, two tenants' indexes of one number differ, and without the key no number can be guessed from it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from service.settings import Settings

FORMAT = 1  # the first byte of every ciphertext: the layout above
NONCE_BYTES = 12
KEY_BYTES = 32
KEY_FILE_NAME = "keys.json"
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_COLUMN = re.compile(r"[a-z_][a-z0-9_.]{0,62}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


class KeysError(ValueError):
    """The keys cannot be loaded or used; the message says what to do."""


class UnknownKey(KeysError):
    """A ciphertext names a data key the ring does not hold."""

    def __init__(self, key_ids: Iterable[str]) -> None:
        self.key_ids = sorted(set(key_ids))
        super().__init__(
            f"Data key {', '.join(repr(k) for k in self.key_ids)} is not in MASKING_KEYS_FILE / MASKING_KEYS: "
            "restore the key file that holds it (keys are never kept in the database)."
        )


class DecryptionFailed(KeysError):
    """A ciphertext does not open under its key for this tenant and column (tampered, or moved from elsewhere)."""


class KeySet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Named keys (base64 of 32 bytes each) and the one new values are written under."""

    current: str
    keys: dict[str, str]


class KeyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The key file's JSON: data keys (encryption) and index keys (blind indexes)."""

    data: KeySet
    index: KeySet


def _decode_set(kind: str, keys: KeySet, source: str) -> dict[str, bytes]:
    decoded = {}
    for key_id, text in keys.keys.items():
        if not _KEY_ID.fullmatch(key_id):
            raise KeysError(f"{source}: {kind} key id {key_id!r} must be 1-32 letters, digits, '_' or '-'.")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != KEY_BYTES:
            raise KeysError(f"{source}: {kind} key {key_id!r} must be the base64 of exactly {KEY_BYTES} random bytes.")
        decoded[key_id] = raw
    if keys.current not in decoded:
        raise KeysError(f"{source}: the current {kind} key {keys.current!r} is not among its keys.")
    return decoded


class KeyRing:
    """Data keys by id (one current) and index keys by id (one current): encrypt, decrypt, blind-index."""

    def __init__(self, data: Mapping[str, bytes], current: str, index: Mapping[str, bytes], current_index: str) -> None:
        if current not in data or current_index not in index:
            raise KeysError("The current data and index keys must be among the ring's keys.")
        self.data, self.current = dict(data), current
        self.index, self.current_index = dict(index), current_index
        self._aead = {key_id: AESGCM(key) for key_id, key in self.data.items()}
        self._headers = {key_id: bytes([FORMAT, len(key_id)]) + key_id.encode() for key_id in self.data}
        # A keyed HMAC state per (index key, tenant); copying one is cheaper than keying a new one.
        self._macs: dict[tuple[str, int | None], hmac.HMAC] = {}

    @classmethod
    def parse(cls, text: str | bytes, source: str = "MASKING_KEYS") -> KeyRing:
        """A ring from the key file's JSON; a malformed one raises KeysError naming its source."""
        try:
            parsed = msgspec.json.decode(text, type=KeyFile)
        except msgspec.DecodeError as exc:
            raise KeysError(
                f'{source} is not a key file ({exc}); expected {{"data": {{"current", "keys"}}, '
                '"index": {"current", "keys"}} (see docs/security.md).'
            ) from None
        data = _decode_set("data", parsed.data, source)
        index = _decode_set("index", parsed.index, source)
        return cls(data, parsed.data.current, index, parsed.index.current)

    @classmethod
    def generate(cls) -> KeyRing:
        """A ring with one fresh random data key and one fresh random index key."""
        return cls({"d1": secrets.token_bytes(KEY_BYTES)}, "d1", {"i1": secrets.token_bytes(KEY_BYTES)}, "i1")

    def dumps(self) -> bytes:
        """The ring as key-file JSON (secret: write it only to a 0600 file)."""

        def encode(keys: Mapping[str, bytes]) -> dict[str, str]:
            return {k: base64.b64encode(v).decode() for k, v in keys.items()}

        return msgspec.json.encode(
            KeyFile(KeySet(self.current, encode(self.data)), KeySet(self.current_index, encode(self.index)))
        )

    def rotated(self, *, make_current: bool = True) -> KeyRing:
        """The same ring plus a fresh data key, made current unless asked not to (old keys stay, old ciphertexts open).

        With several instances, add the key first (make_current=False) and give every instance the new
        file, then make it current: no instance ever meets a ciphertext under a key it has not been given.
        """
        number = len(self.data) + 1
        while f"d{number}" in self.data:
            number += 1
        new_id = f"d{number}"
        current = new_id if make_current else self.current
        return KeyRing({**self.data, new_id: secrets.token_bytes(KEY_BYTES)}, current, self.index, self.current_index)

    def with_current(self, key_id: str) -> KeyRing:
        """The same ring with another of its data keys current (the second step of a rotation)."""
        if key_id not in self.data:
            raise UnknownKey([key_id])
        return KeyRing(self.data, key_id, self.index, self.current_index)

    def encrypt(self, tenant_id: int | None, column: str, plaintext: bytes | str) -> bytes:
        """AES-256-GCM under the current data key, bound to this tenant and column."""
        if isinstance(plaintext, str):
            plaintext = plaintext.encode()
        header = self._headers[self.current]
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aead[self.current].encrypt(nonce, plaintext, _context(header, tenant_id, column))

    def decrypt(self, tenant_id: int | None, column: str, ciphertext: bytes) -> bytes:
        """The plaintext of a ciphertext written for this tenant and column, under whichever data key it names."""
        key_id, body_at = _parse_header(ciphertext)
        aead = self._aead.get(key_id)
        if aead is None:
            raise UnknownKey([key_id])
        nonce, body = ciphertext[body_at : body_at + NONCE_BYTES], ciphertext[body_at + NONCE_BYTES :]
        try:
            return aead.decrypt(nonce, body, _context(ciphertext[:body_at], tenant_id, column))
        except InvalidTag:  # the data, tenant, column or key do not match
            raise DecryptionFailed(
                f"A ciphertext of {column} does not open for tenant {tenant_id} under key {key_id!r}: "
                "it was altered or copied from another tenant or column."
            ) from None

    def decrypt_text(self, tenant_id: int | None, column: str, ciphertext: bytes) -> str:
        """decrypt() of a text value (a phone number)."""
        return self.decrypt(tenant_id, column, ciphertext).decode()

    def blind_index(self, tenant_id: int | None, e164: str, key_id: str | None = None) -> bytes:
        """HMAC-SHA256 of an E.164 number (`+` and digits) under the tenant's key derived from an index key."""
        if not _E164.fullmatch(e164):
            raise ValueError("blind_index takes a normalised E.164 number (+ and 7 to 15 digits)")
        mac = self._mac(key_id or self.current_index, tenant_id)
        mac.update(e164.encode())
        return mac.digest()

    def keyed_hash(self, tenant_id: int | None, data: bytes) -> bytes:
        """HMAC-SHA256 of any bytes under the tenant's derived index key (a report's identity, say)."""
        mac = self._mac(self.current_index, tenant_id)
        mac.update(b"\x00" + data)  # never equal to a blind index (those start with "+")
        return mac.digest()

    def _mac(self, key_id: str, tenant_id: int | None) -> hmac.HMAC:
        """A fresh copy of the keyed HMAC state for this index key and tenant."""
        mac = self._macs.get((key_id, tenant_id))
        if mac is None:
            if key_id not in self.index:
                raise KeysError(f"Index key {key_id!r} is not in MASKING_KEYS_FILE / MASKING_KEYS.")
            derived = HKDF(
                algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=f"masking/index/v1/{tenant_id}".encode()
            ).derive(self.index[key_id])
            mac = self._macs[(key_id, tenant_id)] = hmac.new(derived, digestmod=hashlib.sha256)
        return mac.copy()

    def require(self, key_ids: Iterable[str]) -> None:
        """Raise UnknownKey naming every one of these data key ids that the ring lacks."""
        missing = set(key_ids) - set(self.data)
        if missing:
            raise UnknownKey(missing)


def is_e164(text: str) -> bool:
    """Whether text is a normalised E.164 number, the only form blind_index takes."""
    return _E164.fullmatch(text) is not None


def _context(header: bytes, tenant_id: int | None, column: str) -> bytes:
    if not _COLUMN.fullmatch(column):
        raise ValueError(f"column must be a lower-case name like sessions.customer, not {column!r}")
    return header + f"|{'-' if tenant_id is None else tenant_id}|{column}".encode()


def _parse_header(ciphertext: bytes) -> tuple[str, int]:
    """The key id a ciphertext names and where its nonce starts."""
    if len(ciphertext) < 2 or ciphertext[0] != FORMAT:
        raise DecryptionFailed("A value is not a ciphertext of this service (unknown format byte).")
    end = 2 + ciphertext[1]
    key_id = ciphertext[2:end].decode("ascii", "replace")
    if len(ciphertext) < end + NONCE_BYTES + 16 or not _KEY_ID.fullmatch(key_id):
        raise DecryptionFailed("A value is not a ciphertext of this service (truncated or malformed header).")
    return key_id, end


_INSTALLED: list[KeyRing] = []


def install(ring: KeyRing) -> None:
    """Make this the process's ring (once at start-up: by the app, the command line, the tests)."""
    _INSTALLED[:] = [ring]


def ring() -> KeyRing:
    """The process's ring; KeysError before one is installed."""
    if not _INSTALLED:
        raise KeysError("No key ring is loaded: the service must install one at start-up (crypto.install).")
    return _INSTALLED[0]


def ensure(settings: Settings) -> str:
    """Install the ring these settings name (or keep the one installed when they name none); its phrase."""
    if _INSTALLED and not (settings.keys_file or settings.keys):
        return "keys already loaded"
    loaded, phrase = for_settings(settings)
    install(loaded)
    return phrase


def key_ids(ciphertexts: Iterable[bytes | None]) -> set[str]:
    """The data key ids named by these ciphertexts (None skipped): what a database needs before serving."""
    return {_parse_header(c)[0] for c in ciphertexts if c is not None}


def load(keys_file: str | None, keys: str | None) -> KeyRing:
    """The ring from MASKING_KEYS_FILE (which must be mode 0600 or stricter) or MASKING_KEYS, exactly one."""
    if keys_file and keys:
        raise KeysError("Set MASKING_KEYS_FILE or MASKING_KEYS, not both.")
    if keys:
        return KeyRing.parse(keys, "MASKING_KEYS")
    if not keys_file:
        raise KeysError("Set MASKING_KEYS_FILE (a 0600 key file) or MASKING_KEYS; see docs/security.md.")
    path = Path(keys_file).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeysError(f"MASKING_KEYS_FILE {path} cannot be read ({exc.strerror}).") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysError(
            f"MASKING_KEYS_FILE {path} is open to group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}` so that only the service's user can read its keys."
        )
    return KeyRing.parse(path.read_bytes(), f"MASKING_KEYS_FILE {path}")


def write_key_file(path: str | Path, ring: KeyRing, *, replace: bool = False) -> None:
    """Write the ring to path, mode 0600, all at once; an existing file is replaced only when asked.

    Written to a private temporary name first, then linked (or renamed) into place: no reader ever sees
    a half-written key file, and two processes creating it at once cannot both succeed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, ring.dumps())
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(scratch, path)
        else:
            os.link(scratch, path)  # FileExistsError when the file is already there
    finally:
        scratch.unlink(missing_ok=True)


def embedded_key_file(data_dir: str | Path) -> tuple[KeyRing, Path, bool]:
    """The embedded database's ring, from keys.json beside its data; created (0600) on first start.

    Returns the ring, the file and whether it was just created (the start-up line says so).
    """
    path = Path(data_dir).expanduser().resolve() / KEY_FILE_NAME
    created = False
    if not path.exists():
        try:
            write_key_file(path, KeyRing.generate())
            created = True
        except FileExistsError:  # another process of ours made it first
            pass
    return load(str(path), None), path, created


def for_settings(settings: Settings) -> tuple[KeyRing, str]:
    """The service's ring and a phrase for its start-up line saying where the keys came from.

    MASKING_KEYS_FILE or MASKING_KEYS when set; otherwise, with the embedded database only, keys.json
    beside its data (created on first start). A database elsewhere with no keys configured is refused:
    a key file made up on one host would leave every other instance unable to read what it wrote.
    """
    if settings.keys_file or settings.keys:
        ring = load(settings.keys_file, settings.keys)
        return ring, f"keys from {'MASKING_KEYS_FILE ' + settings.keys_file if settings.keys_file else 'MASKING_KEYS'}"
    if settings.database_url:
        raise KeysError(
            "MASKING_DATABASE_URL is set but no keys are: set MASKING_KEYS_FILE (a 0600 key file) or MASKING_KEYS, "
            "the same on every instance (see docs/security.md)."
        )
    ring, path, created = embedded_key_file(settings.data_dir)
    return ring, f"{'created a new key file' if created else 'keys from'} {path}"
