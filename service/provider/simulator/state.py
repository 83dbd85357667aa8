"""The simulator's state: its settings, the queue of faults tests inject, what it received and sent, its tasks."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
import msgspec

Answering = Literal["ok", "reject", "http_500", "hang", "drop"]
Reporting = Literal["answered", "missed", "busy", "none", "duplicate", "before_answer"]


class Fault(msgspec.Struct, kw_only=True):
    """How the simulator treats the next click: its answer, the report it sends, and the report's delay."""

    answer: Answering = "ok"
    report: Reporting = "answered"
    count: int = 1
    answer_after: float = 0.0  # seconds the provider takes to answer
    message: str = "Insufficient balance"  # the provider's free text when it refuses (answer="reject")
    # Not a fault of the next click: from now on, this share of reports is never posted (the call log keeps them).
    lose_callbacks: float | None = None


class SimSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The simulator's behaviour beyond single faults, changed through POST /_sim/settings."""

    send_mid: bool


class Simulator:
    """The provider's behaviour, with a queue of faults for tests and a log of what it received."""

    def __init__(
        self, callback_url: str = "", timezone: str = "Asia/Kolkata", delay: float = 0.5, send_mid: bool = False
    ) -> None:
        self.callback_url = callback_url
        self.zone = ZoneInfo(timezone)
        self.delay = delay
        # The provider may echo the click's `mid` in its report (the contract matches by it when present).
        self.send_mid = send_mid
        self.faults: deque[Fault] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.reports_sent: list[dict[str, Any]] = []
        # The provider's call log: a row for every call it reported (or would have, had the report not been lost).
        self.call_log: list[dict[str, Any]] = []
        self.lose_callbacks = 0.0
        self.lost: list[dict[str, Any]] = []
        self.http: httpx.AsyncClient | None = None
        # Recordings it keeps (name: size in bytes), served at <base_url>/recordings/<name>: its own address, set
        # by the app that mounts it, else learnt from the first click (a mount hides its prefix from the request).
        self.base_url = ""
        self.recordings: dict[str, int] = {}
        self.recording_type = "audio/mpeg"
        self.recording_requests: list[dict[str, Any]] = []
        # When set, a recording's body waits for this after its first chunk (to show a relay does not buffer).
        self.recording_gate: asyncio.Event | None = None
        self.recording_chunk = 16 * 1024  # bytes per chunk of a recording's body (a test makes it smaller)
        self.recording_sends: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def inject(self, fault: Fault) -> None:
        """Apply this fault to the next `count` clicks."""
        self.faults.append(fault)

    def next_fault(self) -> Fault:
        """The fault for the click now in hand (no fault: a normal answer and report)."""
        if not self.faults:
            return Fault()
        fault = self.faults[0]
        fault.count -= 1
        if fault.count <= 0:
            self.faults.popleft()
        return fault

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run this in the background until it ends or `close` cancels it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop pending report deliveries."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
