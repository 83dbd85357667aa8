"""Webhook endpoints: register (after the guard checks the URL), list, change, delete, and rotate the secret."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from service.broker.bodies import ChangeEndpoint, CreateEndpoint
from service.broker.errors import NotFound, TooManyWebhooks, parse_id
from service.broker.webhooks.guard import resolve_target
from service.db import Conn
from service.db import webhooks as q
from service.settings import Settings

SECRET_OVERLAP = timedelta(hours=24)


class WebhookEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook endpoint; `secret` (whsec_...) only in the answer that made it."""

    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    status: Literal["enabled", "disabled", "disabled_failing"]
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None
    secret_rotating: bool
    secret: str | None = None


def _resource(row: q.Endpoint, secret: str | None = None) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id,
        url=row.url,
        events=row.events,
        description=row.description,
        status=row.status,  # type: ignore[arg-type]
        created_at=row.created_at,
        updated_at=row.updated_at,
        failing_since=row.failing_since,
        secret_rotating=row.rotating,
        secret=secret,
    )


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _events(events: list[str]) -> list[str]:
    return ["*"] if "*" in events else sorted(set(events))


async def create_endpoint(
    conn: Conn, settings: Settings, tenant_id: int, body: CreateEndpoint, now: datetime
) -> WebhookEndpoint:
    """Register an endpoint after checking where its URL points; its secret is shown only here."""
    await resolve_target(body.url, settings.webhook_allow_http, settings.webhook_allow_private)
    secret = new_secret()
    row = await q.insert_endpoint(
        conn,
        endpoint_id=uuid.uuid4(),
        tenant_id=tenant_id,
        url=body.url,
        events=_events(list(body.events)),
        description=body.description,
        secret=secret,
        now=now,
        cap=settings.max_webhooks_per_tenant,
    )
    if row is None:
        raise TooManyWebhooks(
            f"This tenant has {settings.max_webhooks_per_tenant} webhook endpoints, the most it may have "
            "(MASKING_MAX_WEBHOOKS_PER_TENANT); delete one, or subscribe an existing one to more events."
        )
    return _resource(row, secret)


async def list_endpoints(conn: Conn, tenant_id: int) -> list[WebhookEndpoint]:
    """The tenant's endpoints."""
    return [_resource(r) for r in await q.select_endpoints(conn, tenant_id)]


async def get_endpoint(conn: Conn, tenant_id: int, endpoint_id: str) -> WebhookEndpoint:
    """One of the tenant's endpoints."""
    row = await q.select_endpoint(conn, tenant_id, parse_id(endpoint_id, "webhook"))
    if row is None:
        raise NotFound("No webhook with that id.")
    return _resource(row)


async def change_endpoint(
    conn: Conn, settings: Settings, tenant_id: int, endpoint_id: str, body: ChangeEndpoint, now: datetime
) -> WebhookEndpoint:
    """Change an endpoint's URL, events, description or status (enabled, disabled)."""
    eid = parse_id(endpoint_id, "webhook")
    if body.url is not None:
        await resolve_target(body.url, settings.webhook_allow_http, settings.webhook_allow_private)
    row = await q.update_endpoint(
        conn,
        tenant_id,
        eid,
        now,
        url=body.url,
        events=_events(list(body.events)) if body.events is not None else None,
        description=body.description,
        status=body.status,
    )
    if row is None:
        raise NotFound("No webhook with that id.")
    return _resource(row)


async def delete_endpoint(conn: Conn, tenant_id: int, endpoint_id: str, now: datetime) -> None:
    """Delete an endpoint: nothing more is sent to it, and it is gone from every listing."""
    if not await q.delete_endpoint(conn, tenant_id, parse_id(endpoint_id, "webhook"), now):
        raise NotFound("No webhook with that id.")


async def rotate_secret(conn: Conn, tenant_id: int, endpoint_id: str, now: datetime) -> WebhookEndpoint:
    """A new secret, shown once; the old one also signs for 24 hours, so receivers can switch without a gap."""
    secret = new_secret()
    row = await q.rotate_secret(conn, tenant_id, parse_id(endpoint_id, "webhook"), secret, now, now + SECRET_OVERLAP)
    if row is None:
        raise NotFound("No webhook with that id.")
    return _resource(row, secret)
