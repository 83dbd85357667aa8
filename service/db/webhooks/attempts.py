"""SQL for an endpoint's attempts as the API lists them, newest first by keyset."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.db import Conn


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    """One logged attempt with its event's type."""

    id: int
    event_id: int
    type: str | None
    attempt: int
    status: str
    status_code: int | None
    error: str | None
    duration_ms: int
    at: datetime
    next_attempt_at: datetime | None


async def select_attempts(
    conn: Conn, endpoint_id: UUID, status: str | None, before_id: int | None, limit: int
) -> list[AttemptRow]:
    """An endpoint's attempts, newest first, before a keyset position."""
    rows = await conn.fetch(
        """
        SELECT a.id, a.event_id, e.type, a.attempt, a.status, a.status_code, a.error, a.duration_ms, a.at,
               a.next_attempt_at
        FROM webhook_attempts a LEFT JOIN events e ON e.id = a.event_id
        WHERE a.endpoint_id = $1 AND ($2::text IS NULL OR a.status = $2) AND ($3::bigint IS NULL OR a.id < $3)
        ORDER BY a.id DESC LIMIT $4
        """,
        endpoint_id,
        status,
        before_id,
        limit,
    )
    return [msgspec.convert(r, AttemptRow) for r in rows]
