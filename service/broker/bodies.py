"""The request bodies the API decodes and the domain takes, with their bounded field types, each defined once."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.broker.events import TYPES
from service.broker.events import EventType as Known
from service.models import DidStatus, Party

# Bounded field types, shared by the bodies below.
OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Pool = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Ttl = Annotated[int, msgspec.Meta(ge=60, le=2_592_000)]
CallMinutes = Annotated[int, msgspec.Meta(ge=1, le=240)]
Note = Annotated[str, msgspec.Meta(max_length=256)]
VariableName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{1,64}$")]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
EventType = Literal["*"] | Known  # what an endpoint subscribes to: every type, or some
Subscriptions = Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(TYPES) + 1)]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=2_592_000)]
MAX_BULK = 10_000
# The contract's default alert level: a pool alerts when its headroom falls to this or below.
DEFAULT_HEADROOM_ALERT = 2


class CreateSession(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions."""

    order_id: OrderId
    customer: str
    agent: str
    pool: Pool = "default"
    ttl_seconds: Ttl | None = None
    record: bool = False
    max_call_minutes: CallMinutes | None = None
    max_calls: Annotated[int, msgspec.Meta(ge=1)] | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class ChangeSession(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of PATCH /v1/sessions/{id}: a new TTL from now, and/or a new agent or customer."""

    ttl_seconds: Ttl | None = None
    agent: str | None = None
    customer: str | None = None
    allow_new_number: bool = False


class CloseSession(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions/{id}/close (optional): `reason`, the client's words, kept as `close_note`."""

    reason: Note | None = None


class ExpireFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions/expire: at least one filter; all given must match."""

    order_id: OrderId | None = None
    customer: str | None = None
    agent: str | None = None
    masked_number: str | None = None


class StartCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions/{id}/calls."""

    first: Party = "agent"
    record: bool | None = None
    max_call_minutes: CallMinutes | None = None
    flow: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    variables: dict[VariableName, Annotated[str, msgspec.Meta(max_length=512)]] = msgspec.field(default_factory=dict)


class CreateLink(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/sessions/{id}/call-links."""

    party: Party = "agent"
    ttl_seconds: Ttl = 3600
    max_uses: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5


class AddDid(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One DID to add with its settings (the body of POST /v1/dids)."""

    number: str
    pool: Pool = "default"
    max_concurrent_calls: Annotated[int, msgspec.Meta(ge=1)] | None = None


class NewDid(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One DID of a bulk add (an entry of POST /v1/dids/bulk, or a CSV line): its number and pool."""

    number: str
    # Checked by broker/dids.py's validate_entries, so that every bad entry is named at once rather than the first.
    pool: str = "default"


class AddDids(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Many DIDs to add at once, all or nothing (the body of POST /v1/dids/bulk)."""

    dids: Annotated[list[NewDid], msgspec.Meta(max_length=MAX_BULK)]


class ChangeDid(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A DID's new status and/or pool (the body of PATCH /v1/dids/{number})."""

    status: DidStatus | None = None
    pool: Pool | None = None


class CreateEndpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/webhooks."""

    url: Url
    events: Subscriptions
    description: Note | None = None


class ChangeEndpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of PATCH /v1/webhooks/{id}."""

    url: Url | None = None
    events: Subscriptions | None = None
    description: Note | None = None
    status: Literal["enabled", "disabled"] | None = None


class Fallback(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Where a caller with no active session on a DID goes: a number to connect, or an IVR flow."""

    connect_to: str | None = None
    flow: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class PoolSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of PUT /v1/pools/{name}: every setting (null: the service-wide setting applies)."""

    fallback: Fallback | None = None
    cooloff_seconds: Seconds | None = None
    default_ttl_seconds: Ttl | None = None
    default_max_calls: Annotated[int, msgspec.Meta(ge=1)] | None = None
    headroom_alert: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = DEFAULT_HEADROOM_ALERT
    # false: sessions and clicks asking for `record` are refused (422 recording_not_allowed)
    recording_allowed: bool = True
    # the provider's recording references are destroyed this many days after the call (null: kept)
    recording_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None
