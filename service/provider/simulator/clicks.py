"""The simulator's click-to-call: check the request as the provider documents it, then act out the next fault."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, Response

from service.provider.simulator.callbacks import post_later, post_report, report_for
from service.provider.simulator.calllog import log_row
from service.provider.simulator.state import Simulator

REQUIRED = ("bridge", "from", "to")
C2C_PATH = "/api/v2/voice/c2c"
DROP_HEADER = "x-simulator-drop"  # on an answer the app (app.py) starts and then cuts off
HANG_SECONDS = 120  # longer than any client timeout; bounded so a stuck test still ends


async def handle_click(sim: Simulator, request: Request[Any, Any, Any]) -> Response[Any]:
    """POST voice/c2c: check the request as the provider documents it, then act out the next fault."""
    try:
        click = msgspec.json.decode(await request.body())
    except msgspec.DecodeError:
        return Response({"status": 400, "message": "Invalid JSON"}, status_code=400)
    if not request.headers.get("authorization", "").startswith("Bearer "):
        return Response({"status": 401, "message": "Unauthenticated"}, status_code=401)
    if not isinstance(click, dict) or any(not click.get(k) for k in REQUIRED):
        return Response({"status": 422, "message": "bridge, from and to are mandatory"}, status_code=422)
    if str(click.get("record", "0")) not in ("0", "1"):
        return Response({"status": 422, "message": "record must be 0 or 1"}, status_code=422)
    placed = datetime.now(sim.zone)
    url = str(request.url).split("?", 1)[0]
    if not sim.base_url and url.endswith(C2C_PATH):  # standalone: recordings are served where clicks come in
        sim.base_url = url[: -len(C2C_PATH)]
    sim.requests.append(click)
    sim.headers.append(dict(request.headers))
    fault = sim.next_fault()
    if fault.answer_after:
        await asyncio.sleep(fault.answer_after)
    if fault.answer == "hang":
        await asyncio.sleep(HANG_SECONDS)
    if fault.answer == "reject":
        return Response({"status": 400, "message": fault.message}, status_code=200)
    if fault.answer == "http_500":
        return Response({"status": 500, "message": "Internal Server Error"}, status_code=500)
    report = report_for(sim, click, fault.report, placed)
    if fault.report != "none":
        sim.call_log.append(log_row(report, click))
    if fault.report != "none" and random.random() < sim.lose_callbacks:
        sim.lost.append(report)
    elif fault.report == "before_answer":
        await post_report(sim, report)
    elif fault.report != "none":
        post_later(sim, report, 3 if fault.report == "duplicate" else 1)
    if fault.answer == "drop":
        return Response({"status": 200}, status_code=200, headers={DROP_HEADER: "1"})
    return Response({"status": 200, "message": "Call initiated successfully"}, status_code=200)
