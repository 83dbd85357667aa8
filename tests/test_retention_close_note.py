"""Retention clears the client's close note with the numbers: the free text may hold a number (DESIGN rule 11)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import httpx

from service.broker.sweeps import redact_old_sessions
from tests.factories import close_session, open_session
from tests.helpers import Keys


async def test_retention_clears_a_closed_sessions_note_that_may_hold_a_number(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """A session closed with a note holding a number keeps no note once retention masks its numbers."""
    session = await open_session(client, keys.a, dids=1)
    await close_session(client, keys.a, session, reason="customer asked to be called on +919812345678")
    assert await db.fetchval("SELECT close_note FROM sessions WHERE id = $1::uuid", session["id"]) is not None
    now = await db.fetchval("SELECT now()")
    await db.execute("UPDATE sessions SET closed_at = $2 WHERE id = $1::uuid", session["id"], now - timedelta(days=31))
    assert await redact_old_sessions(db, now, days=30) == 1
    row = await db.fetchrow("SELECT close_note, redacted_at FROM sessions WHERE id = $1::uuid", session["id"])
    assert row["redacted_at"] is not None and row["close_note"] is None
