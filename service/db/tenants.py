"""SQL for tenants, API keys and the service's own secrets."""

from __future__ import annotations

import asyncpg

from service.db import Conn


async def upsert_tenant(conn: Conn, name: str) -> int:
    """Create the tenant if needed and return its id."""
    tenant_id: int = await conn.fetchval(
        """
        WITH new AS (INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id)
        SELECT id FROM new UNION ALL SELECT id FROM tenants WHERE name = $1 LIMIT 1
        """,
        name,
    )
    return tenant_id


async def insert_api_key(conn: Conn, tenant_id: int, key_hash: bytes, prefix: str, scopes: list[str]) -> None:
    """Store a new key's hash."""
    await conn.execute(
        "INSERT INTO api_keys (tenant_id, key_hash, prefix, scopes) VALUES ($1, $2, $3, $4)",
        tenant_id,
        key_hash,
        prefix,
        scopes,
    )


async def select_keys_by_prefix(conn: Conn | asyncpg.Pool, prefix: str) -> list[asyncpg.Record]:
    """The live keys whose shown prefix is this one, with their hash, tenant and scopes."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT k.key_hash, k.tenant_id, t.name AS tenant, k.scopes, k.id AS key_id, k.prefix
        FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        WHERE k.prefix = $1 AND k.revoked_at IS NULL
        """,
        prefix,
    )
    return rows


async def select_key_by_hash(conn: Conn, key_hash: bytes) -> asyncpg.Record | None:
    """A live key by its hash: its id, prefix, tenant (id and name) and scopes."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        SELECT k.id AS key_id, k.prefix, k.tenant_id, t.name AS tenant, k.scopes
        FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        WHERE k.key_hash = $1 AND k.revoked_at IS NULL
        """,
        key_hash,
    )
    return row


async def select_tenant_id(conn: Conn, name: str) -> int | None:
    """A tenant's id by name."""
    tenant_id: int | None = await conn.fetchval("SELECT id FROM tenants WHERE name = $1", name)
    return tenant_id


async def select_tenant_names(conn: Conn) -> list[str]:
    """Every tenant's name."""
    return [r["name"] for r in await conn.fetch("SELECT name FROM tenants ORDER BY name")]


async def select_tenants_with_keys(conn: Conn) -> list[asyncpg.Record]:
    """Every tenant by name, with its keys (id, prefix, scopes, created_at, revoked_at; never a hash) oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT t.name AS tenant, t.created_at,
               coalesce(jsonb_agg(jsonb_build_object(
                   'id', k.id, 'prefix', k.prefix, 'scopes', k.scopes,
                   'created_at', k.created_at, 'revoked_at', k.revoked_at) ORDER BY k.id)
                   FILTER (WHERE k.id IS NOT NULL), '[]') AS keys
        FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
        GROUP BY t.id
        ORDER BY t.name
        """
    )
    return rows


async def lock_api_key(conn: Conn, key_id: int) -> asyncpg.Record | None:
    """Lock a key's row for a change in the caller's transaction; its tenant_id and revoked_at (None: no such key)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT tenant_id, revoked_at FROM api_keys WHERE id = $1 FOR UPDATE", key_id
    )
    return row


async def revoke_api_key(conn: Conn, key_id: int) -> asyncpg.Record | None:
    """Mark a key revoked (once: a revoked key keeps its first revocation time); its id, tenant and revoked_at."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        WITH done AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
                      RETURNING id, tenant_id, revoked_at)
        SELECT done.id AS key_id, t.name AS tenant, done.revoked_at FROM done JOIN tenants t ON t.id = done.tenant_id
        """,
        key_id,
    )
    return row


async def get_or_create_secret(conn: Conn | asyncpg.Pool, name: str, candidate: str) -> str:
    """The stored secret of that name, storing candidate first if there is none yet."""
    value: str = await conn.fetchval(
        """
        WITH new AS (INSERT INTO service_secrets (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING RETURNING value)
        SELECT value FROM new UNION ALL SELECT value FROM service_secrets WHERE name = $1 LIMIT 1
        """,
        name,
        candidate,
    )
    return value
