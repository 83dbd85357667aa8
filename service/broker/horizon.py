"""The event feed's horizon lag as a gauge: how long the transaction holding the feed back has been open."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service import metrics
from service.db import Conn
from service.db.horizon import read_horizon


@dataclass
class HorizonWatch:
    """Sets masking_event_feed_horizon_lag_seconds from each reading of the feed's horizon.

    When the holder's start is hidden from the service's role (another role's transaction, without
    pg_read_all_stats), the lag counts from when this watch first saw that transaction hold the horizon.
    """

    first_seen: tuple[str, datetime] | None = None

    async def observe(self, conn: Conn, now: datetime) -> float:
        """Read the horizon, set the gauge, and return the lag in seconds."""
        horizon = await read_horizon(conn)
        if self.first_seen is None or self.first_seen[0] != horizon.xid:
            self.first_seen = (horizon.xid, now)
        lag = horizon.seconds
        if lag is None:
            lag = max(0.0, (now - self.first_seen[1]).total_seconds())
        metrics.EVENT_FEED_HORIZON_LAG.set(lag)
        return lag
