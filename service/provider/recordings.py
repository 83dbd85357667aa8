"""The provider's recordings: one recording fetched from its URL and relayed chunk by chunk, Range passed on."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlsplit

import httpx
import structlog

log = structlog.get_logger("service.provider.recordings")

# The headers of the provider's answer that describe the bytes relayed (the rest are the provider's own).
PASSED_ON = ("content-type", "content-length", "content-range", "accept-ranges", "last-modified", "etag")
# Statuses relayed as they are: the whole recording, a part of it, or a range it does not have.
RELAYED = (200, 206, 416)
# A Range header passed on: byte ranges only, short (anything else is dropped and the whole recording sent).
_RANGE = re.compile(r"bytes=[0-9, -]{1,200}")
REDIRECTS = 3

Failure = Literal["unavailable", "timeout", "gone", "refused"]


class RecordingFetchError(Exception):
    """The provider did not serve the recording: unreachable, too slow, no longer has it, or refused."""

    def __init__(self, kind: Failure, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Upstream:
    """The provider's answer, opened: its status and the headers passed on; its body read a chunk at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = {name: response.headers[name] for name in PASSED_ON if name in response.headers}

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the provider sends it, never held whole; the connection is closed however this ends."""
        try:
            async for chunk in self.response.aiter_raw():  # as they come: a chunk size would wait to fill it
                yield chunk
        except httpx.HTTPError as exc:
            log.warning("recording_stream_cut", error=type(exc).__name__)
        finally:
            await self.response.aclose()

    async def aclose(self) -> None:
        """Close the provider's answer without reading it."""
        await self.response.aclose()


class RecordingSource:
    """Opens recordings at the provider's URLs; the account's token goes only to the provider's own origin."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str, timeout: float) -> None:
        self.http = http
        self.origin = _origin(base_url)
        self.token = token
        self.timeout = timeout

    async def open(self, reference: str, byte_range: str | None) -> Upstream:
        """The recording (or the range asked for) from the provider; RecordingFetchError unless it serves it."""
        if urlsplit(reference).scheme not in ("http", "https"):
            raise RecordingFetchError("refused", "the provider's recording reference is not an http(s) URL")
        headers = {"Accept-Encoding": "identity"}
        if byte_range and _RANGE.fullmatch(byte_range):
            headers["Range"] = byte_range
        if self.token and _origin(reference) == self.origin:
            headers["Authorization"] = f"Bearer {self.token}"
        request = self.http.build_request("GET", reference, headers=headers, timeout=self.timeout)
        try:
            response = await self.http.send(request, stream=True, follow_redirects=True)
        except httpx.TimeoutException:
            raise RecordingFetchError("timeout", "the provider did not start sending the recording in time") from None
        except httpx.HTTPError as exc:
            raise RecordingFetchError("unavailable", f"could not reach the provider: {type(exc).__name__}") from None
        if response.status_code in RELAYED:
            return Upstream(response)
        await response.aclose()
        if response.status_code in (404, 410):
            raise RecordingFetchError("gone", "the provider no longer has this recording")
        raise RecordingFetchError("refused", f"the provider answered HTTP {response.status_code}")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()
