"""SQL for recordings: the one read and the one destruction of a call's provider reference, and what retention ends.

The reference is the provider's URL of the recording (calls.recording_url). It is read only by
select_reference and destroyed only by clear_references; every other query sees only whether it exists.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.db import Conn, sealed

# The connection parameter the Call resource's recording URL is built from (db/calls.RECORDING_URL).
PUBLIC_URL_SETTING = "masking.public_url"


def server_settings(public_base: str) -> dict[str, str]:
    """The connection parameters a pool of the service sets: the public URL its Call resources name."""
    return {PUBLIC_URL_SETTING: public_base}


class Reference(msgspec.Struct, frozen=True, kw_only=True):
    """A call's recording as far as serving it goes: the provider's reference, or when it was destroyed."""

    call_id: UUID
    reference: str | None
    deleted_at: datetime | None


async def select_reference(conn: Conn, tenant_id: int, call_id: UUID) -> Reference | None:
    """The call's recording reference (None: no such call of the tenant)."""
    row = await conn.fetchrow(
        "SELECT id AS call_id, recording_url AS reference, recording_deleted_at AS deleted_at FROM calls "
        "WHERE id = $1 AND tenant_id = $2",
        call_id,
        tenant_id,
    )
    if row is None:
        return None
    # sealed for its tenant (ingest_report), or in clear when an older version stored it
    reference = sealed.opened(tenant_id, sealed.RECORDING, row["reference"])
    return Reference(call_id=row["call_id"], reference=reference, deleted_at=row["deleted_at"])


async def live_key_prefix(conn: Conn, tenant_id: int, key_id: int) -> str | None:
    """The shown prefix of the tenant's key if it is not revoked (a signed link lives only as long as its key)."""
    prefix: str | None = await conn.fetchval(
        "SELECT prefix FROM api_keys WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL", key_id, tenant_id
    )
    return prefix


async def clear_references(conn: Conn, call_ids: list[UUID], now: datetime) -> list[UUID]:
    """Destroy these calls' recording references at once; the calls that had one."""
    rows = await conn.fetch(
        """
        UPDATE calls SET recording_url = NULL, recording_deleted_at = $2
        WHERE id = ANY($1::uuid[]) AND recording_url IS NOT NULL RETURNING id
        """,
        call_ids,
        now,
    )
    return [r["id"] for r in rows]


class PastRetention(msgspec.Struct, frozen=True, kw_only=True):
    """A call whose recording its pool keeps no longer: the call, its tenant, the pool and how many days it keeps."""

    call_id: UUID
    tenant_id: int
    pool: str
    days: int


async def select_past_retention(conn: Conn, now: datetime, limit: int) -> list[PastRetention]:
    """One batch of calls whose recording is older than their session's pool keeps recordings, locked."""
    rows = await conn.fetch(
        """
        SELECT c.id AS call_id, c.tenant_id, s.pool, p.recording_retention_days AS days FROM calls c
        JOIN sessions s ON s.id = c.session_id
        JOIN pool_settings p ON p.tenant_id = s.tenant_id AND p.pool = s.pool
        WHERE c.recording_url IS NOT NULL AND p.recording_retention_days IS NOT NULL
          AND c.created_at < $1::timestamptz - make_interval(days => p.recording_retention_days)
        ORDER BY c.created_at LIMIT $2
        FOR UPDATE OF c SKIP LOCKED
        """,
        now,
        limit,
    )
    return [msgspec.convert(r, PastRetention) for r in rows]
