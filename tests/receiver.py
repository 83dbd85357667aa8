"""A webhook receiver on loopback: verifies every signature with standardwebhooks' own Webhook.verify, counts
deliveries by webhook-id, and can answer 500, hang, or be down (stopped and started again on its port)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from typing import Any, Literal

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.processes import free_port

Mode = Literal["ok", "500", "hang", "redirect"]


class Receiver:
    """A minimal HTTP/1.1 server (keep-alive) that checks Standard Webhooks signatures."""

    def __init__(self, secrets: list[str] | None = None, mode: Mode = "ok", delay: float = 0.0) -> None:
        self.port = free_port()
        self.delay = delay  # seconds before each answer
        self.secrets: list[str] = list(secrets or [])
        self.mode: Mode = mode
        self.location = "http://127.0.0.1:1/elsewhere"  # where the redirect mode points
        self.delivered: Counter[str] = Counter()  # verified deliveries answered 2xx, by webhook-id
        self.requests = 0
        self.bad_signatures = 0
        self.events: dict[str, dict[str, Any]] = {}
        self.arrived: dict[str, float] = {}  # when (time.monotonic) each webhook-id was first delivered
        self.headers: list[dict[str, str]] = []
        self.raw: list[tuple[bytes, dict[str, str]]] = []  # every request's body and headers
        self.verified_by: Counter[int] = Counter()  # how many requests each secret (by index) verified
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def stop(self) -> None:
        """Go down: stop listening and drop open connections."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def duplicates(self) -> dict[str, int]:
        return {k: n for k, n in self.delivered.items() if n > 1}

    def verify(self, body: bytes, headers: dict[str, str]) -> bool:
        ok = False
        for i, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            self.verified_by[i] += 1
            ok = True
        return ok

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                self.headers.append(headers)
                self.raw.append((body, headers))
                if self.mode == "hang":
                    await asyncio.sleep(3600)
                if self.delay:
                    await asyncio.sleep(self.delay)
                verified = self.verify(body, headers) if self.secrets else True  # no secrets yet: accept all
                if not verified:
                    self.bad_signatures += 1
                status = {"ok": 200, "500": 500, "redirect": 307}[self.mode] if verified else 400
                if status == 200:
                    event = json.loads(body)
                    self.delivered[headers["webhook-id"]] += 1
                    self.arrived.setdefault(headers["webhook-id"], time.monotonic())
                    self.events[headers["webhook-id"]] = event
                extra = f"location: {self.location}\r\n" if status == 307 else ""
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
