"""The framework floor of the benchmark: a Litestar route answering a constant session-sized JSON object."""

from __future__ import annotations

import os

from litestar import Litestar, Response, get

# A session as the service encodes it (the same keys, numbers and length), made once.
BODY = (
    b'{"id":"0b9c4a8e-5d2f-4f6e-9a51-2f3c8d7e6b10","order_id":"load-123456","customer":"+919900123456",'
    b'"agent":"+918600123456","masked_number":"+918070001234","pool":"wide","status":"active",'
    b'"close_reason":null,"created_at":"2026-11-28T14:00:00.123456+00:00",'
    b'"expires_at":"2026-12-28T14:00:00.123456+00:00","closed_at":null,"record":false,'
    b'"max_call_minutes":null,"max_calls":null,"calls_made":0,"metadata":{}}'
)
KEY = os.environ.get("BENCH_FLOOR_KEY", "")


@get("/v1/sessions/{session_id:str}", sync_to_thread=False)
def read(session_id: str, headers: dict[str, str]) -> Response[bytes]:
    """The constant, after the same cheap check of the bearer header the service's guard starts with."""
    if headers.get("authorization", "") != f"Bearer {KEY}":
        return Response(b'{"code":"unauthorized"}', status_code=401, media_type="application/json")
    return Response(BODY, media_type="application/json")


@get("/readyz", sync_to_thread=False)
def ready() -> dict[str, str]:
    """Ready."""
    return {"status": "ok"}


app = Litestar([read, ready], openapi_config=None)
