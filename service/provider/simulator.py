"""A thundersms stand-in: answers click-to-calls as the provider does and posts realistic reports back."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import uuid
from collections import deque
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from litestar.types import Receive, Scope, Send

log = structlog.get_logger("service.simulator")

Answering = Literal["ok", "reject", "http_500", "hang", "drop"]
Reporting = Literal["answered", "missed", "busy", "none", "duplicate", "before_answer"]
REQUIRED = ("bridge", "from", "to")
PER_PAGE = 15  # the call log's page size in the provider's example
PULSE_SECONDS = 30
PULSE_CHARGE = Decimal("0.0150")
_RANGE_DAY = "%b %d, %Y"
DROP_HEADER = "x-simulator-drop"
HANG_SECONDS = 120  # longer than any client timeout; bounded so a stuck test still ends
# A recording's size: 2,000 bytes per second of conversation (16 kbit/s audio); served in chunks of this size.
RECORDING_BYTES_PER_SECOND = 2000
RECORDING_CHUNK = 16 * 1024
C2C_PATH = "/api/v2/voice/c2c"
_RECORDING_NAME = re.compile(r"[0-9a-f-]{1,64}-(\d{1,5})s\.mp3")
_ONE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


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
        self.recording_sends: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def inject(self, fault: Fault) -> None:
        """Apply this fault to the next `count` clicks."""
        self.faults.append(fault)

    def _next_fault(self) -> Fault:
        if not self.faults:
            return Fault()
        fault = self.faults[0]
        fault.count -= 1
        if fault.count <= 0:
            self.faults.popleft()
        return fault

    def report_for(self, click: dict[str, Any], outcome: Reporting, placed: datetime | None = None) -> dict[str, Any]:
        """A report shaped like the provider's example: numbers unquoted, times in its zone.

        Its times tell the call from when it was placed (default now): it starts on the next whole second and
        the report is dated at its end. It is posted after `delay`, sooner than a real call would end.
        """
        placed = (placed or datetime.now(self.zone)).astimezone(self.zone)
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
            "recording_url": self._record(click, billing) if talked and str(click.get("record")) == "1" else "",
            "hangup_by": random.choice(["caller", "agent"]) if talked else "",
        }
        if click.get("webhook_id"):
            report["webhook_id"] = click["webhook_id"]
        if self.send_mid and click.get("mid"):
            report["mid"] = click["mid"]
        return report

    def _record(self, click: dict[str, Any], seconds: int) -> str:
        """Keep a recording of this conversation; its URL (under the simulator's own address)."""
        # Its length is in its name, so any process of a several-worker service serves it (no shared memory).
        name = f"{click.get('mid') or uuid.uuid4()}-{seconds}s.mp3"
        self.recordings[name] = seconds * RECORDING_BYTES_PER_SECOND
        return f"{self.base_url}/recordings/{name}"

    def serve_recording(self, name: str, headers: dict[str, str]) -> Response[Any]:
        """GET recordings/<name>: the recording's bytes (recording_bytes), a single Range honoured (206 or 416)."""
        byte_range = headers.get("range")
        self.recording_requests.append(
            {"name": name, "range": byte_range, "authorization": headers.get("authorization")}
        )
        known = _RECORDING_NAME.fullmatch(name)
        size = int(known.group(1)) * RECORDING_BYTES_PER_SECOND if known else None
        if not size:
            return Response({"status": 404, "message": "Not found"}, status_code=404)
        first, last, status = 0, size - 1, 200
        if byte_range and (match := _ONE_RANGE.fullmatch(byte_range.strip())):
            start, end = match.groups()
            if start:
                first, last = int(start), min(int(end), size - 1) if end else size - 1
            elif end:
                first = max(0, size - int(end))
            if not (start or end) or first > last or first >= size:
                return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        out = {"Accept-Ranges": "bytes", "Content-Length": str(last - first + 1)}
        if status == 206:
            out["Content-Range"] = f"bytes {first}-{last}/{size}"

        async def body() -> Any:
            sent = 0
            try:
                for at in range(first, last + 1, RECORDING_CHUNK):
                    if at > first and self.recording_gate is not None:
                        await self.recording_gate.wait()
                    chunk = recording_bytes(name, at, min(at + RECORDING_CHUNK, last + 1))
                    yield chunk
                    sent += len(chunk)
            finally:
                self.recording_sends.append(sent)  # bytes sent before the body ended (or the client left)

        return Stream(body(), status_code=status, media_type=self.recording_type, headers=out)

    async def post_report(self, report: dict[str, Any]) -> None:
        """Deliver a report to the callback URL, as the provider does (retrying a few times on failure)."""
        assert self.http is not None
        for _ in range(5):
            try:
                response = await self.http.post(self.callback_url, json=report, timeout=10)
                if response.status_code in (200, 202):
                    self.reports_sent.append(report)
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        log.warning("simulator_report_undelivered")

    def _later(self, report: dict[str, Any], copies: int) -> None:
        async def deliver() -> None:
            await asyncio.sleep(self.delay)
            for _ in range(copies):
                await self.post_report(report)

        task = asyncio.create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle_click(self, request: Request[Any, Any, Any]) -> Response[Any]:
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
        placed = datetime.now(self.zone)
        url = str(request.url).split("?", 1)[0]
        if not self.base_url and url.endswith(C2C_PATH):  # standalone: recordings are served where clicks come in
            self.base_url = url[: -len(C2C_PATH)]
        self.requests.append(click)
        self.headers.append(dict(request.headers))
        fault = self._next_fault()
        if fault.answer_after:
            await asyncio.sleep(fault.answer_after)
        if fault.answer == "hang":
            await asyncio.sleep(HANG_SECONDS)
        if fault.answer == "reject":
            return Response({"status": 400, "message": fault.message}, status_code=200)
        if fault.answer == "http_500":
            return Response({"status": 500, "message": "Internal Server Error"}, status_code=500)
        report = self.report_for(click, fault.report, placed)
        if fault.report != "none":
            self.call_log.append(log_row(report, click))
        if fault.report != "none" and random.random() < self.lose_callbacks:
            self.lost.append(report)
        elif fault.report == "before_answer":
            await self.post_report(report)
        elif fault.report != "none":
            self._later(report, 3 if fault.report == "duplicate" else 1)
        if fault.answer == "drop":
            return Response({"status": 200}, status_code=200, headers={DROP_HEADER: "1"})
        return Response({"status": 200, "message": "Call initiated successfully"}, status_code=200)

    def log_page(self, params: dict[str, str]) -> dict[str, Any]:
        """GET voice/calls: the rows whose end falls in `datetime[end_at]` (days in its zone), Laravel-paged."""
        rows = self.call_log
        if params.get("datetime[end_at]"):
            first, last = (
                datetime.strptime(d.strip(), _RANGE_DAY).date() for d in params["datetime[end_at]"].split(" - ")
            )
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

    async def close(self) -> None:
        """Stop pending report deliveries."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def recording_bytes(name: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of the simulator's recording of that name: the same every time, different per name."""
    seed = hashlib.sha256(name.encode()).digest()[0]
    return bytes((seed + i * 7 + i // 251) % 256 for i in range(start, end))


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


class _DropConnection(Exception):
    """Raised after the provider has acted, to make the server cut the connection without an answer."""


def simulator_app(sim: Simulator) -> Any:
    """The simulator as an ASGI app: the provider's route, plus /_sim routes for faults and inspection."""

    @post("/api/v2/voice/c2c", status_code=200)
    async def c2c(request: Request[Any, Any, Any]) -> Response[Any]:
        return await sim.handle_click(request)

    @get("/api/v2/voice/calls")
    async def calls(request: Request[Any, Any, Any]) -> Response[Any]:
        params = dict(request.query_params)
        bearer = request.headers.get("authorization", "").startswith("Bearer ")
        if not bearer and not params.get("access_token"):
            return Response({"status": 401, "message": "Unauthenticated"}, status_code=401)
        page = sim.log_page(params)
        page["data"]["data"] = [{k: v for k, v in row.items() if k != "mid"} for row in page["data"]["data"]]
        return Response(page)

    @get("/recordings/{name:str}")
    async def recording(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        return sim.serve_recording(name, dict(request.headers))

    @get("/_sim/call-log")
    async def truth() -> list[dict[str, Any]]:
        return sim.call_log

    @post("/_sim/faults", status_code=204)
    async def faults(data: JSONBody[Fault]) -> None:
        if data.lose_callbacks is not None:
            sim.lose_callbacks = data.lose_callbacks
        else:
            sim.inject(data)

    @post("/_sim/settings", status_code=204)
    async def settings(data: JSONBody[SimSettings]) -> None:
        sim.send_mid = data.send_mid

    @get("/_sim/requests")
    async def requests() -> list[dict[str, Any]]:
        return sim.requests

    async def lifespan_http(app: Litestar) -> Any:
        sim.http = httpx.AsyncClient()

    async def close_http(app: Litestar) -> None:
        await sim.close()
        if sim.http is not None:
            await sim.http.aclose()

    app = Litestar(
        [c2c, calls, recording, truth, faults, settings, requests],
        on_startup=[lifespan_http],
        on_shutdown=[close_http],
        openapi_config=None,
        logging_config=None,
    )

    async def dropping(scope: Scope, receive: Receive, send: Send) -> None:
        dropped = False

        async def cut(message: Any) -> None:
            # An answer marked for dropping is started but never completed: the client sees the
            # connection cut mid-response, after the provider has acted on the request.
            nonlocal dropped
            if message["type"] == "http.response.start" and (DROP_HEADER.encode(), b"1") in message["headers"]:
                dropped = True
                message = {**message, "headers": [(b"content-length", b"100")]}
            elif dropped:
                raise _DropConnection
            await send(message)

        try:
            await app(scope, receive, cut)
        except Exception:
            if not dropped:
                raise
            raise _DropConnection from None

    return dropping


def main(argv: list[str] | None = None) -> None:
    """Run the simulator on its own: `python -m service.provider.simulator --port 9000 --callback-url URL`."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="thundersms simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--callback-url", required=True, help="the service's callback URL, token included")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds before a report is posted")
    parser.add_argument("--timezone", default="Asia/Kolkata")
    parser.add_argument("--send-mid", action="store_true", help="echo each click's mid in its report")
    args = parser.parse_args(argv)
    sim = Simulator(args.callback_url, args.timezone, args.delay, args.send_mid)
    uvicorn.run(simulator_app(sim), host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
