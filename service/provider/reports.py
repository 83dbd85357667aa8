"""The provider's callback report on the wire: read leniently into the fields the service uses, and keyed."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

# What PostgreSQL stores as integer; a larger duration or billing is not a real one.
_INT_MAX = 2**31 - 1
# Report times outside these years are not a call this service placed (0001-01-01 is a null in disguise).
_YEARS = range(2000, 9000)
# The provider's local times, "%Y-%m-%d %H:%M:%S" read as strptime reads it (its own patterns for each field).
_TIME = re.compile(
    r"(\d\d\d\d)-(1[0-2]|0[1-9]|[1-9])-(3[01]|[12]\d|0[1-9]|[1-9]| [1-9])"
    r"\s+(2[0-3]|[0-1]\d|\d):([0-5]\d|\d):(6[0-1]|[0-5]\d|\d)"
)


class ParsedReport(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a provider report that the service uses, normalized; a value that cannot be stored is None."""

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
    # When the provider sent it (`unixtime`, `date`): not part of what the report says, so not part of its key.
    sent_at: datetime | None = None
    dated_at: datetime | None = None

    @property
    def call_status(self) -> str:
        """The call status the report gives: completed when the parties talked (billing > 0), else missed."""
        return "completed" if (self.billing_seconds or 0) > 0 else "missed"

    def times(self) -> list[datetime]:
        """The times that place the conversation, for checking against the call and the clock.

        The conversation's own start and end decide; when it was sent (`unixtime`, `date`) counts only when
        both are missing: the provider's own example carries a `unixtime` a year after its `date`.
        """
        own = [t for t in (self.started_at, self.ended_at) if t is not None]
        return own or [t for t in (self.sent_at, self.dated_at) if t is not None]


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()[:512]
    if not text or "\x00" in text:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800: PostgreSQL cannot store it
        return None
    return text


def _number(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if text.startswith("flow:"):
        return text
    digits = text.removeprefix("+")
    return "+" + digits if digits.isascii() and digits.isdigit() and 6 <= len(digits) <= 15 else None


def _float(value: Any) -> float | None:
    text = _text(value)
    try:
        number = float(text) if text is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    if number is None or not 0 <= number <= _INT_MAX:
        return None if number is None or number > _INT_MAX else 0
    return int(number)


def _time(value: Any, zone: ZoneInfo) -> datetime | None:
    text = _text(value)
    # What strptime(text, "%Y-%m-%d %H:%M:%S") accepts, read without it: strptime was a third of a report's parsing.
    fields = _TIME.fullmatch(text) if text else None
    try:
        if fields is None:
            local = None
        else:
            year, month, day, hour, minute, second = (int(f) for f in fields.groups())
            local = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    if local is None or local.year not in _YEARS:
        return None
    return local.replace(tzinfo=zone).astimezone(UTC)


def _unixtime(value: Any) -> datetime | None:
    number = _float(value)
    if number is None:
        return None
    try:
        sent = datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return sent if sent.year in _YEARS else None


def parse_report(body: bytes, zone: ZoneInfo) -> ParsedReport | None:
    """Read a report leniently (strings or numbers, empty fields); None when it names no call."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        # msgspec refuses a lone surrogate escape (\ud800) that the stdlib reads; that field alone is then dropped.
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None
    except (UnicodeDecodeError, RecursionError):
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
        sent_at=_unixtime(data.get("unixtime")),
        dated_at=_time(data.get("date"), zone),
    )


def report_key(report: ParsedReport) -> bytes:
    """The report's identity: a SHA-256 of every normalized field it reports, but not of when it was sent.

    The same body, a re-send with a new `date`/`unixtime`, or the same facts spelled differently
    (numbers as strings, another key order) share one key, so a copy is a duplicate whatever came since.
    """
    facts = msgspec.structs.replace(report, sent_at=None, dated_at=None)
    return hashlib.sha256(msgspec.json.encode(facts)).digest()
