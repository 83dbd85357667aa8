"""SQL for retention: masking the numbers of long-ended sessions, their calls and reports."""

from __future__ import annotations

from datetime import datetime

from service.db import Conn

# One batch: sessions ended before the cut-off lose their real numbers (masked by mask_number() of
# schema.sql), their calls lose numbers and recording URLs, their reports' bodies are masked, and
# their ended bindings go. Counts, durations and statuses stay.
REDACT = """
WITH due AS (
    SELECT id FROM sessions
    WHERE status <> 'active' AND redacted_at IS NULL AND closed_at < $1
    ORDER BY closed_at LIMIT $2 FOR UPDATE SKIP LOCKED),
s AS (
    UPDATE sessions SET customer = mask_number(customer), agent = mask_number(agent), redacted_at = $3
    FROM due WHERE sessions.id = due.id RETURNING sessions.id),
c AS (
    UPDATE calls SET from_number = mask_number(from_number),
        to_number = CASE WHEN to_number LIKE 'flow:%' THEN to_number ELSE mask_number(to_number) END,
        recording_url = NULL
    FROM s WHERE calls.session_id = s.id RETURNING calls.id),
r AS (
    UPDATE provider_reports SET body = convert_to(
        regexp_replace(convert_from(body, 'UTF8'), '([0-9]{2})[0-9]{4,9}([0-9]{4})', '\\1******\\2', 'g'), 'UTF8')
    FROM c WHERE provider_reports.call_id = c.id),
b AS (DELETE FROM bindings USING s WHERE bindings.session_id = s.id AND bindings.ends_at < $1)
SELECT count(*)::int FROM s
"""


async def redact_batch(conn: Conn, cutoff: datetime, batch: int, now: datetime) -> int:
    """Mask one batch of sessions that ended before cutoff; return how many."""
    count: int = await conn.fetchval(REDACT, cutoff, batch, now)
    return count
