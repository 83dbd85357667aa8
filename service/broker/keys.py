"""Keys over a database's life: the start-up check, re-encryption under a new data key, the blind index rebuild.

The keys themselves live in MASKING_KEYS_FILE / MASKING_KEYS (service/crypto.py); the database only lists the
data key ids its ciphertexts may name (data_keys), so that a process without one of them refuses to start
rather than fail on the first row it cannot open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec

from service import crypto
from service.broker.audit import Actor, Target, record
from service.db import Conn, rekey
from service.db import keys as q

BATCH = 500
# Rounds of re-encryption before a rotation stops and says what still writes under an older key.
MAX_ROUNDS = 10

# (what is being done, rows done so far, rows to do): the command line draws its bar from these.
Progress = Callable[[str, int, int], None]


def _no_progress(what: str, done: int, total: int) -> None:
    return None


async def check_at_start(conn: Conn, ring: crypto.KeyRing) -> None:
    """Refuse (UnknownKey, naming them) a database whose ciphertexts may name data keys this ring lacks;
    then record the ring's current key as one new ciphertexts name."""
    ring.require(await q.listed(conn))
    await q.register(conn, ring.current)


async def pending_rotation(conn: Conn, ring: crypto.KeyRing) -> bool:
    """Whether ciphertexts may still name another data key than the ring's current one (a rotation to finish)."""
    return set(await q.listed(conn)) != {ring.current}


class Rotation(msgspec.Struct, frozen=True):
    """What a re-encryption did: the key now current, rows re-encrypted per kind, key ids forgotten, values left."""

    key_id: str
    reencrypted: dict[str, int]
    forgotten: list[str]
    remaining: int


async def reencrypt(
    conn: Conn,
    actor: Actor,
    now: datetime,
    progress: Progress = _no_progress,
    batch: int = BATCH,
    max_rounds: int = MAX_ROUNDS,
) -> Rotation:
    """Re-encrypt every ciphertext under an older data key with the process ring's current one, online.

    Batches of `batch` rows, each its own transaction with SKIP LOCKED; rows written meanwhile under an older
    key (a process still running with the old key file) are taken by the next round. When none is left, the
    older key ids leave data_keys. Recorded in the audit log as keys.rotate (service-wide: no tenant).
    """
    ring = crypto.ring()
    key_id = ring.current
    ring.require(await q.listed(conn))
    async with conn.transaction():
        await q.register(conn, key_id)
        await record(conn, None, actor, "keys.rotate", Target("data_key", key_id), None, None, None, now)
    totals = {kind: await rekey.count_stale(conn, kind, key_id) for kind in rekey.KINDS}
    done = dict.fromkeys(rekey.KINDS, 0)
    remaining = sum(totals.values())
    for _ in range(max_rounds):
        moved = 0
        for kind in rekey.KINDS:
            progress(f"re-encrypting {kind}", done[kind], max(totals[kind], done[kind]))
            moved += await _walk(
                conn,
                lambda after, k=kind: rekey.reencrypt_batch(conn, k, after, batch, key_id),  # type: ignore[misc]
                lambda n, k=kind: _advance(done, totals, k, n, progress),  # type: ignore[misc]
            )
        remaining = sum([await rekey.count_stale(conn, kind, key_id) for kind in rekey.KINDS])
        if remaining == 0:
            break
        if moved == 0:  # every one left is locked by a transaction right now: let it finish
            await asyncio.sleep(0.5)
    forgotten = await q.keep_only(conn, [key_id]) if remaining == 0 else []
    return Rotation(key_id, done, forgotten, remaining)


def _advance(done: dict[str, int], totals: dict[str, int], kind: str, count: int, progress: Progress) -> None:
    done[kind] += count
    progress(f"re-encrypting {kind}", done[kind], max(totals[kind], done[kind]))


async def _walk(conn: Conn, step: Callable[[Any], Awaitable[tuple[int, Any]]], advanced: Callable[[int], None]) -> int:
    """Run batches in key order, one transaction each, until the last; the rows done."""
    after: Any = None
    total = 0
    while True:
        async with conn.transaction():
            count, after = await step(after)
        total += count
        advanced(count)
        if after is None:
            return total


class Reindexed(msgspec.Struct, frozen=True):
    """What an index rebuild did: the index key now current and the rows rebuilt."""

    index_key_id: str
    sessions: int
    calls: int


async def reindex(conn: Conn, progress: Progress = _no_progress, batch: int = BATCH) -> Reindexed:
    """Rebuild every blind index (sessions, their bindings, calls) under the process ring's current index key.

    Run with the service stopped: until the rebuild ends, lookups under either key miss the other's rows.
    """
    ring = crypto.ring()
    ring.require(await q.listed(conn))
    counts: dict[str, int] = {}
    for table, step in (("sessions", rekey.reindex_sessions), ("calls", rekey.reindex_calls)):
        total = await rekey.count_rows(conn, table)
        counts[table] = 0

        def advanced(n: int, table: str = table, total: int = total) -> None:
            counts[table] += n
            progress(f"reindexing {table}", counts[table], max(total, counts[table]))

        progress(f"reindexing {table}", 0, total)
        await _walk(conn, lambda after, s=step: s(conn, after, batch), advanced)  # type: ignore[misc]
    return Reindexed(ring.current_index, counts["sessions"], counts["calls"])
