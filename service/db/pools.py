"""SQL for pools: their settings rows, their statistics (use and busiest parties), and the routing fallback."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from service.db import Conn, sealed
from service.db.dids import tenant_of_did


class PoolSettingsRow(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's settings row (nulls: the service-wide setting applies)."""

    pool: str
    fallback_connect_to: str | None = None
    fallback_flow: str | None = None
    cooloff_seconds: int | None = None
    default_ttl_seconds: int | None = None
    default_max_calls: int | None = None
    headroom_alert: int = 2
    recording_allowed: bool = True
    recording_retention_days: int | None = None


_COLUMNS = """pool, fallback_connect_to, fallback_flow, cooloff_seconds, default_ttl_seconds, default_max_calls,
    headroom_alert, recording_allowed, recording_retention_days"""


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
                                   default_ttl_seconds, default_max_calls, headroom_alert, updated_at,
                                   recording_allowed, recording_retention_days)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        ON CONFLICT (tenant_id, pool) DO UPDATE SET
            fallback_connect_to = excluded.fallback_connect_to, fallback_flow = excluded.fallback_flow,
            cooloff_seconds = excluded.cooloff_seconds, default_ttl_seconds = excluded.default_ttl_seconds,
            default_max_calls = excluded.default_max_calls, headroom_alert = excluded.headroom_alert,
            updated_at = excluded.updated_at, recording_allowed = excluded.recording_allowed,
            recording_retention_days = excluded.recording_retention_days
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
        s.recording_allowed,
        s.recording_retention_days,
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
               (SELECT b.ends_at FROM bindings b WHERE b.number_ix = $2 AND b.did = $1) AS caller_ended_at
        FROM dids d LEFT JOIN pool_settings p ON p.tenant_id = d.tenant_id AND p.pool = d.pool
        WHERE d.number = $1
        """,
        did,
        sealed.probe(await tenant_of_did(conn, did), caller),
    )
    return None if row is None else msgspec.convert(row, FallbackRow)


async def count_pools_with(conn: Conn, tenant_id: int, pools: list[str]) -> tuple[int, int]:
    """How many pools the tenant holds now (a pool exists once it has a DID or settings), and would with these.

    The one count MASKING_MAX_POOLS_PER_TENANT is checked against, by DID adds and moves and by pool PUTs.
    """
    row = await conn.fetchrow(
        """
        WITH held AS (
            SELECT pool FROM dids WHERE tenant_id = $1 UNION SELECT pool FROM pool_settings WHERE tenant_id = $1)
        SELECT (SELECT count(*) FROM held)::int AS now,
               (SELECT count(*) FROM (SELECT pool FROM held UNION SELECT unnest($2::text[])) x)::int AS would
        """,
        tenant_id,
        pools,
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


class PoolUse(msgspec.Struct, frozen=True, kw_only=True):
    """Per tenant and pool: DIDs by status, active sessions, and the two busiest parties' active sessions."""

    tenant_id: int
    tenant: str
    pool: str
    dids: int
    active_dids: int
    active_sessions: int
    busiest_party: int
    second_party: int


# A pool exists once it has a DID or a settings row. The parties' loads come from the pool's live bindings
# only, found per DID through bindings_load (did, ends_at): the cost is one index range per DID plus one
# row per live binding of the pool (about 2 x its live sessions), independent of the rest of the table.
POOL_STATS = """
WITH d AS (
    SELECT tenant_id, pool, count(*)::int AS dids, count(*) FILTER (WHERE status = 'active')::int AS active_dids
    FROM dids WHERE ($1::bigint IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR pool = $3)
    GROUP BY tenant_id, pool),
named AS (
    SELECT tenant_id, pool FROM d
    UNION
    SELECT tenant_id, pool FROM pool_settings
    WHERE ($1::bigint IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR pool = $3)),
s AS (
    SELECT tenant_id, pool, count(*)::int AS active_sessions FROM sessions
    WHERE ($1::bigint IS NULL OR tenant_id = $1) AND ($3::text IS NULL OR pool = $3)
      AND status = 'active' AND expires_at > $2
    GROUP BY tenant_id, pool),
p AS (
    -- Per pool, the live-session counts of its two busiest numbers: its DIDs (dids_list), each DID's live
    -- bindings (bindings_load range), counted per number, and a top-2 heap rather than a full sort.
    SELECT named.tenant_id, named.pool,
           (SELECT array_agg(n ORDER BY n DESC) FROM (
                SELECT count(*)::int AS n FROM dids dd JOIN bindings b ON b.did = dd.number AND b.ends_at > $2
                WHERE dd.tenant_id = named.tenant_id AND dd.pool = named.pool
                GROUP BY b.number_ix ORDER BY n DESC LIMIT 2) top) AS top
    FROM named)
SELECT named.tenant_id, t.name AS tenant, named.pool, coalesce(d.dids, 0) AS dids,
       coalesce(d.active_dids, 0) AS active_dids, coalesce(s.active_sessions, 0) AS active_sessions,
       coalesce(p.top[1], 0) AS busiest_party, coalesce(p.top[2], 0) AS second_party
FROM named JOIN tenants t ON t.id = named.tenant_id
LEFT JOIN d USING (tenant_id, pool) LEFT JOIN s USING (tenant_id, pool) LEFT JOIN p USING (tenant_id, pool)
ORDER BY t.name, named.pool
"""


async def pool_stats(conn: Conn, tenant_id: int | None, now: datetime, pool: str | None = None) -> list[PoolUse]:
    """Per tenant and pool (or one pool): DIDs by status, active sessions, the two busiest parties' sessions."""
    return [msgspec.convert(r, PoolUse) for r in await conn.fetch(POOL_STATS, tenant_id, now, pool)]
