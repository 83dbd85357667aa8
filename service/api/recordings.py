"""HTTP routes for recordings: streamed through the service by key or signed link, links made, references deleted."""

from __future__ import annotations

import secrets

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from service.api.audit import audit_context, key_context
from service.api.deps import Db, MaskingRequest
from service.api.problems import API_RESPONSES, PUBLIC_RESPONSES, problem_responses
from service.broker import recordings as broker
from service.broker.audit import Actor
from service.db.tenants import get_or_create_secret
from service.provider.recordings import RecordingSource, Upstream
from service.provider.thundersms import ThunderSMS


def _source(request: MaskingRequest) -> RecordingSource:
    runtime = request.runtime
    provider = runtime.provider
    timeout = runtime.settings.provider_timeout_seconds
    if isinstance(provider, ThunderSMS):
        return RecordingSource(provider.http, provider.base_url, provider.token, timeout)
    return RecordingSource(runtime.http, runtime.settings.thundersms_url, "", timeout)


async def _signer(request: MaskingRequest) -> broker.LinkSigner:
    """The process's link signer, its secret read (or made) once, the same for every process."""
    signer: broker.LinkSigner | None = getattr(request.app.state, "recording_links", None)
    if signer is None:
        secret = await get_or_create_secret(request.runtime.db, broker.LINK_SECRET_NAME, secrets.token_hex(32))
        signer = request.app.state.recording_links = broker.LinkSigner(secret)
    return signer


def _relay(upstream: Upstream) -> Stream:
    """The provider's answer relayed: its status (200, 206, 416), the headers that describe the bytes, the bytes.

    The routes name no media type of their own: a route's would override the provider's content type.
    """
    headers = {k: v for k, v in upstream.headers.items() if k != "content-type"}
    headers["Cache-Control"] = "private, no-store"
    return Stream(
        upstream.chunks(),
        status_code=upstream.status,
        media_type=upstream.headers.get("content-type", "application/octet-stream"),
        headers=headers,
    )


class RecordingController(Controller):
    """A call's recording: played through the service, shared by a short-lived signed link, deleted by ops."""

    path = "/v1/calls/{call_id:str}"
    tags = ["recordings"]

    @get(
        "/recording",
        summary="The call's recording, streamed from the provider (Range requests, the provider's content type)",
        description="404 `recording_unavailable` when the call has none, 410 when it was deleted. Audited.",
        responses={**API_RESPONSES, **problem_responses(410, 502, 504)},
    )
    async def play(self, request: MaskingRequest, call_id: FromPath[str]) -> Stream:
        runtime = request.runtime
        upstream = await broker.open_recording(
            runtime.db,
            _source(request),
            request.principal.tenant_id,
            call_id,
            request.headers.get("range"),
            key_context(request),
            runtime.clock(),
        )
        return _relay(upstream)

    @post(
        "/recording-links",
        status_code=201,
        summary="A signed URL that plays the recording without a key until it expires",
        responses={**API_RESPONSES, **problem_responses(410)},
    )
    async def link(
        self,
        request: MaskingRequest,
        call_id: FromPath[str],
        conn: Db,
        data: JSONBody[broker.LinkRequest | None] = None,
    ) -> broker.RecordingLink:
        runtime = request.runtime
        return await broker.create_link(
            conn,
            await _signer(request),
            runtime.settings.public_base,
            call_id,
            data or broker.LinkRequest(),
            key_context(request),
            request.principal.key_id,
            runtime.clock(),
        )

    @delete(
        "/recording",
        status_code=204,
        summary="Destroy the call's recording reference at once",
        description="The call then shows `recording: {available: false, deleted_at}`. Audited.",
        opt={"scope": "ops"},
        responses={**API_RESPONSES, **problem_responses(410)},
    )
    async def remove(self, request: MaskingRequest, call_id: FromPath[str], conn: Db) -> None:
        await broker.delete_recording(conn, call_id, key_context(request), request.runtime.clock())


@get(
    "/r/{token:str}",
    summary="A recording through a signed link (no key): until the link expires",
    description="404 `not_found` for a link this service did not sign, 410 `link_expired` past its time.",
    responses={**PUBLIC_RESPONSES, **problem_responses(404, 410, 502, 504)},
    tags=["recordings"],
    security=[],
)
async def play_link(request: MaskingRequest, token: FromPath[str]) -> Stream:
    """The recording a signed link names, streamed as GET /v1/calls/{id}/recording streams it; audited."""
    runtime = request.runtime
    now = runtime.clock()
    claim = broker.check_link(await _signer(request), token, now)
    upstream = await broker.open_recording(
        runtime.db,
        _source(request),
        claim.tenant_id,
        claim.call_id,
        request.headers.get("range"),
        audit_context(request, Actor.api_key(str(claim.key_id), ""), claim.tenant_id),
        now,
        link=claim,
    )
    return _relay(upstream)
