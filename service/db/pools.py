"""SQL for pools: their settings rows, the pools a tenant has, and what the routing fallback needs to know."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from service.db import Conn


class PoolSettingsRow(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's settings row (nulls: the service-wide setting applies)."""

    pool: str
    fallback_connect_to: str | None = None
    fallback_flow: str | None = None
    cooloff_seconds: int | None = None
    default_ttl_seconds: int | None = None
    default_max_calls: int | None = None
    headroom_alert: int = 2


_COLUMNS = """pool, fallback_connect_to, fallback_flow, cooloff_seconds, default_ttl_seconds, default_max_calls,
    headroom_alert"""


def _row(row: Any) -> PoolSettingsRow:
    return msgspec.convert(row, PoolSettingsRow)


async def select_settings(conn: Conn, tenant_id: int, pool: str) -> PoolSettingsRow | None:
    """The pool's settings row, if it has one."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM pool_settings WHERE tenant_id = $1 AND pool = $2", tenant_id, pool
    )
    return None if row is None else _row(row)


async def select_all_settings(conn: Conn, tenant_id: int | None) -> dict[tuple[int, str], PoolSettingsRow]:
    """Every settings row of a tenant (or of all tenants), by (tenant id, pool)."""
    rows = await conn.fetch(
        f"SELECT tenant_id, {_COLUMNS} FROM pool_settings WHERE $1::bigint IS NULL OR tenant_id = $1", tenant_id
    )
    return {(r["tenant_id"], r["pool"]): _row({k: v for k, v in r.items() if k != "tenant_id"}) for r in rows}


async def upsert_settings(conn: Conn, tenant_id: int, s: PoolSettingsRow, now: datetime) -> PoolSettingsRow:
    """Replace the pool's settings with these."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO pool_settings (tenant_id, pool, fallback_connect_to, fallback_flow, cooloff_seconds,
                                   default_ttl_seconds, default_max_calls, headroom_alert, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (tenant_id, pool) DO UPDATE SET
            fallback_connect_to = excluded.fallback_connect_to, fallback_flow = excluded.fallback_flow,
            cooloff_seconds = excluded.cooloff_seconds, default_ttl_seconds = excluded.default_ttl_seconds,
            default_max_calls = excluded.default_max_calls, headroom_alert = excluded.headroom_alert,
            updated_at = excluded.updated_at
        RETURNING {_COLUMNS}
        """,
        tenant_id,
        s.pool,
        s.fallback_connect_to,
        s.fallback_flow,
        s.cooloff_seconds,
        s.default_ttl_seconds,
        s.default_max_calls,
        s.headroom_alert,
        now,
    )
    return _row(row)


async def max_cooloff_seconds(conn: Conn) -> int:
    """The longest cool-off any pool sets (0 when none does): ended bindings must be kept at least this long."""
    value: int = await conn.fetchval("SELECT coalesce(max(cooloff_seconds), 0) FROM pool_settings")
    return value


class FallbackRow(msgspec.Struct, frozen=True, kw_only=True):
    """What routing needs for a caller with no live session on a DID: the DID's pool settings and the
    caller's last binding there."""

    tenant_id: int
    pool: str
    fallback_connect_to: str | None
    fallback_flow: str | None
    cooloff_seconds: int | None
    caller_ended_at: datetime | None


async def select_fallback(conn: Conn, did: str, caller: str) -> FallbackRow | None:
    """The DID's pool fallback and when the caller's last session on it ended (three primary-key lookups)."""
    row = await conn.fetchrow(
        """
        SELECT d.tenant_id, d.pool, p.fallback_connect_to, p.fallback_flow, p.cooloff_seconds,
               (SELECT b.ends_at FROM bindings b WHERE b.number = $2 AND b.did = $1) AS caller_ended_at
        FROM dids d LEFT JOIN pool_settings p ON p.tenant_id = d.tenant_id AND p.pool = d.pool
        WHERE d.number = $1
        """,
        did,
        caller,
    )
    return None if row is None else msgspec.convert(row, FallbackRow)


async def count_pools_with(conn: Conn, tenant_id: int, pool: str) -> tuple[int, int]:
    """How many pools (with a DID or settings) the tenant holds now, and would hold with this one."""
    row = await conn.fetchrow(
        """
        WITH held AS (
            SELECT pool FROM dids WHERE tenant_id = $1 UNION SELECT pool FROM pool_settings WHERE tenant_id = $1)
        SELECT (SELECT count(*) FROM held)::int AS now,
               (SELECT count(*) FROM (SELECT pool FROM held UNION SELECT $2) x)::int AS would
        """,
        tenant_id,
        pool,
    )
    assert row is not None
    return row["now"], row["would"]


async def count_refusal(conn: Conn, tenant_id: int, pool: str, now: datetime) -> None:
    """Count one refused session in its pool's row for this minute."""
    await conn.execute(
        """
        INSERT INTO pool_refusals (tenant_id, pool, minute, refused)
        VALUES ($1, $2, date_trunc('minute', $3::timestamptz), 1)
        ON CONFLICT (tenant_id, pool, minute) DO UPDATE SET refused = pool_refusals.refused + 1
        """,
        tenant_id,
        pool,
        now,
    )


async def select_refusals(conn: Conn, tenant_id: int, since: datetime) -> dict[str, int]:
    """Sessions refused per pool since `since` (to the minute), pools with refusals only."""
    rows = await conn.fetch(
        """
        SELECT pool, sum(refused)::int AS refused FROM pool_refusals
        WHERE tenant_id = $1 AND minute >= date_trunc('minute', $2::timestamptz) GROUP BY pool ORDER BY pool
        """,
        tenant_id,
        since,
    )
    return {r["pool"]: r["refused"] for r in rows}
