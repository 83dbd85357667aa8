"""SQL for retention: masking the numbers of long-ended sessions, and deleting rows no rule needs any more."""

from __future__ import annotations

from datetime import datetime

from service.db import Conn, sealed
from service.logging import mask_number

# One batch: sessions ended before the cut-off lose their real numbers (ciphertexts and blind indexes
# cleared; the masked forms stay) and the client's close note (free text that may hold a number), their
# calls lose numbers and recording URLs, and their ended bindings go; their reports' bodies are masked next
# (mask_bodies: a sealed body is opened in Python). Counts, durations and statuses stay.
REDACT = """
WITH due AS (
    SELECT id FROM sessions
    WHERE status <> 'active' AND redacted_at IS NULL AND closed_at < $1
    ORDER BY closed_at LIMIT $2 FOR UPDATE SKIP LOCKED),
s AS (
    UPDATE sessions SET customer_ct = NULL, customer_ix = NULL, agent_ct = NULL, agent_ix = NULL, close_note = NULL,
        redacted_at = $3
    FROM due WHERE sessions.id = due.id RETURNING sessions.id),
c AS (
    UPDATE calls SET from_ct = NULL, from_ix = NULL, to_ct = NULL, to_ix = NULL, recording_url = NULL,
        recording_deleted_at = CASE WHEN recording_url IS NOT NULL THEN $3 ELSE recording_deleted_at END
    FROM s WHERE calls.session_id = s.id RETURNING calls.id),
b AS (DELETE FROM bindings USING s WHERE bindings.session_id = s.id AND bindings.ends_at < $1)
SELECT (SELECT count(*)::int FROM s) AS sessions,
       (SELECT array_agg(r.id) FROM provider_reports r JOIN c ON r.call_id = c.id) AS reports
"""


async def redact_batch(conn: Conn, cutoff: datetime, batch: int, now: datetime) -> int:
    """Mask one batch of sessions that ended before cutoff (and their reports' bodies); return how many."""
    async with conn.transaction():
        row = await conn.fetchrow(REDACT, cutoff, batch, now)
        assert row is not None
        await mask_bodies(conn, row["reports"] or [])
    count: int = row["sessions"]
    return count


async def mask_bodies(conn: Conn, report_ids: list[int]) -> None:
    """Replace these reports' sealed bodies by the sealed text of the body with every number masked."""
    rows = await conn.fetch("SELECT id, body FROM provider_reports WHERE id = ANY($1::bigint[])", report_ids)
    masked = [
        sealed.seal(
            None,
            sealed.REPORT_BODY,
            mask_number(sealed.open_bytes(None, sealed.REPORT_BODY, r["body"]).decode("utf-8", "replace")),
        )
        for r in rows
    ]
    await conn.execute(
        "UPDATE provider_reports r SET body = m.body FROM unnest($1::bigint[], $2::bytea[]) AS m(id, body)"
        " WHERE r.id = m.id",
        [r["id"] for r in rows],
        masked,
    )


# Each deletion takes one batch of rows with SKIP LOCKED (rows another transaction holds are left for
# the next pass) and deletes them in the same short transaction.
DELETE_IDEMPOTENCY_KEYS = """
DELETE FROM idempotency_keys k USING (
    SELECT tenant_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE k.tenant_id = due.tenant_id AND k.key = due.key
"""

DELETE_BINDINGS = """
DELETE FROM bindings b USING (
    SELECT number_ix, did FROM bindings WHERE ends_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE b.number_ix = due.number_ix AND b.did = due.did
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
