"""SQL for the provider's reports: stored and settled in one statement (matched, duplicate, unmatched...)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import msgspec

from service.db import Conn, Query, calls, load, sealed
from service.db.calls import CALL
from service.db.dids import tenant_of_did
from service.db.events import emit_ctes
from service.db.sessions.end import end_sessions
from service.models import Call

INSERT_REPORT = "INSERT INTO provider_reports (body, received_at) VALUES ($1, $2) RETURNING id"
INSERT_UNPARSEABLE = (
    "INSERT INTO provider_reports (body, received_at, outcome) VALUES ($1, $2, 'unparseable') RETURNING id"
)
LOCK_REPORT = """
SELECT body, received_at FROM provider_reports WHERE id = $1 AND outcome = 'pending' FOR UPDATE SKIP LOCKED
"""
SETTLE_REPORT = """
UPDATE provider_reports SET outcome = $2, reason = $3 WHERE id = $1 AND outcome = 'pending'
"""


def report_json(alias: str) -> str:
    """A stored report row (alias) as the data of its report.unmatched event (body_text: its body as text)."""
    a = alias
    return f"""jsonb_build_object('id', {a}.id, 'received_at', {a}.received_at, 'bridge', {a}.bridge,
        'outcome', {a}.outcome, 'reason', {a}.reason, 'call_id', {a}.call_id, 'body', :body_text::text)"""
    # body_text: the body sealed for the event's tenant (sealed.EVENT_REPORT_BODY), as sealed text


# A pending report that cannot be applied: settled unmatched with its bridge, and its DID's tenant told.
_GIVEN_UP_EVENT = f"SELECT r.tenant_id, 'report.unmatched' AS type, {report_json('r')} AS data FROM stored r"
GIVE_UP = Query(
    f"""
WITH stored AS (
    UPDATE provider_reports r SET outcome = 'unmatched', reason = :reason, bridge = :bridge,
        tenant_id = (SELECT tenant_id FROM dids WHERE number = :bridge)
    WHERE r.id = :report_id AND r.outcome = 'pending'
    RETURNING r.id, r.received_at, r.bridge, r.outcome, r.reason, r.call_id, r.tenant_id),
{emit_ctes("emitted", _GIVEN_UP_EVENT, ":now")}
SELECT count(*) FROM stored
"""
)

# The max_calls close inside INGEST: the one end-session rule, for the session of a call just completed.
_END_AT_MAX_CALLS = end_sessions(
    "closed",
    using="FROM applied a",
    where="""s.id = a.session_id AND a.status = 'completed' AND s.expires_at > :now AND s.max_calls IS NOT NULL
      AND (SELECT count(*) FROM calls WHERE session_id = s.id AND status = 'completed') + 1 >= s.max_calls""",
    status="closed",
    reason="max_calls_reached",
    closed_at=":now",
    now=":now",
)
_INGEST_EVENTS = emit_ctes(
    "emitted",
    f"""
    SELECT a.tenant_id, 'call.' || a.status AS type, to_jsonb(a) - 'tenant_id' AS data FROM applied a
    UNION ALL SELECT a.tenant_id, 'call.recording_ready', to_jsonb(a) - 'tenant_id' FROM applied a
    WHERE a.recording IS NOT NULL
    UNION ALL SELECT c.tenant_id, 'session.closed', c.data FROM closed c
    UNION ALL SELECT r.tenant_id, 'report.unmatched', {report_json("r")}
    FROM stored r WHERE r.outcome = 'unmatched' """,
    ":now",
)
INGEST = load(
    Path(__file__).with_name("ingest.sql"), call=CALL, end_at_max_calls=_END_AT_MAX_CALLS, events=_INGEST_EVENTS
)


class Ingest(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed report as INGEST stores and applies it (its named parameters)."""

    report_id: int | None  # a pending row being re-matched, else None (a new row)
    body: bytes
    body_text: str  # the body as the report.unmatched event shows it (as_text)
    key: bytes  # what the report reports, hashed: the same report twice has one effect
    now: datetime
    received_at: datetime  # when the report arrived: now, or a pending row's own time when it is re-matched
    since: datetime  # calls placed before this are too old for an unnamed report
    tolerance: timedelta  # how far the provider's clock may differ from ours
    bridge: str
    from_: str
    to: str
    mid: UUID | None
    earliest: datetime | None
    future: bool
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billing_seconds: int | None
    recording_url: str | None
    hangup_by: str | None
    provider_status: str | None
    provider_status1: str | None
    provider_status2: str | None
    source: str = "report"  # or "call_log": the outcome came from the provider's call log (reconciliation)
    cost: str | None = None  # from the call log: the charge, a decimal string
    billing_pulse_seconds: int | None = None  # from the call log: the billing pulse


class Ingested(msgspec.Struct, frozen=True):
    """What storing a report did: its id, outcome and reason, and the call it finished (if any)."""

    report_id: int
    outcome: str
    reason: str | None
    call: Call | None
    tenant_id: int | None


class StoredReport(msgspec.Struct, frozen=True):
    """A stored report as the operator and ops see it."""

    id: int
    received_at: datetime
    body: bytes
    bridge: str | None
    outcome: str
    reason: str | None
    call_id: UUID | None


class Pending(msgspec.Struct, frozen=True):
    """A pending report's body and arrival, locked for matching."""

    body: bytes
    received_at: datetime


async def ingest_report(conn: Conn, report: Ingest) -> Ingested:
    """Store a parsed report and apply it to its call in one statement.

    Its numbers are looked up by their blind indexes under the bridge's tenant; its body is stored sealed
    and its identity keyed (neither a number nor its hash is left in clear).
    """
    values = msgspec.structs.asdict(report)
    tenant_id = await tenant_of_did(conn, report.bridge)
    values["from_ix"] = sealed.probe(tenant_id, values.pop("from_"))
    values["to_ix"] = sealed.probe(tenant_id, values.pop("to"))
    values["key"] = sealed.keyed_hash(None, report.key)
    values["body"] = sealed.seal(None, sealed.REPORT_BODY, report.body)
    values["body_text"] = _event_body(tenant_id, report.body_text)
    if report.recording_url and tenant_id is not None:  # the provider's reference, sealed for the DID's tenant
        values["recording_url"] = sealed.as_text(sealed.seal(tenant_id, sealed.RECORDING, report.recording_url))
    row = await conn.fetchrow(INGEST.sql, *INGEST.args(values))
    assert row is not None, "the statement always returns the stored report"
    call = calls.call(row) if row["id"] is not None else None
    return Ingested(row["report_id"], row["outcome"], row["reason"], call, row["tenant_id"])


def _event_body(tenant_id: int | None, text: str) -> str | None:
    """A report's body as its report.unmatched event holds it: sealed for the DID's tenant (no tenant, no event)."""
    return None if tenant_id is None else sealed.as_text(sealed.seal(tenant_id, sealed.EVENT_REPORT_BODY, text))


def as_text(body: bytes) -> str:
    """The body as the report.unmatched event shows it (as GET /v1/reports does; PostgreSQL text holds no NUL)."""
    return body.decode("utf-8", "replace").replace("\x00", "\ufffd")


async def insert_unparseable(conn: Conn, body: bytes, received_at: datetime) -> int:
    """Store a body that names no call, settled as unparseable, in one statement."""
    report_id: int = await conn.fetchval(INSERT_UNPARSEABLE, sealed.seal(None, sealed.REPORT_BODY, body), received_at)
    return report_id


async def insert_report(conn: Conn, body: bytes, received_at: datetime) -> int:
    """Store a report's raw body as pending (when applying it failed), for the sweeper; return its id."""
    report_id: int = await conn.fetchval(INSERT_REPORT, sealed.seal(None, sealed.REPORT_BODY, body), received_at)
    return report_id


async def lock_report(conn: Conn, report_id: int) -> Pending | None:
    """A pending report, locked for matching (None if another process has it or it is done)."""
    row = await conn.fetchrow(LOCK_REPORT, report_id)
    return None if row is None else Pending(_opened_body(row["body"]), row["received_at"])


async def settle_report(conn: Conn, report_id: int, outcome: str, reason: str | None) -> None:
    """Give a pending report its final outcome without applying it (unparseable)."""
    await conn.execute(SETTLE_REPORT, report_id, outcome, reason)


async def give_up_report(
    conn: Conn, report_id: int, reason: str, bridge: str | None, body: bytes, now: datetime
) -> None:
    """Settle a pending report that cannot be applied as unmatched, emitting report.unmatched to its DID's tenant."""
    tenant_id = None if bridge is None else await tenant_of_did(conn, bridge)
    body_text = _event_body(tenant_id, as_text(body))
    values = {"report_id": report_id, "reason": reason, "bridge": bridge, "body_text": body_text, "now": now}
    await conn.execute(GIVE_UP.sql, *GIVE_UP.args(values))


async def select_pending_reports(conn: Conn, older_than: datetime, limit: int) -> list[int]:
    """Reports stored but never matched (applying them failed, or an older version stored them)."""
    rows = await conn.fetch(
        "SELECT id FROM provider_reports WHERE outcome = 'pending' AND received_at <= $1 ORDER BY id LIMIT $2",
        older_than,
        limit,
    )
    return [r["id"] for r in rows]


async def select_reports(
    conn: Conn, tenant_id: int | None, outcomes: list[str], after_id: int | None, limit: int
) -> list[StoredReport]:
    """Reports with these outcomes: a tenant's (bridge on its DIDs), or with tenant_id None those on no DID."""
    rows = await conn.fetch(
        """
        SELECT id, received_at, body, bridge, outcome, reason, call_id FROM provider_reports
        WHERE outcome = ANY($2::text[])
          AND (tenant_id = $1 OR ($1::bigint IS NULL AND tenant_id IS NULL))
          AND ($3::bigint IS NULL OR id < $3)
        ORDER BY id DESC LIMIT $4
        """,
        tenant_id,
        outcomes,
        after_id,
        limit,
    )
    return [msgspec.convert({**r, "body": _opened_body(r["body"])}, StoredReport) for r in rows]


def _opened_body(body: bytes) -> bytes:
    """A stored raw body, opened."""
    return sealed.open_bytes(None, sealed.REPORT_BODY, bytes(body))
