"""The simulator's reports: shaped like the provider's example and posted to the service's callback URL."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog

from service.provider.simulator.recordings import keep_recording
from service.provider.simulator.state import Reporting, Simulator

log = structlog.get_logger("service.simulator")


def report_for(
    sim: Simulator, click: dict[str, Any], outcome: Reporting, placed: datetime | None = None
) -> dict[str, Any]:
    """A report shaped like the provider's example: numbers unquoted, times in its zone.

    Its times tell the call from when it was placed (default now): it starts on the next whole second and
    the report is dated at its end. It is posted after `delay`, sooner than a real call would end.
    """
    placed = (placed or datetime.now(sim.zone)).astimezone(sim.zone)
    start = placed.replace(microsecond=0) + timedelta(seconds=1)
    talked = outcome in ("answered", "duplicate", "before_answer")
    billing = random.randint(5, 120) if talked else 0
    duration = billing + random.randint(3, 15) if outcome != "busy" else 0
    end = start + timedelta(seconds=duration)
    statuses = {
        True: ("COMPLETED", "ANSWER", "ANSWER"),
        False: ("NOANSWER", "ANSWER", "NOANSWER") if outcome == "missed" else ("BUSY", "BUSY", ""),
    }[talked]
    fmt = "%Y-%m-%d %H:%M:%S"
    report: dict[str, Any] = {
        "bridge": int(click["bridge"]) if str(click["bridge"]).isdigit() else click["bridge"],
        "from": int(click["from"]) if str(click["from"]).isdigit() else click["from"],
        "to": int(click["to"]) if str(click["to"]).isdigit() else click["to"],
        "source": "C2C",
        "start_at": start.strftime(fmt),
        "end_at": end.strftime(fmt),
        "date": end.strftime(fmt),
        "unixtime": str(int(end.timestamp())),
        "duration": str(duration),
        "billing": str(billing),
        "status": statuses[0],
        "status1": statuses[1],
        "status2": statuses[2],
        "recording_url": keep_recording(sim, click, billing) if talked and str(click.get("record")) == "1" else "",
        "hangup_by": random.choice(["caller", "agent"]) if talked else "",
    }
    if click.get("webhook_id"):
        report["webhook_id"] = click["webhook_id"]
    if sim.send_mid and click.get("mid"):
        report["mid"] = click["mid"]
    return report


async def post_report(sim: Simulator, report: dict[str, Any]) -> None:
    """Deliver a report to the callback URL, as the provider does (retrying a few times on failure)."""
    assert sim.http is not None
    for _ in range(5):
        try:
            response = await sim.http.post(sim.callback_url, json=report, timeout=10)
            if response.status_code in (200, 202):
                sim.reports_sent.append(report)
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    log.warning("simulator_report_undelivered")


def post_later(sim: Simulator, report: dict[str, Any], copies: int) -> None:
    """Post `copies` of the report after the simulator's delay, in the background."""

    async def deliver() -> None:
        await asyncio.sleep(sim.delay)
        for _ in range(copies):
            await post_report(sim, report)

    sim.spawn(deliver())
