"""SQL for the event feed's horizon: the oldest transaction that may still commit an event, and how long it has held.

The feed (and the audit log) shows only rows of transactions below a horizon, so that a row committed late can
never appear behind a cursor already handed out. Only a transaction with a transaction id holds a horizon back:
a read-only one (a `backend_xmin` alone, as in a long report query) holds back vacuum, not the feed.

- CLUSTER_HORIZON, the guard the feed used before: the oldest transaction id running anywhere in the cluster, in
  every database (PostgreSQL's snapshot xmin is cluster-wide), so a transaction left open in another database
  stalls the feed for as long as it stays open.
- DATABASE_HORIZON, the guard the feed uses: the same, less the transactions seen to belong to another database.
  No event is skipped: an event's transaction id below it either was not running at the statement's snapshot
  (so it is visible if it committed, and will never commit later) or was running as a backend of another
  database, or as a transaction prepared in another database, and no transaction of another database can write
  this database's tables. A transaction id seen nowhere (it ended after the snapshot was taken) still holds, as
  do backends with no database: only a positive sighting of another database lets an id go. PostgreSQL shows
  every role `datname` and `backend_xid` of every backend (no pg_read_all_stats needed); a backend's database
  never changes, and it is entered in pg_stat_activity before it can take a transaction id.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.db import Conn

CLUSTER_HORIZON = "pg_snapshot_xmin(pg_current_snapshot())"

# The transaction ids running at the statement's snapshot that may write this database's tables.
_HOLDERS = """
SELECT x FROM pg_snapshot_xip(pg_current_snapshot()) AS x
WHERE NOT EXISTS (
    SELECT 1 FROM pg_stat_activity a
    WHERE a.backend_xid = xid(x) AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database()))
  AND NOT EXISTS (
    SELECT 1 FROM pg_prepared_xacts p WHERE p.transaction = xid(x) AND p.database <> current_database())
"""

DATABASE_HORIZON = f"(SELECT coalesce(min(h.x), pg_snapshot_xmax(pg_current_snapshot())) FROM ({_HOLDERS}) AS h)"

# The guard the feed uses (service/db/events.py SELECT_FEED): the gauge measures the lag of this one.
FEED_HORIZON = DATABASE_HORIZON

# The horizon, whether a running transaction holds it (else it is the snapshot's xmax: nothing holds the feed),
# and since when that transaction has run (its start, or when it was prepared; NULL when this role may not see a
# start: other roles' xact_start needs pg_read_all_stats). Seconds by the database's clock.
_LAG = """
WITH h AS (SELECT {horizon} AS x)
SELECT h.x::text AS horizon, h.x < pg_snapshot_xmax(pg_current_snapshot()) AS held,
       extract(epoch FROM clock_timestamp() - coalesce(
           (SELECT min(a.xact_start) FROM pg_stat_activity a WHERE a.backend_xid = xid(h.x)),
           (SELECT min(p.prepared) FROM pg_prepared_xacts p WHERE p.transaction = xid(h.x))))::float8 AS seconds
FROM h
"""


@dataclass(frozen=True)
class Horizon:
    """A horizon as read now: the transaction id, whether a running transaction holds it, and for how long."""

    xid: str
    held: bool
    seconds: float | None  # None: held, by a transaction whose start this role may not see


async def read_horizon(conn: Conn, horizon: str = FEED_HORIZON) -> Horizon:
    """The horizon (an SQL expression of xid8, by default the feed's) and the age of the transaction holding it."""
    row = await conn.fetchrow(_LAG.format(horizon=horizon))
    assert row is not None
    held = bool(row["held"])
    seconds = row["seconds"] if held else 0.0
    return Horizon(row["horizon"], held, None if seconds is None else max(0.0, float(seconds)))
