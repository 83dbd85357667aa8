"""Recordings: served through the service (never the provider's URL), by key or signed link, audited, destroyed on
request or after the pool's retention."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
import msgspec
import structlog

from service.broker.audit import Actor, Context, Target, record
from service.broker.errors import (
    LinkExpired,
    NotFound,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RecordingDeleted,
    RecordingUnavailable,
    parse_id,
)
from service.db import Conn
from service.db import recordings as q
from service.provider.recordings import RecordingFetchError, RecordingSource, Upstream

log = structlog.get_logger("service.recordings")

# The secret signed recording links are made with (service_secrets), one for every process.
LINK_SECRET_NAME = "recording_link_secret"  # noqa: S105  (its name, not its value)
# A link's token: tenant, call, expiry (unix seconds) and the key that made it, then a truncated HMAC-SHA256.
_CLAIM = struct.Struct(">Q16sQQ")
_MAC_BYTES = 16


class LinkRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/calls/{id}/recording-links."""

    ttl_seconds: Annotated[int, msgspec.Meta(ge=10, le=86_400)] = 300


class RecordingLink(msgspec.Struct, frozen=True, kw_only=True):
    """A signed URL that plays the recording without a key until it expires."""

    url: str
    expires_at: datetime


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """What a signed link grants: this tenant's call's recording until then, as given by that key."""

    tenant_id: int
    call_id: uuid.UUID
    expires: int
    key_id: int


class LinkSigner:
    """Signs and checks recording links with the service's secret (HMAC-SHA256)."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"recording-link:" + secret.encode()).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def sign(self, claim: Claim) -> str:
        """The link's token."""
        payload = _CLAIM.pack(claim.tenant_id, claim.call_id.bytes, claim.expires, claim.key_id)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()

    def verify(self, token: str) -> Claim | None:
        """The claim of a token this service signed (expired or not); None for anything else."""
        if not token.isascii() or len(token) > 100:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return None
        if len(raw) != _CLAIM.size + _MAC_BYTES:
            return None
        payload, mac = raw[: _CLAIM.size], raw[_CLAIM.size :]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        tenant_id, call_bytes, expires, key_id = _CLAIM.unpack(payload)
        return Claim(tenant_id=tenant_id, call_id=uuid.UUID(bytes=call_bytes), expires=expires, key_id=key_id)


async def _reference(conn: Conn, tenant_id: int, call_id: uuid.UUID) -> str:
    """The provider's reference of the call's recording, or the error that says why there is none."""
    found = await q.select_reference(conn, tenant_id, call_id)
    if found is None:
        raise NotFound("No call with that id.")
    if found.reference is None:
        if found.deleted_at is not None:
            raise RecordingDeleted(
                f"This call's recording was deleted at {found.deleted_at.isoformat()} (by request or the pool's "
                "retention); it cannot be played any more."
            )
        raise RecordingUnavailable("This call has no recording (it was not recorded, or the parties never talked).")
    return found.reference


async def open_recording(
    db: asyncpg.Pool,
    source: RecordingSource,
    tenant_id: int,
    call_id: str | uuid.UUID,
    byte_range: str | None,
    audit: Context,
    now: datetime,
    link: Claim | None = None,
) -> Upstream:
    """The recording from the provider, opened (Range passed on); the access is on record before it is fetched.

    Through a signed link (its claim given), the key that made the link must still be live, and is the actor on
    record. No database connection is held while the provider is asked or the audio relayed.
    """
    cid = call_id if isinstance(call_id, uuid.UUID) else parse_id(call_id, "call")
    reason = None
    async with db.acquire() as conn, conn.transaction():
        if link is not None:
            prefix = await q.live_key_prefix(conn, tenant_id, link.key_id)
            if prefix is None:
                raise LinkExpired("The API key that made this recording link was revoked; ask for a new link.")
            audit = msgspec.structs.replace(audit, actor=Actor.api_key(str(link.key_id), prefix))
            reason = "played through a signed link"
        reference = await _reference(conn, tenant_id, cid)
        await audit.record(conn, "recording.access", Target("call", str(cid)), now, reason)
    try:
        upstream = await source.open(reference, byte_range)
    except RecordingFetchError as exc:
        log.warning("recording_fetch_failed", call_id=str(cid), kind=exc.kind, error=exc.detail)
        raise _fetch_error(exc, cid) from None
    log.info("recording_served", call_id=str(cid), status=upstream.status)
    return upstream


def _fetch_error(exc: RecordingFetchError, cid: uuid.UUID) -> Exception:
    match exc.kind:
        case "gone":
            return RecordingUnavailable(
                "The provider no longer has this call's recording; ask its support, or delete the reference."
            )
        case "timeout":
            return ProviderTimeout("The provider did not start sending the recording in time; try again.")
        case "unavailable":
            return ProviderUnavailable("The provider could not be reached for the recording; try again shortly.")
        case _:
            return ProviderRejected(f"The provider refused to serve the recording ({exc.detail}).", call_id=str(cid))


async def create_link(
    conn: Conn,
    signer: LinkSigner,
    public_base: str,
    call_id: str,
    body: LinkRequest,
    audit: Context,
    key_id: int,
    now: datetime,
) -> RecordingLink:
    """A signed URL for the call's recording, valid ttl_seconds; its making is on record (recording.access)."""
    assert audit.tenant_id is not None
    cid = parse_id(call_id, "call")
    expires_at = (now + timedelta(seconds=body.ttl_seconds)).replace(microsecond=0)
    async with conn.transaction():
        await _reference(conn, audit.tenant_id, cid)
        await audit.record(conn, "recording.access", Target("call", str(cid)), now, "signed link made")
    claim = Claim(tenant_id=audit.tenant_id, call_id=cid, expires=int(expires_at.timestamp()), key_id=key_id)
    return RecordingLink(url=f"{public_base}/r/{signer.sign(claim)}", expires_at=expires_at)


def check_link(signer: LinkSigner, token: str, now: datetime) -> Claim:
    """The claim of a live signed link; not_found for one this service did not sign, link_expired past its time."""
    claim = signer.verify(token)
    if claim is None:
        raise NotFound("This recording link is not one this service made; ask for a new one.")
    if claim.expires <= now.timestamp():
        at = datetime.fromtimestamp(claim.expires, UTC).isoformat()
        raise LinkExpired(f"This recording link expired at {at}; ask for a new one.")
    return claim


async def delete_recording(conn: Conn, call_id: str, audit: Context, now: datetime) -> None:
    """Destroy the call's recording reference at once (the call then shows it deleted); on record."""
    assert audit.tenant_id is not None
    cid = parse_id(call_id, "call")
    async with conn.transaction():
        await _reference(conn, audit.tenant_id, cid)
        await q.clear_references(conn, [cid], now)
        await audit.record(conn, "recording.delete", Target("call", str(cid)), now)
    log.info("recording_deleted", call_id=str(cid))


# The actor of what the retention sweep destroys: the service itself, acting on the pool's setting.
RETENTION = Actor.service("retention")


async def end_retention(conn: Conn, now: datetime, limit: int) -> list[uuid.UUID]:
    """Destroy one batch of references older than their pool's recording_retention_days (in the caller's
    transaction), each on record as a recording.delete by the service; the calls whose reference it destroyed."""
    due = {d.call_id: d for d in await q.select_past_retention(conn, now, limit)}
    cleared = await q.clear_references(conn, list(due), now) if due else []
    for cid in cleared:
        d = due[cid]
        why = f"older than pool {d.pool}'s recording_retention_days ({d.days})"
        await record(conn, d.tenant_id, RETENTION, "recording.delete", Target("call", str(cid)), why, None, None, now)
    return cleared
