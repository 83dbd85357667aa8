"""SQL for key changes: re-encrypting ciphertexts under an older data key, rebuilding blind indexes, batch by batch.

Every step is one short transaction over at most a batch of rows taken in primary-key order (SKIP LOCKED for
re-encryption, which runs beside live traffic). A ciphertext is under the current key when it starts with the
current key's header (crypto: format byte, key id length, key id); nothing else needs reading to find the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from service import crypto
from service.db import Conn, sealed

_FIRST_UUID = uuid.UUID(int=0)


def _header(key_id: str) -> bytes:
    return bytes([crypto.FORMAT, len(key_id)]) + key_id.encode()


def _stale(column: str, key_id: str) -> str:
    """SQL: this bytea column holds a ciphertext under another data key than key_id."""
    header = _header(key_id)
    return f"({column} IS NOT NULL AND substring({column} FROM 1 FOR {len(header)}) <> '\\x{header.hex()}'::bytea)"


def _stale_text(field: str, key_id: str) -> str:
    """SQL: this event data field holds a sealed value (`\\x` hex) under another data key than key_id."""
    prefix = "\\x" + _header(key_id).hex()
    return f"(left(data->>'{field}', 2) = '\\x' AND left(data->>'{field}', {len(prefix)}) <> '{prefix}')"


def _again(tenant_id: int | None, column: str, ciphertext: bytes | None) -> bytes | None:
    """The ciphertext under the current data key (None stays None)."""
    if ciphertext is None:
        return None
    return sealed.seal(tenant_id, column, sealed.open_bytes(tenant_id, column, bytes(ciphertext)))


# (table, what one batch reads, how it writes back, how a row becomes its written values, the cursor of a row)
Step = Callable[[Conn, Any, int, str], Awaitable[tuple[int, Any]]]


def _party_step(table: str, columns: tuple[str, str]) -> tuple[Callable[[str], str], Step]:
    """Re-encryption of a sessions or calls row's two party ciphertexts (calls' labels follow `first`)."""
    first, second = columns
    extra = ", first" if table == "calls" else ""

    def where(key_id: str) -> str:
        return f"({_stale(first + '_ct', key_id)} OR {_stale(second + '_ct', key_id)})"

    async def step(conn: Conn, after: Any, batch: int, key_id: str) -> tuple[int, Any]:
        rows = await conn.fetch(
            f"""SELECT id, tenant_id{extra}, {first}_ct AS a, {second}_ct AS b FROM {table}
                WHERE id > $1 AND {where(key_id)} ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
            after or _FIRST_UUID,
            batch,
        )
        if not rows:
            return 0, None
        ids, a, b = [], [], []
        for r in rows:
            party = r["first"] if table == "calls" else "customer"
            ids.append(r["id"])
            a.append(_again(r["tenant_id"], sealed.label(party), r["a"]))
            b.append(_again(r["tenant_id"], sealed.label(sealed.other(party)), r["b"]))
        await conn.execute(
            f"""UPDATE {table} t SET {first}_ct = v.a, {second}_ct = v.b
                FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS v(id, a, b) WHERE t.id = v.id""",
            ids,
            a,
            b,
        )
        return len(rows), rows[-1]["id"]

    return where, step


def _report_where(key_id: str) -> str:
    return _stale("body", key_id)


async def _reports(conn: Conn, after: Any, batch: int, key_id: str) -> tuple[int, Any]:
    rows = await conn.fetch(
        f"""SELECT id, body FROM provider_reports WHERE id > $1 AND {_report_where(key_id)}
            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
        after or 0,
        batch,
    )
    if not rows:
        return 0, None
    await conn.execute(
        "UPDATE provider_reports r SET body = v.body FROM unnest($1::bigint[], $2::bytea[]) AS v(id, body) "
        "WHERE r.id = v.id",
        [r["id"] for r in rows],
        [_again(None, sealed.REPORT_BODY, r["body"]) for r in rows],
    )
    return len(rows), rows[-1]["id"]


async def _idempotent(conn: Conn, after: Any, batch: int, key_id: str) -> tuple[int, Any]:
    rows = await conn.fetch(
        f"""SELECT tenant_id, key, body FROM idempotency_keys WHERE (tenant_id, key) > ($1, $2)
            AND {_report_where(key_id)} ORDER BY tenant_id, key LIMIT $3 FOR UPDATE SKIP LOCKED""",
        *(after or (0, "")),
        batch,
    )
    if not rows:
        return 0, None
    await conn.execute(
        """UPDATE idempotency_keys k SET body = v.body
           FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS v(tenant_id, key, body)
           WHERE k.tenant_id = v.tenant_id AND k.key = v.key""",
        [r["tenant_id"] for r in rows],
        [r["key"] for r in rows],
        [_again(r["tenant_id"], sealed.IDEMPOTENT_BODY, r["body"]) for r in rows],
    )
    return len(rows), (rows[-1]["tenant_id"], rows[-1]["key"])


def _events_where(key_id: str) -> str:
    return f"""((type LIKE 'session.%' AND ({_stale_text("customer", key_id)} OR {_stale_text("agent", key_id)}))
        OR (type LIKE 'call.%' AND ({_stale_text("from", key_id)} OR {_stale_text("to", key_id)}))
        OR (type = 'report.unmatched' AND {_stale_text("body", key_id)}))"""


def resealed_event(tenant_id: int, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's data with each sealed field sealed again under the current key (masked fields left as they are)."""
    data = dict(data)
    for field, column in sealed._event_fields(type_, data):
        value = data.get(field)
        if isinstance(value, str) and value.startswith("\\x"):
            data[field] = sealed.as_text(_again(tenant_id, column, bytes.fromhex(value[2:])) or b"")
    return data


async def _events(conn: Conn, after: Any, batch: int, key_id: str) -> tuple[int, Any]:
    rows = await conn.fetch(
        f"""SELECT id, created_at, tenant_id, type, data::text AS data FROM events
            WHERE id > $1 AND {_events_where(key_id)} ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
        after or 0,
        batch,
    )
    if not rows:
        return 0, None
    await conn.execute(
        """UPDATE events e SET data = v.data::jsonb
           FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS v(id, created_at, data)
           WHERE e.id = v.id AND e.created_at = v.created_at""",
        [r["id"] for r in rows],
        [r["created_at"] for r in rows],
        [
            msgspec.json.encode(resealed_event(r["tenant_id"], r["type"], msgspec.json.decode(r["data"]))).decode()
            for r in rows
        ],
    )
    return len(rows), rows[-1]["id"]


def _recordings_where(key_id: str) -> str:
    """SQL: a call's recording reference is sealed text under another data key than key_id."""
    prefix = "\\x" + _header(key_id).hex()
    return f"(left(recording_url, 2) = '\\x' AND left(recording_url, {len(prefix)}) <> '{prefix}')"


async def _recordings(conn: Conn, after: Any, batch: int, key_id: str) -> tuple[int, Any]:
    rows = await conn.fetch(
        f"""SELECT id, tenant_id, recording_url FROM calls WHERE id > $1 AND {_recordings_where(key_id)}
            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
        after or _FIRST_UUID,
        batch,
    )
    if not rows:
        return 0, None
    again = [
        sealed.as_text(
            sealed.seal(
                r["tenant_id"],
                sealed.RECORDING,
                sealed.opened(r["tenant_id"], sealed.RECORDING, r["recording_url"]) or "",
            )
        )
        for r in rows
    ]
    await conn.execute(
        "UPDATE calls c SET recording_url = v.url FROM unnest($1::uuid[], $2::text[]) AS v(id, url) WHERE c.id = v.id",
        [r["id"] for r in rows],
        again,
    )
    return len(rows), rows[-1]["id"]


_sessions_where, _sessions = _party_step("sessions", ("customer", "agent"))
_calls_where, _calls = _party_step("calls", ("from", "to"))

# Every place a ciphertext is kept: its kind, its table, which of its rows are under another key, one batch.
KINDS: dict[str, tuple[str, Callable[[str], str], Step]] = {
    "sessions": ("sessions", _sessions_where, _sessions),
    "calls": ("calls", _calls_where, _calls),
    "reports": ("provider_reports", _report_where, _reports),
    "idempotent": ("idempotency_keys", _report_where, _idempotent),
    "events": ("events", _events_where, _events),
    "recordings": ("calls", _recordings_where, _recordings),
}


async def count_stale(conn: Conn, kind: str, key_id: str) -> int:
    """How many rows of this kind hold a ciphertext under another data key than key_id."""
    table, where, _ = KINDS[kind]
    count: int = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where(key_id)}")
    return count


async def reencrypt_batch(conn: Conn, kind: str, after: Any, batch: int, key_id: str) -> tuple[int, Any]:
    """Re-encrypt one batch of this kind under the current key (key_id); (rows done, cursor or None at the end)."""
    return await KINDS[kind][2](conn, after, batch, key_id)


async def key_ids_in_use(conn: Conn) -> set[str]:
    """Every data key id a stored ciphertext names (a full read: for tests and checks, not for serving)."""
    found: set[str] = set()
    for column, table in (
        ("customer_ct", "sessions"),
        ("agent_ct", "sessions"),
        ("from_ct", "calls"),
        ("to_ct", "calls"),
        ("body", "provider_reports"),
        ("body", "idempotency_keys"),
    ):
        rows = await conn.fetch(
            f"SELECT DISTINCT substring({column} FROM 1 FOR 2 + get_byte({column}, 1)) FROM {table} "
            f"WHERE {column} IS NOT NULL AND length({column}) > 2"
        )
        found |= crypto.key_ids(bytes(r[0]) + bytes(crypto.NONCE_BYTES + 16) for r in rows)
    for r in await conn.fetch("SELECT recording_url FROM calls WHERE left(recording_url, 2) = '\\x'"):
        found |= crypto.key_ids([bytes.fromhex(r[0][2:])])
    for r in await conn.fetch("SELECT tenant_id, type, data::text FROM events"):
        data = msgspec.json.decode(r[2])
        if isinstance(data, dict):
            for field, _ in sealed._event_fields(r[1], data):
                value = data.get(field)
                if isinstance(value, str) and value.startswith("\\x"):
                    found |= crypto.key_ids([bytes.fromhex(value[2:])])
    return found


# Blind indexes: each rebuilt from its ciphertext under the ring's current index key. A binding holds no
# ciphertext, only its number's and peer's indexes: it is rebuilt with its session, in the same transaction,
# from the session's parties; a binding naming neither (its number was replaced since) cannot be, and goes
# (it only remembered a past pairing for cool-off and sticky re-use).
async def reindex_sessions(conn: Conn, after: Any, batch: int) -> tuple[int, Any]:
    """Rebuild one batch of sessions' indexes and their bindings'; (sessions done, cursor or None at the end)."""
    rows = await conn.fetch(
        """SELECT id, tenant_id, customer_ct, customer_ix, agent_ct, agent_ix FROM sessions
           WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE""",
        after or _FIRST_UUID,
        batch,
    )
    if not rows:
        return 0, None
    ids, old_c, old_a = [], [], []
    new_c: list[bytes | None] = []
    new_a: list[bytes | None] = []
    for r in rows:
        ids.append(r["id"])
        old_c.append(r["customer_ix"])
        old_a.append(r["agent_ix"])
        for party, out in (("customer", new_c), ("agent", new_a)):
            ct = r[f"{party}_ct"]
            number = None if ct is None else sealed.open_bytes(r["tenant_id"], sealed.label(party), bytes(ct)).decode()
            out.append(None if number is None else sealed.index(r["tenant_id"], number))
    await conn.execute(
        """WITH v AS (SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[])
                      AS v(id, old_c, old_a, new_c, new_a)),
           matched AS (SELECT b.number_ix, b.did, v.new_c, v.new_a, b.number_ix IN (v.old_c, v.new_c) AS is_c
                       FROM bindings b JOIN v ON b.session_id = v.id
                       WHERE v.new_c IS NOT NULL AND v.new_a IS NOT NULL
                         AND ((b.number_ix IN (v.old_c, v.new_c) AND b.peer_ix IN (v.old_a, v.new_a))
                           OR (b.number_ix IN (v.old_a, v.new_a) AND b.peer_ix IN (v.old_c, v.new_c)))),
           gone AS (DELETE FROM bindings b USING v WHERE b.session_id = v.id
                    AND NOT EXISTS (SELECT 1 FROM matched m WHERE m.number_ix = b.number_ix AND m.did = b.did)),
           bound AS (UPDATE bindings b
                     SET number_ix = CASE WHEN m.is_c THEN m.new_c ELSE m.new_a END,
                         peer_ix = CASE WHEN m.is_c THEN m.new_a ELSE m.new_c END
                     FROM matched m WHERE b.number_ix = m.number_ix AND b.did = m.did)
        UPDATE sessions s SET customer_ix = v.new_c, agent_ix = v.new_a FROM v WHERE s.id = v.id""",
        ids,
        old_c,
        old_a,
        new_c,
        new_a,
    )
    return len(rows), rows[-1]["id"]


async def reindex_calls(conn: Conn, after: Any, batch: int) -> tuple[int, Any]:
    """Rebuild one batch of calls' from/to indexes from their ciphertexts; (calls done, cursor or None at the end)."""
    rows = await conn.fetch(
        "SELECT id, tenant_id, first, from_ct, to_ct FROM calls WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE",
        after or _FIRST_UUID,
        batch,
    )
    if not rows:
        return 0, None
    ids = []
    from_ix: list[bytes | None] = []
    to_ix: list[bytes | None] = []
    for r in rows:
        ids.append(r["id"])
        for side, party, out in (("from", r["first"], from_ix), ("to", sealed.other(r["first"]), to_ix)):
            ct = r[f"{side}_ct"]
            number = None if ct is None else sealed.open_bytes(r["tenant_id"], sealed.label(party), bytes(ct)).decode()
            out.append(None if number is None else sealed.index(r["tenant_id"], number))
    await conn.execute(
        """UPDATE calls c SET from_ix = v.f, to_ix = v.t
           FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS v(id, f, t) WHERE c.id = v.id""",
        ids,
        from_ix,
        to_ix,
    )
    return len(rows), rows[-1]["id"]


async def count_rows(conn: Conn, table: str) -> int:
    """Rows of sessions or calls (what a reindex walks)."""
    assert table in ("sessions", "calls")
    count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return count
