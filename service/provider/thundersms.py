"""The thundersms click-to-call client: one typed method over a shared httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Literal

import httpx
import msgspec
import structlog

from service import metrics

log = structlog.get_logger("service.provider")

Verdict = Literal["accepted", "rejected", "unavailable", "timeout"]
# Only failures that prove the request never left are retried, and only this often.
CONNECT_ATTEMPTS = 3
CONNECT_BACKOFF_SECONDS = 0.2
# A run of six or more digits (spaces, dots, dashes or brackets between them) in the provider's free text.
_NUMBER_RUN = re.compile(r"\+?\d(?:[\s().-]*\d){5,}")


def mask_numbers(text: str) -> str:
    """The provider's free text with every number-like run replaced by `[number]`: it may name a party."""
    return _NUMBER_RUN.sub("[number]", text)


class ClickToCall(msgspec.Struct, frozen=True, kw_only=True):
    """A click-to-call as the provider's document describes it; numbers are digits with country code."""

    bridge: str
    from_: str
    to: str
    record: bool
    mid: str
    duration_minutes: int | None = None
    variables: dict[str, str] = msgspec.field(default_factory=dict)

    def body(self, webhook_id: str | None) -> dict[str, str | int]:
        """The JSON body of POST voice/c2c."""
        body: dict[str, str | int] = {
            "bridge": self.bridge,
            "from": self.from_,
            "to": self.to,
            "record": "1" if self.record else "0",
            "mid": self.mid,
        }
        if self.duration_minutes is not None:
            body["duration"] = self.duration_minutes
        if webhook_id:
            body["webhook_id"] = webhook_id
        for name, value in self.variables.items():
            body[f"variables[{name}]"] = value
        return body


class Answer(msgspec.Struct, frozen=True):
    """What came of asking the provider: accepted, rejected (with its message, numbers masked), unavailable or
    timeout."""

    verdict: Verdict
    message: str | None = None


class ThunderSMS:
    """Places click-to-calls; never re-sends one that may have reached the provider."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str, webhook_id: str | None, timeout: float):
        self.http = http
        self.base_url, self.token = base_url, token
        self.url = base_url + "voice/c2c"
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.webhook_id = webhook_id
        self.timeout = timeout

    async def click_to_call(self, call: ClickToCall) -> Answer:
        """Ask the provider to place the call; the answer says whether it was accepted."""
        content = msgspec.json.encode(call.body(self.webhook_id))
        started = time.perf_counter()
        answer = await self._send(content)
        metrics.PROVIDER_LATENCY.labels(answer.verdict).observe(time.perf_counter() - started)
        log.info("provider_click_to_call", call_id=call.mid, verdict=answer.verdict)
        return answer

    async def _send(self, content: bytes) -> Answer:
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                response = await self.http.post(self.url, content=content, headers=self.headers, timeout=self.timeout)
            except (httpx.ConnectError, httpx.PoolTimeout) as exc:
                # Refused or unresolvable: the request never left, so another try cannot ring anyone twice.
                if attempt == CONNECT_ATTEMPTS:
                    return Answer("unavailable", f"could not reach the provider: {type(exc).__name__}")
                await asyncio.sleep(CONNECT_BACKOFF_SECONDS * attempt)
                continue
            except httpx.ConnectTimeout:
                return Answer("unavailable", "could not connect to the provider in time")
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                # Sent, but no (complete) answer: the call may be ringing. Never re-send.
                return Answer("timeout", f"no answer from the provider: {type(exc).__name__}")
            return _verdict(response)
        raise AssertionError("unreachable")  # pragma: no cover


def _verdict(response: httpx.Response) -> Answer:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    message = None
    status = None
    if isinstance(body, dict):
        message = str(body.get("message")) if body.get("message") is not None else None
        status = body.get("status")
    if message is None and not (response.status_code == 200 and str(status) == "200"):
        message = f"HTTP {response.status_code}: {response.text[:200]}"
    message = None if message is None else mask_numbers(message)
    if response.status_code == 200 and str(status) == "200":
        return Answer("accepted", message)
    return Answer("rejected", message)
