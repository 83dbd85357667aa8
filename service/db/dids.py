"""SQL for the DID pool."""

from __future__ import annotations

from datetime import datetime

import msgspec

from service.db import Conn
from service.models import Did

# A DID row as the API lists it ($2: now, for its live sessions); the console's search reads the same.
DID_COLUMNS = """
    d.number, d.pool, d.country, d.status, d.max_concurrent_calls, d.created_at,
    (SELECT count(*) FROM sessions s
      WHERE s.did = d.number AND s.status = 'active' AND s.expires_at > $2)::int AS active_sessions
"""


async def insert_did(
    conn: Conn,
    tenant_id: int,
    number: str,
    pool: str,
    country: str,
    max_concurrent_calls: int | None,
) -> bool:
    """Insert a DID; False when the number already exists (for any tenant)."""
    inserted = await conn.fetchval(
        """
        INSERT INTO dids (number, tenant_id, pool, country, max_concurrent_calls) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (number) DO NOTHING RETURNING true
        """,
        number,
        tenant_id,
        pool,
        country,
        max_concurrent_calls,
    )
    return bool(inserted)


async def select_did(conn: Conn, tenant_id: int, number: str, now: datetime) -> Did | None:
    """One of the tenant's DIDs with its active session count."""
    row = await conn.fetchrow(
        f"SELECT {DID_COLUMNS} FROM dids d WHERE d.tenant_id = $1 AND d.number = $3", tenant_id, now, number
    )
    return None if row is None else msgspec.convert(row, Did)


async def select_owners(conn: Conn, numbers: list[str]) -> dict[str, int]:
    """The owning tenant of each of these numbers that is already a DID."""
    rows = await conn.fetch("SELECT number, tenant_id FROM dids WHERE number = ANY($1::text[])", numbers)
    return {r["number"]: r["tenant_id"] for r in rows}


async def insert_dids(conn: Conn, tenant_id: int, numbers: list[str], pools: list[str], countries: list[str]) -> int:
    """Insert many DIDs at once, skipping numbers that exist; return how many were created."""
    created: int = await conn.fetchval(
        """
        WITH new AS (
            INSERT INTO dids (number, tenant_id, pool, country)
            SELECT n, $1, p, c FROM unnest($2::text[], $3::text[], $4::text[]) AS u(n, p, c)
            ON CONFLICT (number) DO NOTHING RETURNING 1)
        SELECT count(*)::int FROM new
        """,
        tenant_id,
        numbers,
        pools,
        countries,
    )
    return created


async def analyze(conn: Conn) -> None:
    """Refresh the planner's statistics of the DID table after a bulk load."""
    await conn.execute("ANALYZE dids")


async def select_dids(
    conn: Conn,
    tenant_id: int,
    now: datetime,
    pool: str | None,
    status: str | None,
    after: tuple[str, str] | None = None,
    limit: int | None = None,
) -> list[Did]:
    """The tenant's DIDs by pool and number, optionally of one pool or status, after (pool, number), at most limit."""
    rows = await conn.fetch(
        f"""
        SELECT {DID_COLUMNS} FROM dids d
        WHERE d.tenant_id = $1 AND ($3::text IS NULL OR d.pool = $3) AND ($4::text IS NULL OR d.status = $4)
          AND ($5::text IS NULL OR (d.pool, d.number) > ($5, $6))
        ORDER BY d.pool, d.number
        LIMIT $7
        """,
        tenant_id,
        now,
        pool,
        status,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [msgspec.convert(r, Did) for r in rows]


async def lock_pools(conn: Conn, tenant_id: int) -> None:
    """Serialize, per tenant, the transactions that may add a pool, so that the cap holds under concurrency."""
    await conn.execute("SELECT pg_advisory_xact_lock(73051, $1::int)", tenant_id)


async def update_did(conn: Conn, tenant_id: int, number: str, status: str | None, pool: str | None) -> bool:
    """Change a DID's status and pool; False when the tenant has no such DID."""
    result: str = await conn.execute(
        """
        UPDATE dids SET status = coalesce($3, status), pool = coalesce($4, pool)
        WHERE tenant_id = $1 AND number = $2
        """,
        tenant_id,
        number,
        status,
        pool,
    )
    return result != "UPDATE 0"


async def lock_did(conn: Conn, tenant_id: int, number: str) -> bool:
    """Lock a DID row for a status change; False when the tenant has no such DID."""
    return bool(
        await conn.fetchval("SELECT true FROM dids WHERE tenant_id = $1 AND number = $2 FOR UPDATE", tenant_id, number)
    )


async def count_active_bindings(conn: Conn, number: str, now: datetime) -> int:
    """How many live bindings a DID holds (two per active session)."""
    count: int = await conn.fetchval("SELECT count(*)::int FROM bindings WHERE did = $1 AND ends_at > $2", number, now)
    return count


# A DID's tenant never changes (a DID is added to one tenant and at most retired), so each process keeps
# what it has looked up: matching a report or a caller, whose blind indexes are per tenant, then costs
# no round trip. Only found DIDs are kept (a DID added later is looked up again).
_TENANT_OF_DID: dict[str, int] = {}


async def tenant_of_did(conn: Conn, number: str) -> int | None:
    """The tenant a DID belongs to, or None for a number that is no DID."""
    tenant_id = _TENANT_OF_DID.get(number)
    if tenant_id is None:
        tenant_id = await conn.fetchval("SELECT tenant_id FROM dids WHERE number = $1", number)
        if tenant_id is not None:
            if len(_TENANT_OF_DID) > 100_000:
                _TENANT_OF_DID.clear()
            _TENANT_OF_DID[number] = tenant_id
    return tenant_id
