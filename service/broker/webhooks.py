"""Webhooks: endpoints and their secrets, the SSRF guard, and the delivery worker every service process runs.

Delivery is at least once. A process claims due deliveries with FOR UPDATE SKIP LOCKED and gives each a
lease (its next attempt time pushed past the request timeout) in one short transaction, makes the
requests with no connection held, then records the outcomes in one statement. A process killed
mid-request leaves its leases to run out, and another makes those attempts again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import random
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import msgspec
import structlog
from standardwebhooks import Webhook

from service import metrics
from service.broker.errors import ForbiddenAddress, InvalidRequest, NotFound, parse_id
from service.broker.events import TYPES, Event, event_id, parse_event_id, render
from service.broker.events import EventType as Known
from service.db import Conn
from service.db import events as events_q
from service.db import webhooks as q
from service.settings import Settings

log = structlog.get_logger("service.webhooks")

Clock = Callable[[], datetime]
SECRET_OVERLAP = timedelta(hours=24)
RESPONSE_READ = 65_536  # bytes of an endpoint's answer read (the rest is dropped with its connection)
RESOLVE_TIMEOUT = 5.0  # seconds a webhook host's name may take to resolve
BACKLOG_SERIES = 20  # endpoints with a backlog gauge of their own (the oldest), so labels stay bounded
EventType = Literal["*"] | Known  # what an endpoint subscribes to: every type, or some
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Description = Annotated[str, msgspec.Meta(max_length=256)]


# --- the SSRF guard -------------------------------------------------------------------------------

# Never a webhook target, whatever the settings: link-local (cloud metadata lives there), unspecified,
# multicast, broadcast, and the metadata addresses clouds put elsewhere.
_ALWAYS_REFUSED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud metadata
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "fe80::/10",
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",
    )
]
# Refused unless MASKING_WEBHOOK_ALLOW_PRIVATE: loopback, private ranges, carrier-grade NAT, unique local.
_PRIVATE = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "fc00::/7")]
# NAT64's well-known prefix (RFC 6052): a gateway turns 64:ff9b::a.b.c.d into a connection to a.b.c.d.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped, NAT64 (its last 32 bits) or 6to4 (None: none)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip.sixtofour


def address_verdict(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """Why an address may not be a webhook target (None: it may); an address wrapping an IPv4 one is judged as it."""
    inner = embedded_ipv4(ip)
    target = inner if inner is not None else ip
    name = f"{ip} (that is {inner})" if inner is not None else str(ip)
    if any(target in net for net in _ALWAYS_REFUSED):
        return f"{name} is link-local, metadata or otherwise never reachable for webhooks"
    if not allow_private and (target.is_loopback or target.is_private or any(target in net for net in _PRIVATE)):
        return f"{name} is a private or loopback address (allowed only with MASKING_WEBHOOK_ALLOW_PRIVATE=true)"
    return None


class Target(msgspec.Struct, frozen=True):
    """A checked destination: the URL to connect to (the checked address), the Host header and TLS name."""

    url: str
    host: str
    ip: str


def check_url_shape(url: str, allow_http: bool) -> tuple[str, str, int]:
    """Scheme, host and port of a webhook URL, or invalid_request."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("`url` is not a valid URL.", field="url") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRequest("`url` must be an absolute https:// URL.", field="url")
    if parts.scheme == "http" and not allow_http:
        raise InvalidRequest(
            "`url` must use https (plain http only with MASKING_WEBHOOK_ALLOW_HTTP=true).", field="url"
        )
    if parts.username or parts.password:
        raise InvalidRequest("`url` must not carry a user name or password.", field="url")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve_target(url: str, allow_http: bool, allow_private: bool) -> Target:
    """Resolve the URL's host now and check every address it has; the first one is the one to connect to."""
    scheme, host, port = check_url_shape(url, allow_http)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, TimeoutError):
        raise ForbiddenAddress(f"The host {host!r} does not resolve.", host=host) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for ip in addresses:
        if why := address_verdict(ip, allow_private):
            raise ForbiddenAddress(f"Webhooks may not be sent to {host}: {why}.", host=host)
    ip = addresses[0]
    netloc = f"[{ip}]:{port}" if isinstance(ip, ipaddress.IPv6Address) else f"{ip}:{port}"
    parts = urlsplit(url)
    return Target(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")), host, str(ip))


# --- endpoints --------------------------------------------------------------------------------------


class CreateEndpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /v1/webhooks."""

    url: Url
    events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(TYPES) + 1)]
    description: Description | None = None


class ChangeEndpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of PATCH /v1/webhooks/{id}."""

    url: Url | None = None
    events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(TYPES) + 1)] | None = None
    description: Description | None = None
    status: Literal["enabled", "disabled"] | None = None


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


async def delete_endpoint(conn: Conn, tenant_id: int, endpoint_id: str) -> None:
    """Delete an endpoint; its pending deliveries go with it."""
    if not await q.delete_endpoint(conn, tenant_id, parse_id(endpoint_id, "webhook")):
        raise NotFound("No webhook with that id.")


async def rotate_secret(conn: Conn, tenant_id: int, endpoint_id: str, now: datetime) -> WebhookEndpoint:
    """A new secret, shown once; the old one also signs for 24 hours, so receivers can switch without a gap."""
    secret = new_secret()
    row = await q.rotate_secret(conn, tenant_id, parse_id(endpoint_id, "webhook"), secret, now, now + SECRET_OVERLAP)
    if row is None:
        raise NotFound("No webhook with that id.")
    return _resource(row, secret)


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery attempt of an event to an endpoint."""

    event_id: str
    type: str | None
    attempt: int
    status: Literal["delivered", "retrying", "failed"]
    status_code: int | None
    error: str | None
    duration_ms: int
    at: datetime
    next_attempt_at: datetime | None


class AttemptPage(msgspec.Struct, frozen=True):
    """A page of attempts, newest first."""

    items: list[Attempt]
    next_cursor: str | None


def _attempt(row: q.AttemptRow | q.Outcome, type_: str | None) -> Attempt:
    return Attempt(
        event_id=event_id(row.event_id),
        type=type_,
        attempt=row.attempt,
        status=row.status,  # type: ignore[arg-type]
        status_code=row.status_code,
        error=row.error,
        duration_ms=row.duration_ms,
        at=row.at,
        next_attempt_at=row.next_attempt_at,
    )


async def list_attempts(
    conn: Conn, tenant_id: int, endpoint_id: str, status: str | None, cursor: str | None, limit: int
) -> AttemptPage:
    """An endpoint's delivery attempts, newest first."""
    eid = parse_id(endpoint_id, "webhook")
    if await q.select_endpoint(conn, tenant_id, eid) is None:
        raise NotFound("No webhook with that id.")
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) < 20):
        raise InvalidRequest("`cursor` is not one this service gave out.", field="cursor")
    rows = await q.select_attempts(conn, eid, status, int(cursor) if cursor else None, limit + 1)
    items = [_attempt(r, r.type) for r in rows[:limit]]
    return AttemptPage(items, str(rows[limit - 1].id) if len(rows) > limit else None)


class Redelivered(msgspec.Struct, frozen=True):
    """How many endpoints the event was queued for again."""

    queued: int


async def redeliver(conn: Conn, tenant_id: int, event: str, now: datetime) -> Redelivered:
    """Queue an event again for every enabled endpoint that wants it, from its first attempt."""
    number = parse_event_id(event)
    if await events_q.select_event(conn, tenant_id, number) is None:
        raise NotFound("No event with that id.")
    return Redelivered(await q.redeliver(conn, tenant_id, number, now))


# --- delivery -----------------------------------------------------------------------------------------


def signature(claimed: q.Claimed, msg_id: str, at: datetime, body: str) -> str:
    """The webhook-signature header: v1 signatures by the secret, and by the previous one while it overlaps."""
    sigs = [Webhook(claimed.secret).sign(msg_id, at, body)]
    if claimed.previous_secret and claimed.previous_until and claimed.previous_until > at:
        sigs.append(Webhook(claimed.previous_secret).sign(msg_id, at, body))
    return " ".join(sigs)


class Deliverer:
    """The delivery worker of one process: claims due deliveries, posts them, records how they went."""

    def __init__(self, db: asyncpg.Pool, settings: Settings, clock: Clock) -> None:
        self.db, self.settings, self.clock = db, settings, clock
        self.timeout = settings.webhook_timeout_seconds
        # A request's lease: past its timeout with room to record the outcome.
        self.lease = timedelta(seconds=2 * self.timeout + 5)
        # aiohttp rather than httpx here: its connection pool is per host, where httpcore's checks every
        # pooled connection on each request (a quarter of the worker's CPU at 32 connections, profiled).
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=settings.webhook_concurrency, use_dns_cache=False),
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Content-Type"),
        )
        self.per_endpoint: dict[uuid.UUID, int] = {}
        self.running = 0
        self.done: list[q.Outcome] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self._last_gauges = 0.0

    async def close(self) -> None:
        """Stop the requests in flight (their leases run out and another process makes them) and the client."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.close()

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            try:
                claimed = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook_worker_failed")
                claimed = 0
            if claimed == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.webhook_poll_seconds)
                self.wake.clear()
                # Let a few more requests finish, so that one flush and one claim serve several.
                await asyncio.sleep(0.005)

    async def step(self) -> int:
        """Record finished attempts, then claim and start as many due deliveries as there is room for."""
        await self.flush()
        if time.monotonic() - self._last_gauges > 15:
            self._last_gauges = time.monotonic()
            await self.update_gauges()
        room = self.settings.webhook_concurrency - self.running
        if room <= 0:
            return 0
        now = self.clock()
        async with self.db.acquire() as conn:
            claimed = await q.claim(
                conn, now, self.per_endpoint, self.settings.webhook_concurrency_per_endpoint, room, now + self.lease
            )
        for c in claimed:
            self.start(c)
        return len(claimed)

    def start(self, claimed: q.Claimed) -> None:
        """Make one attempt in the background, counted against its endpoint's share."""
        self.per_endpoint[claimed.endpoint_id] = self.per_endpoint.get(claimed.endpoint_id, 0) + 1
        self.running += 1
        task = asyncio.create_task(self._attempt(claimed))
        self.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.running -= 1
            left = self.per_endpoint.get(claimed.endpoint_id, 1) - 1
            if left:
                self.per_endpoint[claimed.endpoint_id] = left
            else:
                self.per_endpoint.pop(claimed.endpoint_id, None)
            self.wake.set()

        task.add_done_callback(finished)

    async def _attempt(self, claimed: q.Claimed) -> None:
        outcome = await self.attempt(claimed)
        # Appended only now: `self.done` may have been swapped for a new list by a flush meanwhile.
        self.done.append(outcome)

    async def attempt(self, claimed: q.Claimed) -> q.Outcome:
        """POST the event once (no connection held) and say how it went and what comes next."""
        event = render(events_q.EventRow(claimed.event_id, claimed.type, claimed.created_at, claimed.data, "0"))
        body = msgspec.json.encode(event)
        started = time.perf_counter()
        at = self.clock()
        status_code: int | None = None
        error: str | None = None
        try:
            target = await resolve_target(
                claimed.url, self.settings.webhook_allow_http, self.settings.webhook_allow_private
            )
            text = body.decode()
            headers = {
                "content-type": "application/json",
                "user-agent": "masking-webhooks/1",
                "host": urlsplit(claimed.url).netloc,
                "webhook-id": event.id,
                "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": signature(claimed, event.id, at, text),
            }
            async with self.http.post(
                target.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                server_hostname=target.host if target.url.startswith("https:") else None,
            ) as response:
                status_code = response.status
                await response.content.read(RESPONSE_READ)  # a short answer is read, so its connection is kept
            if not 200 <= status_code < 300:
                error = "redirect not followed" if 300 <= status_code < 400 else f"HTTP {status_code}"
        except (ForbiddenAddress, InvalidRequest) as exc:
            error = f"forbidden_address: {exc.detail}"[:300]
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        except Exception as exc:  # whatever else goes wrong, the attempt is recorded as failed, never lost
            log.exception("webhook_attempt_failed", endpoint_id=str(claimed.endpoint_id))
            error = f"{type(exc).__name__}: {exc}"[:300]
        duration_ms = round((time.perf_counter() - started) * 1000)
        schedule = self.settings.webhook_retries
        if error is None:
            status, next_at = "delivered", None
        elif claimed.attempt <= len(schedule):
            wait = schedule[claimed.attempt - 1] * random.uniform(0.8, 1.2)  # ±20 % jitter
            status, next_at = "retrying", at + timedelta(seconds=wait)
        else:
            status, next_at = "failed", None
        metrics.WEBHOOK_DELIVERIES.labels(status).inc()
        return q.Outcome(
            event_id=claimed.event_id,
            endpoint_id=claimed.endpoint_id,
            attempt=claimed.attempt,
            status=status,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
            at=at,
            next_attempt_at=next_at,
        )

    async def flush(self) -> None:
        """Record the attempts finished since the last flush, in one statement."""
        if not self.done:
            return
        batch, self.done = self.done, []
        try:
            async with self.db.acquire() as conn:
                disabled = await q.record(conn, batch, timedelta(seconds=self.settings.webhook_disable_after_seconds))
        except BaseException:
            self.done[:0] = batch  # recorded on the next round (their leases hold meanwhile)
            raise
        for endpoint in disabled:
            log.warning("webhook_disabled_failing", endpoint_id=str(endpoint))

    async def update_gauges(self) -> None:
        """Set the backlog gauges (the oldest undelivered event of the worst endpoints) and the disabled count."""
        async with self.db.acquire() as conn:
            worst, disabled = await q.backlog(conn, BACKLOG_SERIES)
        now = self.clock()
        metrics.WEBHOOK_BACKLOG.clear()
        for b in worst:
            metrics.WEBHOOK_BACKLOG.labels(str(b.endpoint_id)).set(max((now - b.oldest).total_seconds(), 0))
        metrics.WEBHOOK_OLDEST.set(max((now - worst[0].oldest).total_seconds(), 0) if worst else 0)
        metrics.WEBHOOK_DISABLED.set(disabled)


async def send_test(db: asyncpg.Pool, deliverer: Deliverer, tenant_id: int, endpoint_id: str, now: datetime) -> Attempt:
    """Write a webhook.test event for one endpoint and make its first attempt now; the attempt."""
    eid = parse_id(endpoint_id, "webhook")
    data = msgspec.json.encode({"message": "A test event from the masking service.", "webhook_id": str(eid)})
    async with db.acquire() as conn:
        claimed = await q.insert_test_delivery(conn, tenant_id, eid, data, now, now + deliverer.lease)
    if claimed is None:
        raise NotFound("No webhook with that id.")
    outcome = await deliverer.attempt(claimed)
    async with db.acquire() as conn:
        await q.record(conn, [outcome], timedelta(seconds=deliverer.settings.webhook_disable_after_seconds))
    return _attempt(outcome, "webhook.test")


def event_body(event: Event) -> bytes:
    """The JSON body of an event as delivered."""
    return msgspec.json.encode(event)
