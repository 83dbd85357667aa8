"""Erasure (the right to be forgotten): a number destroyed in a tenant's ended sessions, calls, reports and events."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from service.broker.audit import Context, Target
from service.broker.phones import normalize
from service.db import Conn, sealed
from service.db import erasure as q
from service.logging import mask_number

BATCH = 500


class ErasureRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The number to erase, in E.164 (`+` and country code)."""

    number: str


class Erased(msgspec.Struct):
    """How many rows of each kind had the number destroyed."""

    sessions: int = 0
    calls: int = 0
    reports: int = 0
    events: int = 0


class ErasureResult(msgspec.Struct, frozen=True):
    """What an erasure did, and the active sessions naming the number that it left alone."""

    erased: Erased
    active_sessions: list[uuid.UUID]


async def erase(conn: Conn, context: Context, body: ErasureRequest, now: datetime, batch: int = BATCH) -> ErasureResult:
    """Destroy the number in the tenant's ended sessions (both parties, as retention would), their calls, reports
    and events, and in its unmatched reports that name it; a batch of sessions per transaction.

    Recorded in the audit log (`erasure`, target the masked number) before the first batch. Active sessions are
    named in the answer and left alone: erase again once they have ended.
    """
    number = normalize(body.number, "number")
    tenant_id = context.tenant_id
    assert tenant_id is not None
    index = sealed.index(tenant_id, number)
    async with conn.transaction():
        await context.record(conn, "erasure", Target("number", mask_number(number)), now)
    erased = Erased()
    while True:
        async with conn.transaction():
            done = await q.erase_sessions(conn, tenant_id, index, batch, now)
            erased.reports += await q.mask_reports(conn, done.reports)
            erased.events += await q.mask_events(conn, tenant_id, done.sessions, done.reports)
        erased.sessions += len(done.sessions)
        erased.calls += done.calls
        if len(done.sessions) < batch:
            break
    after = 0
    while True:
        async with conn.transaction():
            masked, after = await q.mask_unmatched(conn, tenant_id, number, after, batch)
            erased.events += await q.mask_events(conn, tenant_id, [], masked)
        erased.reports += len(masked)
        if after == 0:
            break
    return ErasureResult(erased, await q.active_sessions(conn, tenant_id, index))
