"""SQL for the provider's reports: stored raw first, then settled as matched, duplicate, unmatched or unparseable."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from service.db import Conn

INSERT_REPORT = "INSERT INTO provider_reports (body, received_at) VALUES ($1, $2) RETURNING id"
LOCK_REPORT = "SELECT body FROM provider_reports WHERE id = $1 AND outcome = 'pending' FOR UPDATE SKIP LOCKED"
SETTLE_REPORT = """
UPDATE provider_reports SET outcome = $2, bridge = $3, call_id = $4,
    tenant_id = coalesce($5, (SELECT tenant_id FROM dids WHERE number = $3))
WHERE id = $1
"""


class StoredReport(msgspec.Struct, frozen=True):
    """A stored report as the operator and ops see it."""

    id: int
    received_at: datetime
    body: bytes
    bridge: str | None
    outcome: str
    call_id: UUID | None


async def insert_report(conn: Conn, body: bytes, received_at: datetime) -> int:
    """Store a report's raw body, durably, before anything else; return its id."""
    report_id: int = await conn.fetchval(INSERT_REPORT, body, received_at)
    return report_id


async def lock_report(conn: Conn, report_id: int) -> bytes | None:
    """A pending report's body, locked for matching (None if another process has it or it is done)."""
    body: bytes | None = await conn.fetchval(LOCK_REPORT, report_id)
    return body


async def settle_report(
    conn: Conn, report_id: int, outcome: str, bridge: str | None, call_id: UUID | None, tenant_id: int | None
) -> None:
    """Record what a report turned out to be."""
    await conn.execute(SETTLE_REPORT, report_id, outcome, bridge, call_id, tenant_id)


async def select_pending_reports(conn: Conn, older_than: datetime, limit: int) -> list[int]:
    """Reports stored but never matched (a process died in between)."""
    rows = await conn.fetch(
        "SELECT id FROM provider_reports WHERE outcome = 'pending' AND received_at <= $1 ORDER BY id LIMIT $2",
        older_than,
        limit,
    )
    return [r["id"] for r in rows]


async def select_reports(
    conn: Conn, tenant_id: int | None, outcomes: list[str], after_id: int | None, limit: int
) -> list[StoredReport]:
    """Reports with these outcomes: a tenant's (bridge on its DIDs), or with tenant_id None those on no DID."""
    rows = await conn.fetch(
        """
        SELECT id, received_at, body, bridge, outcome, call_id FROM provider_reports
        WHERE outcome = ANY($2::text[])
          AND (tenant_id = $1 OR ($1::bigint IS NULL AND tenant_id IS NULL))
          AND ($3::bigint IS NULL OR id < $3)
        ORDER BY id DESC LIMIT $4
        """,
        tenant_id,
        outcomes,
        after_id,
        limit,
    )
    return [msgspec.convert(r, StoredReport) for r in rows]
