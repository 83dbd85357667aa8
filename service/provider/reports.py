"""The provider's callback report on the wire: read leniently into the fields the service uses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec


class ParsedReport(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a provider report that the service uses, normalized."""

    bridge: str
    from_: str
    to: str
    mid: uuid.UUID | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billing_seconds: int | None
    status: str | None
    status1: str | None
    status2: str | None
    recording_url: str | None
    hangup_by: str | None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text[:512] or None


def _number(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if text.startswith("flow:"):
        return text
    digits = text.removeprefix("+")
    return "+" + digits if digits.isdigit() and 6 <= len(digits) <= 15 else None


def _int(value: Any) -> int | None:
    text = _text(value)
    try:
        return max(int(float(text)), 0) if text is not None else None
    except (ValueError, OverflowError):
        return None


def _time(value: Any, zone: ZoneInfo) -> datetime | None:
    text = _text(value)
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone) if text else None
    except ValueError:
        return None


def parse_report(body: bytes, zone: ZoneInfo) -> ParsedReport | None:
    """Read a report leniently (strings or numbers, empty fields); None when it names no call."""
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    bridge, from_, to = _number(data.get("bridge")), _number(data.get("from")), _number(data.get("to"))
    if bridge is None or from_ is None or to is None:
        return None
    try:
        mid = uuid.UUID(str(data["mid"])) if data.get("mid") else None
    except ValueError:
        mid = None
    return ParsedReport(
        bridge=bridge,
        from_=from_,
        to=to,
        mid=mid,
        started_at=_time(data.get("start_at"), zone),
        ended_at=_time(data.get("end_at"), zone),
        duration_seconds=_int(data.get("duration")),
        billing_seconds=_int(data.get("billing")),
        status=_text(data.get("status")),
        status1=_text(data.get("status1")),
        status2=_text(data.get("status2")),
        recording_url=_text(data.get("recording_url")),
        hangup_by=_text(data.get("hangup_by")),
    )
