"""The simulator's call log: a row per reported call, served Laravel-paged as the provider's logs API does."""

from __future__ import annotations

import math
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

PER_PAGE = 15  # the call log's page size in the provider's example
PULSE_SECONDS = 30
PULSE_CHARGE = Decimal("0.0150")
_RANGE_DAY = "%b %d, %Y"


def _day(local: str) -> date:
    return datetime.strptime(local, "%Y-%m-%d %H:%M:%S").date()


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def log_row(report: dict[str, Any], click: dict[str, Any]) -> dict[str, Any]:
    """The call-log row of a reported call, as the provider's logs API shows one (strings, HH:MM:SS)."""
    billing = int(report["billing"])
    pulses = math.ceil(billing / PULSE_SECONDS)
    return {
        "id": str(uuid.uuid4()),
        "call_from": str(report["from"]),
        "call_to": str(report["to"]),
        "bridge": str(report["bridge"]),
        "service": "IN",
        "status": report["status"],
        "duration": _hms(int(report["duration"])),
        "billing": _hms(billing),
        "pulsing": str(PULSE_SECONDS),
        "charges": str(PULSE_CHARGE * pulses),
        "start_at": report["start_at"],
        "end_at": report["end_at"],
        "hangup_by": report["hangup_by"] or None,
        "dtmf": None,
        "location": "IN",
        "region": "KA",
        "provider": "RJ",
        "notes": None,
        "name": None,
        "audio": report["recording_url"] or None,
        "mid": click.get("mid"),  # not on the provider's rows: removed before serving (the simulator's truth)
    }


def log_page(call_log: list[dict[str, Any]], params: dict[str, str]) -> dict[str, Any]:
    """GET voice/calls: the rows whose end falls in `datetime[end_at]` (days in its zone), Laravel-paged."""
    rows = call_log
    if params.get("datetime[end_at]"):
        first, last = (datetime.strptime(d.strip(), _RANGE_DAY).date() for d in params["datetime[end_at]"].split(" - "))
        rows = [r for r in rows if first <= _day(r["end_at"]) <= last]
    page = max(1, int(params.get("page") or 1))
    last_page = max(1, math.ceil(len(rows) / PER_PAGE))
    items = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
    path = "/api/v2/voice/calls"

    def url(n: int) -> str:
        return f"{path}?page={n}"

    return {
        "status": "OK",
        "data": {
            "current_page": page,
            "data": items,
            "first_page_url": url(1),
            "from": (page - 1) * PER_PAGE + 1 if items else None,
            "last_page": last_page,
            "last_page_url": url(last_page),
            "next_page_url": url(page + 1) if page < last_page else None,
            "path": path,
            "per_page": PER_PAGE,
            "prev_page_url": url(page - 1) if page > 1 else None,
            "to": (page - 1) * PER_PAGE + len(items) if items else None,
            "total": len(rows),
        },
    }
