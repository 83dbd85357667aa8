"""The upgrade's fill: a database at schema 15 gets its sealed columns from its clear ones, in batches, online.

Migration 0015 added the sealed columns beside the clear ones; this fills them (and seals raw report bodies,
stored idempotent answers and events' numbers in place) before migration 0016 drops the clear columns.
Each batch is one short transaction over at most BATCH rows, taken in primary-key order with SKIP LOCKED,
so live traffic is never held up; only rows not yet filled are read (a session or call whose _mask is NULL,
a binding without its _ix, a body whose first byte is not a ciphertext's, an event field not yet `\\x`), so
the fill can stop and start again anywhere. An older version may still be writing clear rows meanwhile:
fill() goes round again until a whole round finds nothing, and schema.migrate() runs one last round under
table locks in the very transaction that applies 0016.

A session retention already redacted (redacted_at set: its clear numbers are masked already) keeps the
masked form only; so does any call of it. A call into a flow keeps `flow:<id>` as its to_mask.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

from service import crypto
from service.db import Conn, sealed
from service.db import keys as data_keys
from service.db.idempotency import request_key

log = structlog.get_logger("service.db.backfill")

BATCH = 500
# The clear columns these batches read: present from schema 15 until migration 0016 drops them.
SEALED_FROM = 15
_FIRST_UUID = uuid.UUID(int=0)  # keyset start: below every id
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# A ciphertext's first byte (crypto.FORMAT): a body starting with it is sealed already.
_SEALED_BODY = r"substring({col} FROM 1 FOR 1) IS DISTINCT FROM '\x01'::bytea"


class Filled(msgspec.Struct):
    """How many rows of each kind a fill sealed."""

    sessions: int = 0
    bindings: int = 0
    calls: int = 0
    reports: int = 0
    idempotent: int = 0
    events: int = 0

    def total(self) -> int:
        """Rows sealed, all kinds together."""
        return sum(msgspec.structs.astuple(self))

    def add(self, other: Filled) -> None:
        """Count another fill's rows in this one."""
        for field in self.__struct_fields__:
            setattr(self, field, getattr(self, field) + getattr(other, field))


def _triple(tenant_id: int, party: str, value: str, redacted: bool) -> tuple[bytes | None, bytes | None, str]:
    """A clear column's sealed triple; a value already masked (or a flow) keeps only its masked form."""
    if redacted or value.startswith("flow:") or not _E164.fullmatch(value):
        return None, None, value if value.startswith("flow:") else sealed.mask(value)
    return sealed.party(tenant_id, party, value)


SESSIONS = """
SELECT id, tenant_id, customer, agent, redacted_at IS NOT NULL AS redacted FROM sessions
WHERE (customer_mask IS NULL OR agent_mask IS NULL) AND id > $1 ORDER BY id LIMIT $2 FOR UPDATE {skip}
"""
SESSIONS_SET = """
UPDATE sessions s SET customer_ct = v.cc, customer_ix = v.ci, customer_mask = v.cm,
    agent_ct = v.ac, agent_ix = v.ai, agent_mask = v.am
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::text[], $5::bytea[], $6::bytea[], $7::text[])
    AS v(id, cc, ci, cm, ac, ai, am)
WHERE s.id = v.id
"""


async def _sessions(conn: Conn, after: Any, batch: int, skip: str) -> tuple[int, Any]:
    rows = await conn.fetch(SESSIONS.format(skip=skip), after or _FIRST_UUID, batch)
    if not rows:
        return 0, None
    values: list[list[Any]] = [[] for _ in range(7)]
    for r in rows:
        triples = [_triple(r["tenant_id"], p, r[p], r["redacted"]) for p in sealed.PARTIES]
        for column, value in zip(values, (r["id"], *triples[0], *triples[1]), strict=True):
            column.append(value)
    await conn.execute(SESSIONS_SET, *values)
    return len(rows), rows[-1]["id"]


BINDINGS = """
SELECT b.number, b.did, b.peer, d.tenant_id FROM bindings b JOIN dids d ON d.number = b.did
WHERE (b.number_ix IS NULL OR b.peer_ix IS NULL) AND (b.number, b.did) > ($1, $2)
ORDER BY b.number, b.did LIMIT $3 FOR UPDATE OF b {skip}
"""
BINDINGS_SET = """
UPDATE bindings b SET number_ix = v.nix, peer_ix = v.pix
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]) AS v(number, did, nix, pix)
WHERE b.number = v.number AND b.did = v.did
"""


async def _bindings(conn: Conn, after: Any, batch: int, skip: str) -> tuple[int, Any]:
    rows = await conn.fetch(BINDINGS.format(skip=skip), *(after or ("", "")), batch)
    if not rows:
        return 0, None
    numbers, dids_, nixes, pixes = [], [], [], []
    for r in rows:
        numbers.append(r["number"])
        dids_.append(r["did"])
        nixes.append(sealed.index(r["tenant_id"], r["number"]))
        pixes.append(sealed.index(r["tenant_id"], r["peer"]))
    await conn.execute(BINDINGS_SET, numbers, dids_, nixes, pixes)
    return len(rows), (rows[-1]["number"], rows[-1]["did"])


CALLS = """
SELECT c.id, c.tenant_id, c.first, c.from_number, c.to_number, s.redacted_at IS NOT NULL AS redacted
FROM calls c JOIN sessions s ON s.id = c.session_id
WHERE (c.from_mask IS NULL OR c.to_mask IS NULL) AND c.id > $1 ORDER BY c.id LIMIT $2 FOR UPDATE OF c {skip}
"""
CALLS_SET = """
UPDATE calls c SET from_ct = v.fc, from_ix = v.fi, from_mask = v.fm, to_ct = v.tc, to_ix = v.ti, to_mask = v.tm
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::text[], $5::bytea[], $6::bytea[], $7::text[])
    AS v(id, fc, fi, fm, tc, ti, tm)
WHERE c.id = v.id
"""


async def _calls(conn: Conn, after: Any, batch: int, skip: str) -> tuple[int, Any]:
    rows = await conn.fetch(CALLS.format(skip=skip), after or _FIRST_UUID, batch)
    if not rows:
        return 0, None
    values: list[list[Any]] = [[] for _ in range(7)]
    for r in rows:
        tenant, first, redacted = r["tenant_id"], r["first"], r["redacted"]
        from_ = _triple(tenant, first, r["from_number"], redacted)
        to = _triple(tenant, sealed.other(first), r["to_number"], redacted)
        for column, value in zip(values, (r["id"], *from_, *to), strict=True):
            column.append(value)
    await conn.execute(CALLS_SET, *values)
    return len(rows), rows[-1]["id"]


REPORTS = f"""
SELECT id, body FROM provider_reports WHERE id > $1 AND {_SEALED_BODY.format(col="body")}
ORDER BY id LIMIT $2 FOR UPDATE {{skip}}
"""
REPORTS_SET = """
UPDATE provider_reports r SET body = v.body FROM unnest($1::bigint[], $2::bytea[]) AS v(id, body) WHERE r.id = v.id
"""

REPORT_KEYS = "SELECT key FROM report_keys WHERE report_id = ANY($1::bigint[]) FOR UPDATE"
REPORT_KEYS_SET = """
UPDATE report_keys k SET key = v.key FROM unnest($1::bytea[], $2::bytea[]) AS v(plain, key) WHERE k.key = v.plain
"""


async def _reports(conn: Conn, after: Any, batch: int, skip: str) -> tuple[int, Any]:
    rows = await conn.fetch(REPORTS.format(skip=skip), after or 0, batch)
    if not rows:
        return 0, None
    ids = [r["id"] for r in rows]
    bodies = [sealed.seal(None, sealed.REPORT_BODY, bytes(r["body"])) for r in rows]
    await conn.execute(REPORTS_SET, ids, bodies)
    # A report's identity (report_keys, written with it) turns from a plain SHA-256 into its keyed hash with it.
    plain = [bytes(r["key"]) for r in await conn.fetch(REPORT_KEYS, ids)]
    await conn.execute(REPORT_KEYS_SET, plain, [sealed.keyed_hash(None, k) for k in plain])
    return len(rows), rows[-1]["id"]


IDEMPOTENT = f"""
SELECT tenant_id, key, body, request_hash FROM idempotency_keys
WHERE (tenant_id, key) > ($1, $2) AND body IS NOT NULL AND {_SEALED_BODY.format(col="body")}
ORDER BY tenant_id, key LIMIT $3 FOR UPDATE {{skip}}
"""
IDEMPOTENT_SET = """
UPDATE idempotency_keys k SET body = v.body, request_hash = v.request_hash
FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bytea[]) AS v(tenant_id, key, body, request_hash)
WHERE k.tenant_id = v.tenant_id AND k.key = v.key
"""


async def _idempotent(conn: Conn, after: Any, batch: int, skip: str) -> tuple[int, Any]:
    rows = await conn.fetch(IDEMPOTENT.format(skip=skip), *(after or (0, "")), batch)
    if not rows:
        return 0, None
    bodies = [sealed.seal(r["tenant_id"], sealed.IDEMPOTENT_BODY, bytes(r["body"])) for r in rows]
    # The request's plain SHA-256 becomes its keyed hash with the body (a claim still without a body keeps its
    # plain hash: it is abandoned within a minute, and the next claim writes a keyed one).
    hashes = [request_key(r["tenant_id"], bytes(r["request_hash"])) for r in rows]
    await conn.execute(IDEMPOTENT_SET, [r["tenant_id"] for r in rows], [r["key"] for r in rows], bodies, hashes)
    return len(rows), (rows[-1]["tenant_id"], rows[-1]["key"])


# The events sealed.seal_event() would change: a number (or a report's body) not yet `\x` text.
_CLEAR_EVENT = r"""
    (type LIKE 'session.%' AND (left(data->>'customer', 2) <> '\x' OR left(data->>'agent', 2) <> '\x'))
    OR (type LIKE 'call.%' AND (left(data->>'from', 2) <> '\x'
                                OR (left(data->>'to', 2) <> '\x' AND data->>'to' NOT LIKE 'flow:%')))
    OR (type = 'report.unmatched' AND left(data->>'body', 2) <> '\x')"""
EVENTS = f"""
SELECT id, created_at, tenant_id, type, data::text AS data FROM events
WHERE id > $1 AND ({_CLEAR_EVENT}) ORDER BY id LIMIT $2 FOR UPDATE {{skip}}
"""
EVENTS_SET = """
UPDATE events e SET data = v.data::jsonb
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS v(id, created_at, data)
WHERE e.id = v.id AND e.created_at = v.created_at
"""


async def _events(conn: Conn, after: Any, batch: int, skip: str) -> tuple[int, Any]:
    rows = await conn.fetch(EVENTS.format(skip=skip), after or 0, batch)
    if not rows:
        return 0, None
    changed = []
    for r in rows:
        data = msgspec.json.decode(r["data"])
        sealed_data = sealed.seal_event(r["tenant_id"], r["type"], data)
        if sealed_data is not data:
            changed.append((r["id"], r["created_at"], msgspec.json.encode(sealed_data).decode()))
    if changed:
        await conn.execute(EVENTS_SET, *(list(c) for c in zip(*changed, strict=True)))
    return len(changed), rows[-1]["id"]


Batch = Callable[[Conn, Any, int, str], Awaitable[tuple[int, Any]]]
KINDS: dict[str, Batch] = {
    "sessions": _sessions,
    "bindings": _bindings,
    "calls": _calls,
    "reports": _reports,
    "idempotent": _idempotent,
    "events": _events,
}
# Locked, in this order, by the last round (the one in migration 0016's transaction).
TABLES = ("sessions", "bindings", "calls", "provider_reports", "idempotency_keys", "events")


async def _round(conn: Conn, batch: int, *, locked: bool) -> Filled:
    """One pass over every kind in key order; each batch its own transaction unless the caller holds the locks."""
    filled = Filled()
    skip = "" if locked else "SKIP LOCKED"
    registered = False
    for kind, step in KINDS.items():
        after: Any = None
        while True:
            async with conn.transaction():
                count, last = await step(conn, after, batch, skip)
                if count and not registered:  # data_keys names the key in the ciphertexts' own transaction
                    await data_keys.register(conn, crypto.ring().current)
                    registered = True
            setattr(filled, kind, getattr(filled, kind) + count)
            if last is None:
                break
            after = last
    return filled


async def fill(conn: Conn, batch: int = BATCH) -> Filled:
    """Seal every clear row, a batch per transaction, going round until a whole round finds none left.

    Rows an older version writes meanwhile are caught by the next round; rows locked by live traffic are
    skipped and caught by a later one (or by final_round()). Uses the process's key ring (crypto.ring()).
    """
    total = Filled()
    while True:
        filled = await _round(conn, batch, locked=False)
        total.add(filled)
        log.info("backfill_round", **msgspec.structs.asdict(filled))
        if filled.total() == 0:
            return total


async def final_round(conn: Conn, batch: int = BATCH) -> Filled:
    """In the caller's transaction: lock the tables against writers and seal what is still clear (before 0016)."""
    await conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN SHARE ROW EXCLUSIVE MODE")
    return await _round(conn, batch, locked=True)
