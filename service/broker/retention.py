"""Retention: after MASKING_RETENTION_DAYS, ended sessions keep their counts but not their real numbers."""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from service import metrics
from service.db import Conn
from service.db.retention import redact_batch

log = structlog.get_logger("service.retention")


async def redact_old_sessions(conn: Conn, now: datetime, days: int, batch: int = 500) -> int:
    """Mask the numbers of sessions ended more than `days` ago, a batch per transaction."""
    cutoff = now - timedelta(days=days)
    total = 0
    while True:
        async with conn.transaction():
            done = await redact_batch(conn, cutoff, batch, now)
        total += done
        if done < batch:
            break
    if total:
        metrics.SWEPT.labels("sessions_redacted").inc(total)
        log.info("sessions_redacted", count=total)
    return total
