"""The delivery worker every service process runs, and the test send of one endpoint.

Delivery is at least once. A process claims due deliveries with FOR UPDATE SKIP LOCKED and gives each a
lease (its next attempt time pushed past the request timeout) in one short transaction, makes the
requests with no connection held, then records the outcomes in one statement. A process killed
mid-request leaves its leases to run out, and another makes those attempts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
import structlog
from standardwebhooks import Webhook

from service import metrics
from service.broker.audit import Context, Target
from service.broker.errors import ForbiddenAddress, InvalidRequest, NotFound, parse_id
from service.broker.events import render
from service.broker.webhooks.attempts import Attempt, attempt_of
from service.broker.webhooks.guard import resolve_target
from service.db import events as events_q
from service.db import webhooks as q
from service.outbound import PostFailed, WebhookPoster
from service.settings import Settings

log = structlog.get_logger("service.webhooks")

Clock = Callable[[], datetime]
BACKLOG_SERIES = 20  # endpoints with a backlog gauge of their own (the oldest), so labels stay bounded


def signature(claimed: q.Claimed, msg_id: str, at: datetime, body: str) -> str:
    """The webhook-signature header: v1 signatures by the secret, and by the previous one while it overlaps."""
    sigs = [Webhook(claimed.secret).sign(msg_id, at, body)]
    if claimed.previous_secret and claimed.previous_until and claimed.previous_until > at:
        sigs.append(Webhook(claimed.previous_secret).sign(msg_id, at, body))
    return " ".join(sigs)


def _release(counts: dict[Any, int], key: object) -> None:
    left = counts.get(key, 1) - 1
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)


class Deliverer:
    """The delivery worker of one process: claims due deliveries, posts them, records how they went."""

    def __init__(self, db: asyncpg.Pool, settings: Settings, clock: Clock) -> None:
        self.db, self.settings, self.clock = db, settings, clock
        self.timeout = settings.webhook_timeout_seconds
        # A request's lease: past its timeout with room to record the outcome.
        self.lease = timedelta(seconds=2 * self.timeout + 5)
        self.http = WebhookPoster(self.timeout, settings.webhook_concurrency)
        self.per_endpoint: dict[uuid.UUID, int] = {}
        self.per_tenant: dict[int, int] = {}
        # A tenant's share of this worker: a quarter of it (at least one endpoint's), so that a few tenants
        # whose endpoints hang cannot hold every slot for the request timeout while others wait.
        self.tenant_cap = max(settings.webhook_concurrency_per_endpoint, settings.webhook_concurrency // 4)
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
                conn,
                now,
                self.per_endpoint,
                self.settings.webhook_concurrency_per_endpoint,
                self.per_tenant,
                self.tenant_cap,
                room,
                now + self.lease,
            )
        for c in claimed:
            self.start(c)
        return len(claimed)

    def start(self, claimed: q.Claimed) -> None:
        """Make one attempt in the background, counted against its endpoint's and its tenant's share."""
        self.per_endpoint[claimed.endpoint_id] = self.per_endpoint.get(claimed.endpoint_id, 0) + 1
        self.per_tenant[claimed.tenant_id] = self.per_tenant.get(claimed.tenant_id, 0) + 1
        self.running += 1
        task = asyncio.create_task(self._attempt(claimed))
        self.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.running -= 1
            _release(self.per_endpoint, claimed.endpoint_id)
            _release(self.per_tenant, claimed.tenant_id)
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
            server = target.host if target.url.startswith("https:") else None
            status_code = await self.http.post(target.url, body, headers, server)
            if not 200 <= status_code < 300:
                error = "redirect not followed" if 300 <= status_code < 400 else f"HTTP {status_code}"
        except (ForbiddenAddress, InvalidRequest) as exc:
            error = f"forbidden_address: {exc.detail}"[:300]
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except PostFailed as exc:
            error = str(exc)[:300]
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
            event_created_at=claimed.created_at,
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


async def send_test(
    db: asyncpg.Pool, deliverer: Deliverer, tenant_id: int, endpoint_id: str, now: datetime, audit: Context
) -> Attempt:
    """Write a webhook.test event for one endpoint, on record (rule 12), and make its first attempt now; the attempt."""
    eid = parse_id(endpoint_id, "webhook")
    data = msgspec.json.encode({"message": "A test event from the masking service.", "webhook_id": str(eid)})
    async with db.acquire() as conn, conn.transaction():
        claimed = await q.insert_test_delivery(conn, tenant_id, eid, data, now, now + deliverer.lease)
        if claimed is None:
            raise NotFound("No webhook with that id.")
        await audit.record(conn, "webhook.test", Target("webhook", str(eid)), now)
    outcome = await deliverer.attempt(claimed)
    async with db.acquire() as conn:
        await q.record(conn, [outcome], timedelta(seconds=deliverer.settings.webhook_disable_after_seconds))
    return attempt_of(outcome, "webhook.test")
