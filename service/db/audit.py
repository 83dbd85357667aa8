"""SQL for the audit log: rows inserted in the caller's transaction, keyset pages of a tenant's, the retention purge."""

from __future__ import annotations

from datetime import datetime

import msgspec

from service.db import Conn, Query
from service.db.horizon import FEED_HORIZON


class NewAuditRow(msgspec.Struct, frozen=True, kw_only=True):
    """What an ops action writes to the audit log."""

    at: datetime
    tenant_id: int | None
    actor_kind: str
    actor_id: str
    actor_name: str | None
    action: str
    target_type: str | None
    target_id: str | None
    reason: str | None
    client_address: str | None
    request_id: str | None


class AuditRow(NewAuditRow, frozen=True, kw_only=True):
    """One audit row as stored: what was written, with its id and its feed position (txid, id)."""

    id: int
    txid: str


INSERT = Query("""
INSERT INTO audit_log (at, tenant_id, actor_kind, actor_id, actor_name, action, target_type, target_id, reason,
                       client_address, request_id)
VALUES (:at, :tenant_id, :actor_kind, :actor_id, :actor_name, :action, :target_type, :target_id, :reason,
        :client_address, :request_id)
RETURNING id
""")


async def insert(conn: Conn, row: NewAuditRow) -> int:
    """Append one row (in the caller's transaction, so it commits or rolls back with the action); its id."""
    new_id: int = await conn.fetchval(INSERT.sql, *INSERT.args(msgspec.structs.asdict(row)))
    return new_id


# The head of every page query below: an AuditRow's columns, the tenant's rows, optionally of one action.
_COLUMNS = """SELECT id, at, tenant_id, actor_kind, actor_id, actor_name, action, target_type, target_id, reason,
       client_address, request_id, txid::text AS txid
FROM audit_log"""
_OF_ACTION = "(:action::text IS NULL OR action = :action)"
_SELECT = f"""{_COLUMNS}
WHERE tenant_id = :tenant_id
  AND {_OF_ACTION}"""


async def _rows(
    conn: Conn,
    query: Query,
    tenant_id: int | None,
    action: str | None,
    start: tuple[str, int] | tuple[datetime, int] | None,
    limit: int,
    **more: str | None,
) -> list[AuditRow]:
    """The tenant's audit rows by one of the queries below, from a position (its `from_key`, `from_id`) or the start."""
    from_key, from_id = start or (None, None)
    values = {"tenant_id": tenant_id, "action": action, "from_key": from_key, "from_id": from_id, "limit": limit}
    rows = await conn.fetch(query.sql, *query.args(values | more))
    return [msgspec.convert(r, AuditRow) for r in rows]


# Oldest first after a feed position, as the events feed pages (the same horizon, and the order of the xid8
# column, not of its text): a row whose transaction commits after a younger one's never lands behind a cursor.
SELECT_PAGE = Query(f"""
{_SELECT}
  AND (:actor::text IS NULL OR actor_id = :actor)
  AND (:from_key::text IS NULL OR (txid, id) > (:from_key::text::xid8, :from_id::bigint))
  AND txid < {FEED_HORIZON}
ORDER BY audit_log.txid, audit_log.id
LIMIT :limit
""")


async def select_page(
    conn: Conn, tenant_id: int, action: str | None, actor: str | None, after: tuple[str, int] | None, limit: int
) -> list[AuditRow]:
    """A page of the tenant's audit rows, oldest first, after a feed position, optionally of one action or actor."""
    return await _rows(conn, SELECT_PAGE, tenant_id, action, after, limit, actor=actor)


# Newest first before a position, for people reading (the console): the same (txid, id) order walked back, by
# the xid8 column (the select list makes txid text, and as text 999 sorts after 1000).
SELECT_NEWEST = Query(f"""
{_SELECT}
  AND (:from_key::text IS NULL OR (txid, id) < (:from_key::text::xid8, :from_id::bigint))
ORDER BY audit_log.txid DESC, audit_log.id DESC
LIMIT :limit
""")


async def select_newest(
    conn: Conn, tenant_id: int, action: str | None, before: tuple[str, int] | None, limit: int
) -> list[AuditRow]:
    """A page of the tenant's audit rows, newest first, before a feed position, optionally of one action."""
    return await _rows(conn, SELECT_NEWEST, tenant_id, action, before, limit)


# Oldest first since a time (the command line's `masking audit --since`), a batch at a time after (at, id).
_SINCE = """
  AND (at, id) > (:from_key, :from_id::bigint)
ORDER BY at, id
LIMIT :limit
"""
SELECT_SINCE = Query(_SELECT + _SINCE)
# The same of the rows of no tenant (`masking audit --service-wide`): service-wide actions (keys.rotate,
# keys.reindex) and failed console sign-ins, where no tenant is known. No API or page shows them: both are a
# tenant's.
SELECT_SINCE_NO_TENANT = Query(f"{_COLUMNS}\nWHERE tenant_id IS NULL\n  AND {_OF_ACTION}" + _SINCE)


async def select_since(
    conn: Conn, tenant_id: int | None, action: str | None, after: tuple[datetime, int], limit: int
) -> list[AuditRow]:
    """A batch of the tenant's audit rows (no tenant: the service-wide ones) oldest first after (at, id),
    optionally of one action."""
    query = SELECT_SINCE if tenant_id is not None else SELECT_SINCE_NO_TENANT
    return await _rows(conn, query, tenant_id, action, after, limit)


# The trigger on audit_log lets a DELETE through only for rows older than the transaction's setting
# masking.audit_purge_before: set here (transaction-local) for this batch and cleared right after it, so
# that even inside a caller's transaction nothing else may delete audit rows.
_ALLOW = "SELECT set_config('masking.audit_purge_before', $1, true)"
# Whole days past the retention go by dropping their partitions (service/db/partitions.py); this deletes the
# rest: rows of the default partition and of the day the cut-off falls in.
_PURGE = """
DELETE FROM audit_log a USING (
    SELECT id, at FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE a.id = due.id AND a.at = due.at
"""


async def purge_batch(conn: Conn, before: datetime, batch: int) -> int:
    """Delete one batch of rows older than `before` (its own transaction, or a savepoint); how many went."""
    async with conn.transaction():
        await conn.execute(_ALLOW, before.isoformat())
        status = await conn.execute(_PURGE, before, batch)
        await conn.execute(_ALLOW, "")
    return int(status.rsplit(" ", 1)[-1])
