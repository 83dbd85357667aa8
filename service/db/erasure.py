"""SQL for erasure: a number destroyed in a tenant's ended sessions, their calls, reports and events, batch by batch.

A session erased is redacted as retention would redact it (service/db/retention.py): both parties'
ciphertexts and blind indexes cleared, the masked forms kept, redacted_at set, its calls' numbers cleared and
its ended bindings (which hold the number's blind index) deleted. Its reports' bodies and its events keep
only masked numbers. Counts, durations and statuses stay (billing).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from service.db import Conn, sealed
from service.db.retention import mask_bodies
from service.logging import mask_number

ACTIVE = """
SELECT id FROM sessions WHERE tenant_id = $1 AND (customer_ix = $2 OR agent_ix = $2) AND status = 'active' ORDER BY id
"""

ERASE_SESSIONS = """
WITH due AS (
    SELECT id FROM sessions
    WHERE tenant_id = $1 AND (customer_ix = $2 OR agent_ix = $2) AND status <> 'active'
    ORDER BY id LIMIT $3 FOR UPDATE),
s AS (
    UPDATE sessions SET customer_ct = NULL, customer_ix = NULL, agent_ct = NULL, agent_ix = NULL,
        redacted_at = coalesce(redacted_at, $4)
    FROM due WHERE sessions.id = due.id RETURNING sessions.id),
c AS (
    UPDATE calls SET from_ct = NULL, from_ix = NULL, to_ct = NULL, to_ix = NULL
    FROM s WHERE calls.session_id = s.id AND (calls.from_ct IS NOT NULL OR calls.to_ct IS NOT NULL)
    RETURNING calls.id),
b AS (DELETE FROM bindings USING s WHERE bindings.session_id = s.id AND bindings.ends_at <= $4)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM s) AS sessions,
       (SELECT count(*)::int FROM c) AS calls,
       (SELECT coalesce(array_agg(r.id), '{}') FROM provider_reports r JOIN calls k ON r.call_id = k.id
        WHERE k.session_id IN (SELECT id FROM s)) AS reports
"""


class Batch(msgspec.Struct, frozen=True):
    """One batch erased: the sessions, how many calls, and the reports of their calls."""

    sessions: list[uuid.UUID]
    calls: int
    reports: list[int]


async def active_sessions(conn: Conn, tenant_id: int, index: bytes) -> list[uuid.UUID]:
    """The tenant's active sessions naming the number (left alone by an erasure)."""
    return [r["id"] for r in await conn.fetch(ACTIVE, tenant_id, index)]


async def erase_sessions(conn: Conn, tenant_id: int, index: bytes, batch: int, now: datetime) -> Batch:
    """Erase one batch of the tenant's ended sessions naming the number (by its blind index) and their calls."""
    row = await conn.fetchrow(ERASE_SESSIONS, tenant_id, index, batch, now)
    assert row is not None
    return Batch(list(row["sessions"]), row["calls"], list(row["reports"]))


async def mask_reports(conn: Conn, report_ids: list[int]) -> int:
    """Replace these reports' bodies by their masked form (sealed again); how many."""
    await mask_bodies(conn, report_ids)
    return len(report_ids)


UNMATCHED = """
SELECT id, body FROM provider_reports WHERE tenant_id = $1 AND outcome = 'unmatched' AND id > $2
ORDER BY id LIMIT $3 FOR UPDATE
"""


async def mask_unmatched(conn: Conn, tenant_id: int, number: str, after: int, batch: int) -> tuple[list[int], int]:
    """Mask one batch of the tenant's unmatched reports whose body names the number (opened to be searched).

    Returns the reports masked and the cursor (0 at the end).
    """
    rows = await conn.fetch(UNMATCHED, tenant_id, after, batch)
    digits = number.removeprefix("+")
    naming = [r["id"] for r in rows if digits in _body_text(r["body"])]
    await mask_bodies(conn, naming)
    return naming, (rows[-1]["id"] if len(rows) == batch else 0)


def _body_text(body: bytes) -> str:
    return sealed.open_bytes(None, sealed.REPORT_BODY, body).decode("utf-8", "replace")


SUBJECT_EVENTS = """
SELECT id, created_at, type, data::text AS data FROM events
WHERE tenant_id = $1 AND (type LIKE 'session.%' OR type LIKE 'call.%')
  AND coalesce(data->>'session_id', data->>'id') = ANY($2::text[])
FOR UPDATE
"""
REPORT_EVENTS = """
SELECT id, created_at, type, data::text AS data FROM events
WHERE tenant_id = $1 AND type = 'report.unmatched' AND data->>'id' = ANY($2::text[])
FOR UPDATE
"""
SET_EVENTS = """
UPDATE events e SET data = v.data::jsonb
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS v(id, created_at, data)
WHERE e.id = v.id AND e.created_at = v.created_at
"""


def masked_event(tenant_id: int, type_: str, data: Any) -> Any:
    """An event's data with each sealed field replaced by its masked form (None: nothing sealed in it)."""
    if not isinstance(data, dict):
        return None
    changed = dict(data)
    for field, column in sealed._event_fields(type_, data):
        value = data.get(field)
        if isinstance(value, str) and value.startswith("\\x"):
            changed[field] = mask_number(sealed.opened(tenant_id, column, value) or "")
    return changed if changed != data else None


async def mask_events(conn: Conn, tenant_id: int, sessions: list[uuid.UUID], reports: list[int]) -> int:
    """Mask the numbers in these sessions' events (session.*, call.*) and these reports' report.unmatched; how many."""
    rows = []
    if sessions:
        rows += await conn.fetch(SUBJECT_EVENTS, tenant_id, [str(s) for s in sessions])
    if reports:
        rows += await conn.fetch(REPORT_EVENTS, tenant_id, [str(r) for r in reports])
    changed = []
    for r in rows:
        masked = masked_event(tenant_id, r["type"], msgspec.json.decode(r["data"]))
        if masked is not None:
            changed.append((r["id"], r["created_at"], msgspec.json.encode(masked).decode()))
    if changed:
        await conn.execute(SET_EVENTS, *(list(c) for c in zip(*changed, strict=True)))
    return len(changed)
