"""SQL for calls: recorded before dialling, answered by the provider, finished by a report or a timeout."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec

from service.db import Conn, sealed
from service.models import Call

# The service's own URL of a call's recording (the stored recording_url is the provider's reference, never
# shown): its base is the connection's masking.public_url (db/recordings.server_settings), set by the app.
RECORDING_URL = """CASE WHEN recording_url IS NOT NULL
    THEN coalesce(current_setting('masking.public_url', true), '') || '/v1/calls/' || id || '/recording' END"""
RECORDING = """CASE WHEN recording_url IS NOT NULL
        THEN jsonb_build_object('available', true, 'duration_seconds', billing_seconds)
    WHEN recording_deleted_at IS NOT NULL
        THEN jsonb_build_object('available', false, 'deleted_at', recording_deleted_at) END"""

# The columns of a call row under the names of the Call resource (its numbers sealed, opened by _call with
# the row's tenant_id).
CALL = f"""id, session_id, first, {sealed.sealed_text("from_ct", "from_mask")} AS "from",
    {sealed.sealed_text("to_ct", "to_mask")} AS "to", bridge, flow, status, record,
    created_at, started_at, ended_at, duration_seconds, billing_seconds, {RECORDING_URL} AS recording_url,
    hangup_by, {RECORDING} AS recording,
    coalesce(source, CASE WHEN report_id IS NOT NULL THEN 'report' END) AS source, cost::text AS cost,
    billing_pulse_seconds,
    jsonb_build_object('status', provider_status, 'status1', provider_status1, 'status2', provider_status2,
                       'message', provider_message) AS provider, tenant_id"""


def open_numbers(tenant_id: int, first: str, from_: str | None, to: str | None) -> tuple[str | None, str | None]:
    """A call's from and to as sealed text, opened: from is the `first` party's number, to the other's."""
    return (
        sealed.opened(tenant_id, sealed.label(first), from_),
        sealed.opened(tenant_id, sealed.label(sealed.other(first)), to),
    )


def _call(row: Any, *, strict: bool = True) -> Call:
    """A call row (with its tenant_id) as the resource, its numbers opened."""
    values = dict(row)
    values["from"], values["to"] = open_numbers(values["tenant_id"], values["first"], values["from"], values["to"])
    return msgspec.convert(values, Call, strict=strict)


def call(row: Any, *, strict: bool = True) -> Call:
    """A row of CALL's columns (or its JSON, strict=False) as the resource."""
    return _call(row, strict=strict)


class Dialled(msgspec.Struct, frozen=True):
    """What the provider needs to place a recorded call."""

    id: UUID
    bridge: str
    from_number: str
    to_number: str
    record: bool
    max_call_minutes: int | None


# Record the call before dialling. It is recorded as asked, else as its session asks unless the session's pool
# has since forbidden recording (an explicit `record: true` there is refused before this). The session must be
# live, and its DID below its
# max_concurrent_calls (the DID row is locked so that clicks on one DID count in turn). One call in
# flight per session is the partial unique index calls_one_in_flight: a concurrent click on the same
# session gets a unique violation. A call link's press passes its party's number as the link saw it ($9,
# as its blind index): the session row's UPDATE takes it only if that party is still that number, a
# condition PostgreSQL checks again on the newest row when a concurrent PATCH changed it first, so a
# replaced party is never called.
INSERT_CALL = f"""
WITH target AS (
    SELECT did FROM sessions
    WHERE id = $2 AND tenant_id = $1 AND status = 'active' AND expires_at > $8),
room AS (
    SELECT d.number FROM dids d JOIN target t ON d.number = t.did
    WHERE d.max_concurrent_calls IS NULL
       OR (SELECT count(*) FROM calls c WHERE c.bridge = d.number AND c.in_flight) < d.max_concurrent_calls
    FOR NO KEY UPDATE OF d),
s AS (
    UPDATE sessions SET calls_made = calls_made + 1 FROM room
    WHERE sessions.id = $2 AND sessions.did = room.number
      AND ($9::bytea IS NULL OR $9 = CASE WHEN $4 = 'agent' THEN sessions.agent_ix ELSE sessions.customer_ix END)
    RETURNING sessions.id, sessions.did, sessions.customer_ct, sessions.customer_ix, sessions.customer_mask,
              sessions.agent_ct, sessions.agent_ix, sessions.agent_mask, sessions.record, sessions.pool,
              sessions.max_call_minutes)
INSERT INTO calls (id, tenant_id, session_id, first, from_ct, from_ix, from_mask, to_ct, to_ix, to_mask, bridge,
                   flow, record, max_call_minutes, created_at)
SELECT $3, $1, s.id, $4,
       CASE WHEN $4 = 'agent' THEN s.agent_ct ELSE s.customer_ct END,
       CASE WHEN $4 = 'agent' THEN s.agent_ix ELSE s.customer_ix END,
       CASE WHEN $4 = 'agent' THEN s.agent_mask ELSE s.customer_mask END,
       CASE WHEN $5::text IS NOT NULL THEN NULL WHEN $4 = 'agent' THEN s.customer_ct ELSE s.agent_ct END,
       CASE WHEN $5::text IS NOT NULL THEN NULL WHEN $4 = 'agent' THEN s.customer_ix ELSE s.agent_ix END,
       CASE WHEN $5::text IS NOT NULL THEN 'flow:' || $5 WHEN $4 = 'agent' THEN s.customer_mask ELSE s.agent_mask END,
       s.did, $5, coalesce($6, s.record AND NOT EXISTS (
           SELECT 1 FROM pool_settings p WHERE p.tenant_id = $1 AND p.pool = s.pool AND NOT p.recording_allowed)),
       coalesce($7, s.max_call_minutes), $8
FROM s
RETURNING id, bridge, first, tenant_id, {sealed.sealed_text("from_ct", "from_mask")} AS from_number,
          {sealed.sealed_text("to_ct", "to_mask")} AS to_number, record, max_call_minutes
"""


async def insert_call(
    conn: Conn,
    *,
    tenant_id: int,
    session_id: UUID,
    call_id: UUID,
    first: str,
    flow: str | None,
    record: bool | None,
    max_call_minutes: int | None,
    now: datetime,
    party_number: str | None = None,
) -> Dialled | None:
    """Record a call in a live session; None when the session is not live, its DID is at its call limit, or
    (party_number given) its `first` party is no longer that number."""
    party_ix = None if party_number is None else sealed.probe(tenant_id, party_number)
    row = await conn.fetchrow(
        INSERT_CALL, tenant_id, session_id, call_id, first, flow, record, max_call_minutes, now, party_ix
    )
    if row is None:
        return None
    values = dict(row)
    values["from_number"], values["to_number"] = open_numbers(
        tenant_id, values.pop("first"), values["from_number"], values["to_number"]
    )
    del values["tenant_id"]
    return msgspec.convert(values, Dialled)


class RecentCalls(msgspec.Struct, frozen=True):
    """Calls of the tenant in the last minute and of the session in the window, with the oldest of each."""

    tenant_calls: int
    tenant_oldest: datetime | None
    session_calls: int
    session_oldest: datetime | None


async def recent_calls(conn: Conn, tenant_id: int, session_id: UUID, now: datetime, window: timedelta) -> RecentCalls:
    """Calls of the tenant in the last minute and of the session in the window, with the oldest of each."""
    row = await conn.fetchrow(
        """
        SELECT t.n AS tenant_calls, t.oldest AS tenant_oldest, s.n AS session_calls, s.oldest AS session_oldest
        FROM (SELECT count(*) AS n, min(created_at) AS oldest FROM calls
              WHERE tenant_id = $1 AND created_at > $3::timestamptz - interval '1 minute') t,
             (SELECT count(*) AS n, min(created_at) AS oldest FROM calls
              WHERE session_id = $2 AND created_at > $3::timestamptz - $4::interval) s
        """,
        tenant_id,
        session_id,
        now,
        window,
    )
    return msgspec.convert(row, RecentCalls)


async def record_answer(conn: Conn, call_id: UUID, status: str, in_flight: bool, message: str | None) -> Call:
    """Apply the provider's answer to a call that no report has finished yet; return the call as it is."""
    row = await conn.fetchrow(
        f"""
        WITH u AS (
            UPDATE calls SET status = $2, in_flight = $3, provider_message = $4
            WHERE id = $1 AND report_id IS NULL AND status = 'initiated' RETURNING *)
        SELECT {CALL} FROM u UNION ALL SELECT {CALL} FROM calls WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM u)
        """,
        call_id,
        status,
        in_flight,
        message,
    )
    return _call(row)


async def select_call(conn: Conn, tenant_id: int, call_id: UUID) -> Call | None:
    """One of the tenant's calls."""
    row = await conn.fetchrow(f"SELECT {CALL} FROM calls WHERE id = $1 AND tenant_id = $2", call_id, tenant_id)
    return None if row is None else _call(row)


async def select_session_calls(conn: Conn, tenant_id: int, session_id: UUID) -> list[Call]:
    """A session's calls, oldest first."""
    rows = await conn.fetch(
        f"SELECT {CALL} FROM calls WHERE session_id = $1 AND tenant_id = $2 ORDER BY created_at, id",
        session_id,
        tenant_id,
    )
    return [_call(r) for r in rows]


async def time_out_calls(conn: Conn, before: datetime, limit: int) -> list[tuple[Call, bool]]:
    """Mark one batch of calls with no report since before as unknown, freeing their sessions; each call
    with whether it was unknown already (a click with no answer: it only stops awaiting a report)."""
    rows = await conn.fetch(
        f"""
        WITH due AS (SELECT id AS due_id, status AS was FROM calls WHERE in_flight AND created_at <= $1
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        UPDATE calls SET status = 'unknown', in_flight = false FROM due WHERE calls.id = due.due_id
        RETURNING {CALL}, due.was = 'unknown' AS already
        """,
        before,
        limit,
    )
    return [(_call({k: v for k, v in r.items() if k != "already"}), r["already"]) for r in rows]


async def recording_allowed(conn: Conn, tenant_id: int, session_id: UUID) -> bool:
    """Whether the session's pool allows recording (true for an unknown session: the insert then says why not)."""
    allowed: bool = await conn.fetchval(
        """
        SELECT coalesce((SELECT p.recording_allowed FROM sessions s
                         JOIN pool_settings p ON p.tenant_id = s.tenant_id AND p.pool = s.pool
                         WHERE s.id = $2 AND s.tenant_id = $1), true)
        """,
        tenant_id,
        session_id,
    )
    return allowed


class AwaitingLog(msgspec.Struct, frozen=True, kw_only=True):
    """A call still waiting for its report past the reconciliation delay, with how its call-log lookups went."""

    call: Call
    order_id: str
    lookups: int
    lookup_at: datetime | None
    lookup_outcome: str | None


async def select_awaiting_log(conn: Conn, tenant_id: int, placed_before: datetime, limit: int) -> list[AwaitingLog]:
    """The tenant's calls in flight placed before a time (due a call-log lookup or waiting on one), oldest first."""
    rows = await conn.fetch(
        f"""
        SELECT row_to_json(c)::jsonb AS call, s.order_id, c.lookups, c.lookup_at, c.lookup_outcome FROM (
            SELECT {CALL}, lookups, lookup_at, lookup_outcome FROM calls
            WHERE tenant_id = $1 AND in_flight AND status = 'initiated' AND created_at <= $2 AND flow IS NULL
            ORDER BY created_at LIMIT $3) c
        JOIN sessions s ON s.id = c.session_id
        ORDER BY c.created_at
        """,
        tenant_id,
        placed_before,
        limit,
    )
    return [
        AwaitingLog(
            call=_call({k: v for k, v in r["call"].items() if k not in _LOOKUP}, strict=False),
            order_id=r["order_id"],
            lookups=r["lookups"],
            lookup_at=r["lookup_at"],
            lookup_outcome=r["lookup_outcome"],
        )
        for r in rows
    ]


_LOOKUP = ("lookups", "lookup_at", "lookup_outcome")
