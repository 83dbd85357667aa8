"""SQL for retention: masking the numbers of long-ended sessions, and deleting rows no rule needs any more."""

from __future__ import annotations

from datetime import datetime

from service.db import Conn

# One batch: sessions ended before the cut-off lose their real numbers (masked by mask_number() of
# schema.sql) and the client's close note (free text that may hold a number), their calls lose numbers and
# recording URLs, their reports' bodies are masked, and their ended bindings go. Counts, durations and
# statuses stay.
REDACT = """
WITH due AS (
    SELECT id FROM sessions
    WHERE status <> 'active' AND redacted_at IS NULL AND closed_at < $1
    ORDER BY closed_at LIMIT $2 FOR UPDATE SKIP LOCKED),
s AS (
    UPDATE sessions SET customer = mask_number(customer), agent = mask_number(agent), close_note = NULL,
        redacted_at = $3
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


# Each deletion takes one batch of rows with SKIP LOCKED (rows another transaction holds are left for
# the next pass) and deletes them in the same short transaction.
DELETE_IDEMPOTENCY_KEYS = """
DELETE FROM idempotency_keys k USING (
    SELECT tenant_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE k.tenant_id = due.tenant_id AND k.key = due.key
"""

DELETE_BINDINGS = """
DELETE FROM bindings b USING (
    SELECT number, did FROM bindings WHERE ends_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE b.number = due.number AND b.did = due.did
"""

# Whole days of reports past the retention go by dropping their partitions (service/db/partitions.py); this
# deletes the rest (the default partition's rows, and the day the cut-off falls in), reading only partitions
# older than the cut-off.
DELETE_REPORTS = """
DELETE FROM provider_reports r USING (
    SELECT id, received_at FROM provider_reports WHERE outcome <> 'pending' AND received_at < $1
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE r.id = due.id AND r.received_at = due.received_at
"""

# A report's identity is remembered as long as the report itself: a re-send after that is long past
# any provider retry. The table has no index on received_at; it is bounded by this very deletion.
DELETE_REPORT_KEYS = """
DELETE FROM report_keys k USING (
    SELECT key FROM report_keys WHERE received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE k.key = due.key
"""


# Refusal counts are read for the last hour only; a day of them is kept.
DELETE_REFUSALS = """
DELETE FROM pool_refusals r USING (
    SELECT tenant_id, pool, minute FROM pool_refusals WHERE minute < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE r.tenant_id = due.tenant_id AND r.pool = due.pool AND r.minute = due.minute
"""


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def delete_idempotency_keys(conn: Conn, before: datetime, batch: int) -> int:
    """Delete one batch of Idempotency-Key records created before `before` (past their replay window)."""
    return _count(await conn.execute(DELETE_IDEMPOTENCY_KEYS, before, batch))


async def delete_ended_bindings(conn: Conn, before: datetime, batch: int) -> int:
    """Delete one batch of bindings that ended before `before` (past cool-off and sticky memory)."""
    return _count(await conn.execute(DELETE_BINDINGS, before, batch))


async def delete_settled_reports(conn: Conn, before: datetime, batch: int) -> int:
    """Delete one batch of provider reports with a final outcome, received before `before`."""
    return _count(await conn.execute(DELETE_REPORTS, before, batch))


async def delete_report_keys(conn: Conn, before: datetime, batch: int) -> int:
    """Delete one batch of report identities received before `before` (the report retention)."""
    return _count(await conn.execute(DELETE_REPORT_KEYS, before, batch))


async def delete_old_refusals(conn: Conn, before: datetime, batch: int) -> int:
    """Delete one batch of per-minute refusal counts older than `before`."""
    return _count(await conn.execute(DELETE_REFUSALS, before, batch))
