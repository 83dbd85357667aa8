"""The DID pool: adding numbers (one, many, from CSV), listing them, draining and retiring them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime

import msgspec

from service.broker.bodies import MAX_BULK, AddDid, NewDid
from service.broker.errors import DidInUse, DidTaken, InvalidPhoneNumber, InvalidRequest, NotFound, TooManyPools
from service.broker.phones import parse_with_region
from service.db import Conn
from service.db import dids as q
from service.db import pools as pools_q
from service.models import Did, DidStatus

# The default of MASKING_MAX_POOLS_PER_TENANT, for callers without settings (the CLI import).
MAX_POOLS = 100


class DidPage(msgspec.Struct, frozen=True):
    """A page of DIDs and the cursor of the next one (None on the last page)."""

    items: list[Did]
    next_cursor: str | None


async def _check_pools(conn: Conn, tenant_id: int, pools: Sequence[str], max_pools: int) -> None:
    """Inside a transaction: refuse when these pools would take the tenant past max_pools."""
    await q.lock_pools(conn, tenant_id)
    held, count = await pools_q.count_pools_with(conn, tenant_id, sorted(set(pools)))
    if count > max_pools and count > held:  # a tenant already past a lowered cap may still use its pools
        raise TooManyPools(
            f"This would make {count} pools; a tenant may hold at most {max_pools} "
            "(MASKING_MAX_POOLS_PER_TENANT). Put these DIDs in an existing pool or retire a pool's DIDs first.",
            max_pools=max_pools,
        )


async def add_did(
    conn: Conn, tenant_id: int, did: AddDid, now: datetime, max_pools: int = MAX_POOLS
) -> tuple[Did, bool]:
    """Add a DID to the tenant's pool; (the DID, True) when created, (unchanged DID, False) when it was there."""
    e164, country = parse_with_region(did.number, "number")
    async with conn.transaction():
        await _check_pools(conn, tenant_id, [did.pool], max_pools)
        created = await q.insert_did(conn, tenant_id, e164, did.pool, country, did.max_concurrent_calls)
    row = await q.select_did(conn, tenant_id, e164, now)
    if row is None:
        raise DidTaken(f"{e164} belongs to another tenant; it cannot be added to your pool.", number=e164)
    return row, created


def validate_entries(entries: Sequence[NewDid], line_of: Sequence[int] | None = None) -> list[tuple[str, str, str]]:
    """Normalize every entry or raise 422 naming each bad one (by index, or by line with line_of)."""
    if len(entries) > MAX_BULK:
        raise InvalidRequest(f"At most {MAX_BULK} DIDs can be added at once; split the list.", field="dids")
    problems: list[dict[str, object]] = []
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = {"line": line_of[i]} if line_of is not None else {"index": i}
        try:
            e164, country = parse_with_region(entry.number, "number")
        except InvalidPhoneNumber:
            problems.append({**where, "number": entry.number, "error": "not a valid phone number"})
            continue
        if not 1 <= len(entry.pool) <= 64:
            problems.append({**where, "number": entry.number, "error": "pool must be 1 to 64 characters"})
            continue
        if e164 in seen:
            continue
        seen.add(e164)
        rows.append((e164, entry.pool, country))
    if problems:
        first = problems[0]
        place = f"line {first['line']}" if "line" in first else f"entry {first['index']}"
        raise InvalidRequest(
            f"{len(problems)} of {len(entries)} entries are invalid (first: {place}, {first['error']}); "
            "nothing was added.",
            field="dids",
            invalid=problems[:100],
        )
    return rows


async def add_dids(
    conn: Conn,
    tenant_id: int,
    entries: Sequence[NewDid],
    line_of: Sequence[int] | None = None,
    max_pools: int = MAX_POOLS,
) -> tuple[int, int]:
    """Add many DIDs in one transaction, all or nothing; return (created, existing)."""
    rows = validate_entries(entries, line_of)
    numbers = [r[0] for r in rows]
    async with conn.transaction():
        await _check_pools(conn, tenant_id, [r[1] for r in rows], max_pools)
        created = await q.insert_dids(conn, tenant_id, numbers, [r[1] for r in rows], [r[2] for r in rows])
        if created < len(rows):
            taken = sorted(n for n, owner in (await q.select_owners(conn, numbers)).items() if owner != tenant_id)
            if taken:
                raise DidTaken(
                    f"{len(taken)} of these numbers belong to another tenant; nothing was added.",
                    numbers=taken[:100],
                )
    if created:
        await q.analyze(conn)
    return created, len(rows) - created


async def list_dids(
    conn: Conn,
    tenant_id: int,
    now: datetime,
    pool: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> DidPage:
    """A page of the tenant's DIDs (by pool, then number) with their active session counts."""
    after = _decode_cursor(cursor) if cursor else None
    rows = await q.select_dids(conn, tenant_id, now, pool, status, after, limit + 1)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = base64.urlsafe_b64encode(msgspec.json.encode([last.pool, last.number])).decode()
    return DidPage(items=rows[:limit], next_cursor=next_cursor)


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        pool, number = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()), type=tuple[str, str])
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidRequest(
            "`cursor` is not one this service gave out; start again without it.", field="cursor"
        ) from None
    return pool, number


async def change_did(
    conn: Conn,
    tenant_id: int,
    number: str,
    status: DidStatus | None,
    pool: str | None,
    now: datetime,
    max_pools: int = MAX_POOLS,
) -> Did:
    """Set a DID's status (retired only when no active session uses it) and pool."""
    try:
        e164, _ = parse_with_region(number, "number")
    except InvalidPhoneNumber:
        raise NotFound("No DID with that number in your pools.") from None
    async with conn.transaction():
        if pool is not None:
            await _check_pools(conn, tenant_id, [pool], max_pools)
        if not await q.lock_did(conn, tenant_id, e164):
            raise NotFound(f"No DID {e164} in your pools.")
        if status == "retired" and await q.count_active_bindings(conn, e164, now):
            raise DidInUse(
                f"{e164} still carries active sessions; set it to draining, wait for them to end, then retire it."
            )
        await q.update_did(conn, tenant_id, e164, status, pool)
        row = await q.select_did(conn, tenant_id, e164, now)
    assert row is not None
    return row
