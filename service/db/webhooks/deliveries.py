"""SQL for deliveries: claiming due ones (SKIP LOCKED, fair across tenants), recording attempts, redelivery."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from service.db import Conn, Query, sealed


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery claimed for one attempt: the event, the endpoint's URL and secrets, the attempt number."""

    event_id: int
    endpoint_id: UUID
    tenant_id: int
    attempt: int
    type: str
    created_at: datetime
    data: Any
    url: str
    secret: str
    previous_secret: str | None
    previous_until: datetime | None


# One statement (one round trip, its row locks held only while it runs), fair across tenants and endpoints:
# each enabled endpoint this process has room for offers its oldest due deliveries up to its free share
# (locked, skipping rows another process holds); a tenant keeps at most its free share of those, taking its
# endpoints in turn; and the batch takes tenants in turn (every tenant's first before anyone's second). Each
# chosen delivery counts its attempt and gets a lease (next_attempt_at pushed past the request's timeout),
# so no other process makes the same attempt. A process that dies mid-request leaves its leases to run
# out and the attempt is made again (at least once).
CLAIM = Query("""
WITH room AS (
    SELECT w.id, w.tenant_id, coalesce(p.free, :cap) AS free FROM webhook_endpoints w
    LEFT JOIN unnest(:partly::uuid[], :left::int[]) AS p(endpoint_id, free) ON p.endpoint_id = w.id
    WHERE w.status = 'enabled' AND NOT (w.id = ANY(:busy::uuid[]))
      AND NOT (w.tenant_id = ANY(:busy_tenants::bigint[]))),
due AS (
    SELECT d.event_id, d.endpoint_id, d.event_created_at, d.next_attempt_at, o.tenant_id,
           row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at) AS endpoint_turn
    FROM room o CROSS JOIN LATERAL (
        SELECT d.event_id, d.endpoint_id, d.event_created_at, d.next_attempt_at FROM webhook_deliveries d
        WHERE d.endpoint_id = o.id AND d.status = 'pending' AND d.next_attempt_at <= :now
        ORDER BY d.next_attempt_at LIMIT o.free
        FOR UPDATE SKIP LOCKED) d),
ranked AS (
    SELECT due.*, row_number() OVER (PARTITION BY due.tenant_id ORDER BY due.endpoint_turn, due.next_attempt_at)
        AS tenant_turn FROM due),
chosen AS (
    SELECT r.event_id, r.endpoint_id, r.event_created_at FROM ranked r
    LEFT JOIN unnest(:tenants_partly::bigint[], :tenants_left::int[]) AS t(tenant_id, free)
        ON t.tenant_id = r.tenant_id
    WHERE r.tenant_turn <= coalesce(t.free, :tenant_cap)
    ORDER BY r.tenant_turn, r.next_attempt_at LIMIT :take),
c AS (
    UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = :lease_until
    FROM chosen k WHERE d.event_id = k.event_id AND d.endpoint_id = k.endpoint_id
        AND d.event_created_at = k.event_created_at
    RETURNING d.event_id, d.endpoint_id, d.event_created_at, d.attempts)
SELECT c.event_id, c.endpoint_id, w.tenant_id, c.attempts AS attempt, e.type, e.created_at, e.data,
       w.url, w.secret, w.previous_secret, w.previous_until
FROM c JOIN events e ON e.id = c.event_id AND e.created_at = c.event_created_at
JOIN webhook_endpoints w ON w.id = c.endpoint_id
""")


async def claim(
    conn: Conn,
    now: datetime,
    in_flight: dict[UUID, int],
    cap: int,
    tenants_in_flight: dict[int, int],
    tenant_cap: int,
    take: int,
    lease_until: datetime,
) -> list[Claimed]:
    """Claim up to `take` due deliveries, at most `cap` in flight per endpoint and `tenant_cap` per tenant."""
    partly = [e for e, n in in_flight.items() if n < cap]
    tenants_partly = [t for t, n in tenants_in_flight.items() if n < tenant_cap]
    values = {
        "now": now,
        "busy": [e for e, n in in_flight.items() if n >= cap],
        "partly": partly,
        "left": [cap - in_flight[e] for e in partly],
        "cap": cap,
        "busy_tenants": [t for t, n in tenants_in_flight.items() if n >= tenant_cap],
        "tenants_partly": tenants_partly,
        "tenants_left": [tenant_cap - tenants_in_flight[t] for t in tenants_partly],
        "tenant_cap": tenant_cap,
        "take": take,
        "lease_until": lease_until,
    }
    rows = await conn.fetch(CLAIM.sql, *CLAIM.args(values))
    return [_claimed(r) for r in rows]


def _claimed(row: Any) -> Claimed:
    """A claimed delivery, its event's data opened (service/db/sealed.py)."""
    values = dict(row)
    values["data"] = sealed.open_event(values["tenant_id"], values["type"], values["data"])
    return msgspec.convert(values, Claimed)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one attempt went and what follows it."""

    event_id: int
    # the event's created_at: with event_id and endpoint_id, the delivery's key (the day partition it is in)
    event_created_at: datetime
    endpoint_id: UUID
    attempt: int
    status: str  # delivered, retrying, failed
    status_code: int | None
    error: str | None
    duration_ms: int
    at: datetime
    next_attempt_at: datetime | None


# Record a batch of attempts: the attempt log, each delivery's new state (only if the attempt is still
# the current one: a lease that ran out and was re-claimed belongs to the newer attempt), and each
# endpoint's failing streak, which turns into disabled_failing once it is older than :disable_after.
RECORD = Query("""
WITH o AS (
    SELECT * FROM unnest(:event_ids::bigint[], :event_times::timestamptz[], :endpoint_ids::uuid[], :attempts::int[],
                         :statuses::text[], :codes::int[], :errors::text[], :durations::int[], :ats::timestamptz[],
                         :nexts::timestamptz[])
        AS o(event_id, event_created_at, endpoint_id, attempt, status, status_code, error, duration_ms, at,
             next_attempt_at)),
logged AS (
    INSERT INTO webhook_attempts (endpoint_id, event_id, attempt, status, status_code, error, duration_ms, at,
                                  next_attempt_at)
    SELECT o.endpoint_id, o.event_id, o.attempt, o.status, o.status_code, o.error, o.duration_ms, o.at,
           o.next_attempt_at
    FROM o WHERE EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = o.endpoint_id)),
moved AS (
    UPDATE webhook_deliveries d
    SET status = CASE o.status WHEN 'retrying' THEN 'pending' ELSE o.status END,
        next_attempt_at = coalesce(o.next_attempt_at, d.next_attempt_at)
    FROM o WHERE d.event_id = o.event_id AND d.endpoint_id = o.endpoint_id
      AND d.event_created_at = o.event_created_at AND d.status = 'pending'
      -- a success counts whichever attempt it was (a later one then finds nothing to do), unless a
      -- redelivery has since started the count again; a failure only moves the delivery if no newer
      -- attempt has claimed it since
      AND (d.attempts = o.attempt OR (o.status = 'delivered' AND d.attempts > o.attempt))),
per_endpoint AS (
    SELECT endpoint_id, bool_or(status = 'delivered') AS ok, min(at) AS first_at, max(at) AS last_at
    FROM o GROUP BY endpoint_id)
UPDATE webhook_endpoints w
SET failing_since = CASE WHEN p.ok THEN NULL ELSE coalesce(w.failing_since, p.first_at) END,
    status = CASE WHEN NOT p.ok AND w.status = 'enabled'
                   AND coalesce(w.failing_since, p.first_at) <= p.last_at - :disable_after::interval
                  THEN 'disabled_failing' ELSE w.status END,
    updated_at = CASE WHEN NOT p.ok AND w.status = 'enabled'
                       AND coalesce(w.failing_since, p.first_at) <= p.last_at - :disable_after::interval
                      THEN p.last_at ELSE w.updated_at END
FROM per_endpoint p
WHERE w.id = p.endpoint_id
  -- write the endpoint row only when something changes: it is not a counter every delivery updates
  AND ((p.ok AND w.failing_since IS NOT NULL)
       OR (NOT p.ok AND w.status = 'enabled'
           AND (w.failing_since IS NULL OR w.failing_since <= p.last_at - :disable_after::interval)))
RETURNING w.id, w.status
""")


async def record(conn: Conn, outcomes: list[Outcome], disable_after: Any) -> list[UUID]:
    """Record attempts; return the endpoints that this batch turned disabled_failing."""
    if not outcomes:
        return []
    values = {
        "event_ids": [o.event_id for o in outcomes],
        "event_times": [o.event_created_at for o in outcomes],
        "endpoint_ids": [o.endpoint_id for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "statuses": [o.status for o in outcomes],
        "codes": [o.status_code for o in outcomes],
        "errors": [o.error for o in outcomes],
        "durations": [o.duration_ms for o in outcomes],
        "ats": [o.at for o in outcomes],
        "nexts": [o.next_attempt_at for o in outcomes],
        "disable_after": disable_after,
    }
    rows = await conn.fetch(RECORD.sql, *RECORD.args(values))
    return [r["id"] for r in rows if r["status"] == "disabled_failing"]


async def redeliver(conn: Conn, tenant_id: int, event_id: int, now: datetime) -> int:
    """Queue an event again (from its first attempt) for every enabled endpoint of the tenant that wants it."""
    status = await conn.execute(
        """
        INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at, event_created_at)
        SELECT e.id, w.id, $3, $3, e.created_at FROM events e
        JOIN webhook_endpoints w ON w.tenant_id = e.tenant_id AND w.status = 'enabled'
        AND w.events && ARRAY[e.type, '*']
        WHERE e.id = $1 AND e.tenant_id = $2
        ON CONFLICT (event_id, endpoint_id, event_created_at) DO UPDATE
            SET status = 'pending', attempts = 0, next_attempt_at = $3, created_at = $3
        """,
        event_id,
        tenant_id,
        now,
    )
    return int(status.rsplit(" ", 1)[-1])


async def insert_test_delivery(
    conn: Conn, tenant_id: int, endpoint_id: UUID, data: bytes, now: datetime, lease_until: datetime
) -> Claimed | None:
    """Write a webhook.test event with one delivery to this endpoint, already claimed for its first attempt."""
    row = await conn.fetchrow(
        """
        WITH w AS (SELECT * FROM webhook_endpoints WHERE id = $2 AND tenant_id = $1 AND status <> 'deleted'),
        e AS (INSERT INTO events (tenant_id, type, created_at, data)
              SELECT $1, 'webhook.test', $4, $3::text::jsonb FROM w RETURNING id, type, created_at, data),
        d AS (INSERT INTO webhook_deliveries (event_id, endpoint_id, attempts, next_attempt_at, created_at,
                                              event_created_at)
              SELECT e.id, w.id, 1, $5, $4, $4 FROM e, w)
        SELECT e.id AS event_id, w.id AS endpoint_id, w.tenant_id, 1 AS attempt, e.type, e.created_at, e.data,
               w.url, w.secret, w.previous_secret, w.previous_until
        FROM e, w
        """,
        tenant_id,
        endpoint_id,
        data.decode(),
        now,
        lease_until,
    )
    return None if row is None else _claimed(row)


class Backlog(msgspec.Struct, frozen=True):
    """An endpoint's oldest undelivered event."""

    endpoint_id: UUID
    oldest: datetime


async def backlog(conn: Conn, limit: int) -> tuple[list[Backlog], int]:
    """The endpoints with the oldest undelivered events (at most limit), and how many are disabled_failing."""
    rows = await conn.fetch(
        """
        SELECT d.endpoint_id, min(d.created_at) AS oldest FROM webhook_deliveries d
        JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.status = 'enabled'
        WHERE d.status = 'pending' GROUP BY d.endpoint_id ORDER BY 2 LIMIT $1
        """,
        limit,
    )
    disabled = await conn.fetchval("SELECT count(*) FROM webhook_endpoints WHERE status = 'disabled_failing'")
    return [msgspec.convert(r, Backlog) for r in rows], int(disabled)
