"""The simulator's call recordings: kept when a recorded call is reported, served with a single Range honoured."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from litestar import Response
from litestar.response import Stream

from service.provider.simulator.state import Simulator

# A recording's size: 2,000 bytes per second of conversation (16 kbit/s audio).
RECORDING_BYTES_PER_SECOND = 2000
_RECORDING_NAME = re.compile(r"[0-9a-f-]{1,64}-(\d{1,5})s\.mp3")
_ONE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def keep_recording(sim: Simulator, click: dict[str, Any], seconds: int) -> str:
    """Keep a recording of this conversation; its URL (under the simulator's own address)."""
    # Its length is in its name, so any process of a several-worker service serves it (no shared memory).
    name = f"{click.get('mid') or uuid.uuid4()}-{seconds}s.mp3"
    sim.recordings[name] = seconds * RECORDING_BYTES_PER_SECOND
    return f"{sim.base_url}/recordings/{name}"


def recording_bytes(name: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of the simulator's recording of that name: the same every time, different per name."""
    seed = hashlib.sha256(name.encode()).digest()[0]
    return bytes((seed + i * 7 + i // 251) % 256 for i in range(start, end))


def serve(sim: Simulator, name: str, headers: dict[str, str]) -> Response[Any]:
    """GET recordings/<name>: the recording's bytes (recording_bytes), a single Range honoured (206 or 416)."""
    byte_range = headers.get("range")
    sim.recording_requests.append({"name": name, "range": byte_range, "authorization": headers.get("authorization")})
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
            for at in range(first, last + 1, sim.recording_chunk):
                if at > first and sim.recording_gate is not None:
                    await sim.recording_gate.wait()
                chunk = recording_bytes(name, at, min(at + sim.recording_chunk, last + 1))
                yield chunk
                sent += len(chunk)
        finally:
            sim.recording_sends.append(sent)  # bytes sent before the body ended (or the client left)

    return Stream(body(), status_code=status, media_type=sim.recording_type, headers=out)
