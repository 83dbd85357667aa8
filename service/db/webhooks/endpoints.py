"""SQL for a tenant's webhook endpoints: create, read, change, soft-delete, rotate the secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from service.db import Conn

ENDPOINT = """id, url, events, description, status, created_at, updated_at, failing_since,
    (previous_until IS NOT NULL AND previous_until > now()) AS rotating"""


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook endpoint as stored (without its secrets)."""

    id: UUID
    url: str
    events: list[str]
    description: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None
    rotating: bool


def _endpoint(row: Any) -> Endpoint:
    return msgspec.convert(row, Endpoint)


async def insert_endpoint(
    conn: Conn,
    *,
    endpoint_id: UUID,
    tenant_id: int,
    url: str,
    events: list[str],
    description: str | None,
    secret: str,
    now: datetime,
    cap: int,
) -> Endpoint | None:
    """Register an endpoint (enabled) with its signing secret; None when the tenant already has `cap` of them."""
    async with conn.transaction():
        # One tenant's registrations take turns here, so that two at once cannot both pass the count.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('webhook_endpoints', $1))", tenant_id)
        row = await conn.fetchrow(
            f"""
            INSERT INTO webhook_endpoints (id, tenant_id, url, events, description, secret, created_at, updated_at)
            SELECT $1, $2, $3, $4, $5, $6, $7, $7
            WHERE (SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $2 AND status <> 'deleted') < $8
            RETURNING {ENDPOINT}
            """,
            endpoint_id,
            tenant_id,
            url,
            events,
            description,
            secret,
            now,
            cap,
        )
    return None if row is None else _endpoint(row)


async def select_endpoints(conn: Conn, tenant_id: int) -> list[Endpoint]:
    """The tenant's endpoints, oldest first."""
    rows = await conn.fetch(
        f"""SELECT {ENDPOINT} FROM webhook_endpoints WHERE tenant_id = $1 AND status <> 'deleted'
        ORDER BY created_at, id""",
        tenant_id,
    )
    return [_endpoint(r) for r in rows]


async def select_endpoint(conn: Conn, tenant_id: int, endpoint_id: UUID) -> Endpoint | None:
    """One of the tenant's endpoints."""
    row = await conn.fetchrow(
        f"SELECT {ENDPOINT} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 AND status <> 'deleted'",
        endpoint_id,
        tenant_id,
    )
    return None if row is None else _endpoint(row)


async def update_endpoint(
    conn: Conn,
    tenant_id: int,
    endpoint_id: UUID,
    now: datetime,
    *,
    url: str | None,
    events: list[str] | None,
    description: str | None,
    status: str | None,
) -> Endpoint | None:
    """Change what is given; enabling again forgets the failing streak."""
    row = await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints SET url = coalesce($3, url), events = coalesce($4, events),
            description = coalesce($5, description), status = coalesce($6, status), updated_at = $7,
            failing_since = CASE WHEN $6 = 'enabled' THEN NULL ELSE failing_since END
        WHERE id = $1 AND tenant_id = $2 AND status <> 'deleted' RETURNING {ENDPOINT}
        """,
        endpoint_id,
        tenant_id,
        url,
        events,
        description,
        status,
        now,
    )
    return None if row is None else _endpoint(row)


async def delete_endpoint(conn: Conn, tenant_id: int, endpoint_id: UUID, now: datetime) -> bool:
    """Mark an endpoint deleted and forget its secrets; nothing is sent to it again.

    The row stays: a transaction that is writing an event (and its delivery to this endpoint) at the same
    moment then finds its foreign key intact, where a DELETE made it fail or deadlock. The deliveries left
    pending are never claimed and go with their events at the retention purge.
    """
    status = await conn.execute(
        """
        UPDATE webhook_endpoints SET status = 'deleted', secret = '', previous_secret = NULL, previous_until = NULL,
            updated_at = $3
        WHERE id = $1 AND tenant_id = $2 AND status <> 'deleted'
        """,
        endpoint_id,
        tenant_id,
        now,
    )
    return status.endswith(" 1")


async def rotate_secret(
    conn: Conn, tenant_id: int, endpoint_id: UUID, secret: str, now: datetime, overlap_until: datetime
) -> Endpoint | None:
    """Sign with a new secret from now; the current one keeps signing too until overlap_until."""
    row = await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $5, secret = $3, updated_at = $4
        WHERE id = $1 AND tenant_id = $2 AND status <> 'deleted' RETURNING {ENDPOINT}
        """,
        endpoint_id,
        tenant_id,
        secret,
        now,
        overlap_until,
    )
    return None if row is None else _endpoint(row)
