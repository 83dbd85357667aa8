"""SQL for job turns: a background job that should run once per period for the whole service takes its turn here."""

from __future__ import annotations

from datetime import datetime

from service.db import Conn


async def take_turn(conn: Conn, job: str, now: datetime, hold_until: datetime) -> bool:
    """Take the job's turn if it is due (or was never run): True for the one process that gets it, which holds
    it until hold_until (or until it sets the next due time)."""
    taken = await conn.fetchval(
        """
        INSERT INTO job_turns (job, due_at) VALUES ($1, $3)
        ON CONFLICT (job) DO UPDATE SET due_at = excluded.due_at WHERE job_turns.due_at <= $2
        RETURNING true
        """,
        job,
        now,
        hold_until,
    )
    return bool(taken)


async def set_due(conn: Conn, job: str, due_at: datetime) -> None:
    """When the job is next due, for every process."""
    await conn.execute("UPDATE job_turns SET due_at = $2 WHERE job = $1", job, due_at)
