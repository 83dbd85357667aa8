"""The resources the service hands out: frozen msgspec Structs, read from rows and encoded as the contract shows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

DidStatus = Literal["active", "draining", "retired"]
SessionStatus = Literal["active", "closed", "expired"]
CloseReason = Literal["ttl", "closed_by_client", "expired_by_ops", "max_calls_reached"]
CallStatus = Literal["initiated", "completed", "missed", "failed", "unknown"]
Party = Literal["agent", "customer"]


class Did(msgspec.Struct, frozen=True, kw_only=True):
    """A bridge number in a tenant's pool."""

    number: str
    pool: str
    country: str
    status: DidStatus
    max_concurrent_calls: int | None
    active_sessions: int
    created_at: datetime


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """A masked pair bound to one DID for a while."""

    id: uuid.UUID
    order_id: str
    customer: str
    agent: str
    masked_number: str
    pool: str
    status: SessionStatus
    close_reason: CloseReason | None
    close_note: str | None = None  # the client's words when it closed the session (its `reason`)
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    record: bool
    max_call_minutes: int | None
    max_calls: int | None
    calls_made: int
    # The sum of its calls' known costs (a decimal string); None while no call of it is priced.
    cost: str | None = None
    metadata: dict[str, Any]


class ProviderOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The provider's own words about a call."""

    status: str | None
    status1: str | None
    status2: str | None
    message: str | None


class Recording(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A call's recording: available (with its length), or destroyed (with when)."""

    available: bool
    duration_seconds: int | UnsetType | None = UNSET
    deleted_at: datetime | UnsetType = UNSET


class Call(msgspec.Struct, frozen=True, kw_only=True, rename={"from_": "from"}):
    """One click-to-call attempt inside a session."""

    id: uuid.UUID
    session_id: uuid.UUID
    first: Party
    from_: str
    to: str
    bridge: str
    flow: str | None
    status: CallStatus
    record: bool
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billing_seconds: int | None
    # The service's own URL of the recording (never the provider's): <MASKING_PUBLIC_URL>/v1/calls/{id}/recording.
    recording_url: str | None
    hangup_by: str | None
    recording: Recording | None = None
    # Where the outcome came from: the provider's report, or its call log (reconciliation); None while none came.
    source: Literal["report", "call_log"] | None = None
    # From the provider's call log, when it gave them: the charge (a decimal string) and the billing pulse.
    cost: str | None = None
    billing_pulse_seconds: int | None = None
    provider: ProviderOutcome


class Report(msgspec.Struct, frozen=True):
    """A stored provider report, raw as the provider sent it, with what it turned out to be."""

    id: int
    received_at: datetime
    bridge: str | None
    outcome: str
    reason: str | None
    call_id: uuid.UUID | None
    body: str
