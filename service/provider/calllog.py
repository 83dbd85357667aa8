"""The provider's call log (`GET voice/calls`): every page of a date range read into typed rows, paced."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec

from service.provider.reports import _int, _number, _text, _time

# Pages read for one range at most: past it nothing is decided this round (a partial log could mislead).
MAX_PAGES = 2000
_RANGE_DAY = "%b %d, %Y"


class CallLogError(Exception):
    """The call log could not be read (unreachable, refused, or an answer not shaped as documented)."""


class LogRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the call log, normalized as a report is (numbers +digits, times UTC, seconds)."""

    id: str | None
    bridge: str
    from_: str
    to: str
    status: str | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billing_seconds: int | None
    pulse_seconds: int | None
    charges: str | None
    hangup_by: str | None
    audio: str | None

    @property
    def route(self) -> tuple[str, str, str]:
        """The bridge and the two numbers, as the call stores them."""
        return (self.bridge, self.from_, self.to)

    @property
    def conversation(self) -> tuple[str, str, str, datetime | None, datetime | None]:
        """The route, start and end: what tells this row from another call's on the same route."""
        return (*self.route, self.started_at, self.ended_at)


def hms(value: Any) -> int | None:
    """Seconds of an `HH:MM:SS` duration (a plain number of seconds is read too); None when it is neither."""
    text = _text(value)
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) == 1:
        return _int(text)
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    hours, minutes, seconds = (int(p) for p in parts)
    return hours * 3600 + minutes * 60 + seconds if minutes < 60 and seconds < 60 else None


def _decimal(value: Any) -> str | None:
    text = _text(value)
    try:
        number = Decimal(text) if text is not None else None
    except InvalidOperation:
        return None
    return text if number is not None and number.is_finite() and number >= 0 and len(text or "") <= 32 else None


def parse_row(raw: Any, zone: ZoneInfo) -> LogRow | None:
    """One call-log row read leniently; None when it names no bridge and two numbers."""
    if not isinstance(raw, dict):
        return None
    bridge, from_, to = _number(raw.get("bridge")), _number(raw.get("call_from")), _number(raw.get("call_to"))
    if bridge is None or from_ is None or to is None:
        return None
    return LogRow(
        id=_text(raw.get("id")),
        bridge=bridge,
        from_=from_,
        to=to,
        status=_text(raw.get("status")),
        started_at=_time(raw.get("start_at"), zone),
        ended_at=_time(raw.get("end_at"), zone),
        duration_seconds=hms(raw.get("duration")),
        billing_seconds=hms(raw.get("billing")),
        pulse_seconds=_int(raw.get("pulsing")),
        charges=_decimal(raw.get("charges")),
        hangup_by=_text(raw.get("hangup_by")),
        audio=_text(raw.get("audio")),
    )


def date_range(first: date, last: date) -> str:
    """The `datetime[end_at]` filter as the provider writes it: `Apr 01, 2021 - Apr 12, 2021`."""
    return f"{first.strftime(_RANGE_DAY)} - {last.strftime(_RANGE_DAY)}"


class CallLog:
    """Reads the call log with the account's token, at most `per_second` requests a second (shared by all reads)."""

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, token: str, zone: ZoneInfo, timeout: float, per_second: float
    ) -> None:
        self.http = http
        self.url = base_url + "voice/calls"
        self.token = token
        self.zone = zone
        self.timeout = timeout
        self.interval = 1.0 / per_second
        self._next = 0.0

    async def _pace(self) -> None:
        now = time.monotonic()
        wait = self._next - now
        self._next = max(now, self._next) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)

    async def rows(self, since: datetime, until: datetime) -> list[LogRow]:
        """Every row of calls that ended between these days (the provider's local dates), all pages followed."""
        first, last = since.astimezone(self.zone).date(), until.astimezone(self.zone).date()
        params = {"datetime[end_at]": date_range(first, last), "access_token": self.token}
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        found: list[LogRow] = []
        for page in range(1, MAX_PAGES + 1):
            await self._pace()
            try:
                response = await self.http.get(
                    self.url, params={**params, "page": str(page)}, headers=headers, timeout=self.timeout
                )
            except httpx.HTTPError as exc:
                raise CallLogError(f"could not read the call log: {type(exc).__name__}") from None
            if response.status_code != 200:
                raise CallLogError(f"the call log answered HTTP {response.status_code}")
            try:
                body = msgspec.json.decode(response.content)
                data = body["data"]
                items, last_page = data["data"], int(data.get("last_page") or page)
            except (msgspec.DecodeError, KeyError, TypeError, ValueError):
                raise CallLogError("the call log's answer is not shaped as documented") from None
            if not isinstance(items, list):
                raise CallLogError("the call log's answer is not shaped as documented")
            found += [row for row in (parse_row(item, self.zone) for item in items) if row is not None]
            if data.get("next_page_url") is None or page >= last_page:
                return found
        # A partial log could hide the second row that makes a match ambiguous: decide nothing on it.
        raise CallLogError(f"the call log has more than {MAX_PAGES} pages for one range")
