"""Party numbers into and out of rows: ciphertext, blind index and masked form under the process's key ring.

A party number is stored as three values (docs/security.md): `_ct` its AES-GCM ciphertext (bound to the
tenant and the party's role), `_ix` its blind index (HMAC under the tenant's index key; what rule 1 and
every lookup compare) and `_mask` (+91******3210, what the console lists and what is left after
retention or erasure clear the other two). In a row or an event's JSON a sealed value travels as text,
`\\x` and the ciphertext's hex (SQL builds it with sealed_text()); opened() turns it back into the number.
"""

from __future__ import annotations

from typing import Any

from service import crypto
from service.logging import mask_number

PARTIES = ("customer", "agent")
REPORT_BODY = "provider_reports.body"  # a stored raw report (its tenant is not known until it is parsed)
EVENT_REPORT_BODY = "report.body"  # a report's body inside a report.unmatched event
IDEMPOTENT_BODY = "idempotency_keys.body"
RECORDING = "calls.recording_url"  # the provider's reference to a call's recording (may name the numbers)


def label(party: str) -> str:
    """The associated-data name of a party's number: the role it plays, wherever the number is copied."""
    return f"party.{party}"


def other(party: str) -> str:
    """The other party."""
    return "customer" if party == "agent" else "agent"


def seal(tenant_id: int | None, column: str, text: str | bytes) -> bytes:
    """The ciphertext of a value for this tenant and column."""
    return crypto.ring().encrypt(tenant_id, column, text)


def open_bytes(tenant_id: int | None, column: str, ciphertext: bytes) -> bytes:
    """The plaintext of a ciphertext written by seal()."""
    return crypto.ring().decrypt(tenant_id, column, ciphertext)


def index(tenant_id: int, number: str) -> bytes:
    """The blind index of an E.164 number for this tenant (what lookups and rule 1 compare)."""
    return crypto.ring().blind_index(tenant_id, number)


def probe(tenant_id: int | None, number: str | None) -> bytes:
    """The blind index to look a number up by; for no tenant or no E.164 number, one that matches nothing."""
    if tenant_id is None or number is None or not crypto.is_e164(number):
        return b""
    return crypto.ring().blind_index(tenant_id, number)


def indexes(tenant_id: int, numbers: list[str]) -> list[bytes]:
    """index() of each number."""
    ring = crypto.ring()
    return [ring.blind_index(tenant_id, n) for n in numbers]


def keyed_hash(tenant_id: int | None, data: bytes) -> bytes:
    """A keyed hash of any bytes (a report's identity): without the key, nothing can be guessed from it."""
    return crypto.ring().keyed_hash(tenant_id, data)


def mask(number: str) -> str:
    """The masked form kept in clear: +919876543210 becomes +91******3210."""
    return mask_number(number)


def party(tenant_id: int, party_: str, number: str) -> tuple[bytes, bytes, str]:
    """A party number's stored triple: ciphertext, blind index, masked form."""
    return seal(tenant_id, label(party_), number), index(tenant_id, number), mask(number)


def sealed_text(ct: str, mask_: str) -> str:
    """SQL: a sealed column as text for a row or JSON (`\\x` and hex), or its masked form once cleared."""
    return f"CASE WHEN {ct} IS NULL THEN {mask_} ELSE '\\x' || encode({ct}, 'hex') END"


def as_text(ciphertext: bytes) -> str:
    """A ciphertext as sealed_text() writes it (for data built in Python)."""
    return "\\x" + ciphertext.hex()


def opened(tenant_id: int | None, column: str, value: str | None) -> str | None:
    """A value as sealed_text() wrote it, opened: the number (or the masked form left after erasure)."""
    if value is None or not value.startswith("\\x"):
        return value
    return crypto.ring().decrypt_text(tenant_id, column, bytes.fromhex(value[2:]))


def _is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("\\x")


def _event_fields(type_: str, data: dict[str, Any]) -> list[tuple[str, str]]:
    """The sealed fields of an event's data and the column name each is bound to."""
    if type_.startswith("session."):
        return [(p, label(p)) for p in PARTIES]
    if type_.startswith("call."):
        first = str(data["first"]) if data.get("first") in PARTIES else "agent"
        return [("from", label(first)), ("to", label(other(first)))]
    if type_ == "report.unmatched":
        return [("body", EVENT_REPORT_BODY)]
    return []


def seal_event(tenant_id: int, type_: str, data: Any) -> Any:
    """An event's data with its numbers (and a report's body) sealed, as stored."""
    if not isinstance(data, dict):
        return data
    fields = _event_fields(type_, data)
    if not any(isinstance(data.get(f), str) and not _is_sealed(data[f]) for f, _ in fields):
        return data
    data = dict(data)
    for field, column in fields:
        value = data.get(field)
        if isinstance(value, str) and not _is_sealed(value) and not value.startswith("flow:"):
            data[field] = as_text(seal(tenant_id, column, value))
    return data


def open_event(tenant_id: int, type_: str, data: Any) -> Any:
    """A stored event's data with its sealed values opened, as the feed and webhooks show it."""
    if not isinstance(data, dict):
        return data
    fields = _event_fields(type_, data)
    if not any(_is_sealed(data.get(f)) for f, _ in fields):
        return data
    data = dict(data)
    for field, column in fields:
        data[field] = opened(tenant_id, column, data.get(field))
    return data
