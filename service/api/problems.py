"""Errors as HTTP: the status of each domain error code and the RFC 9457 problem+json rendering of every error."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin

from service.broker.errors import DomainError, InvalidRequest

log = structlog.get_logger("service.api.problems")

PROBLEM_BASE = "https://masking.dev/problems/"


# Every guarded route can answer these (bad body, key, scope, id, size, rate, database down).
API_ERRORS = (400, 401, 403, 404, 405, 409, 413, 422, 429, 503)
PUBLIC_ERRORS = (400, 404, 405, 413, 422, 503)


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """The RFC 9457 body of every error (documented in OpenAPI; extra members vary by code)."""

    type: str
    title: str
    status: int
    detail: str
    code: str


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI response entries for the error statuses a route can answer."""
    return {
        status: ResponseSpec(
            data_container=Problem, media_type="application/problem+json", description="Problem details"
        )
        for status in statuses
    }


API_RESPONSES = problem_responses(*API_ERRORS)
PUBLIC_RESPONSES = problem_responses(*PUBLIC_ERRORS)


# The HTTP status of each domain error code: the one place where the domain meets HTTP. Total by test
# (tests/test_http_errors.py walks every DomainError): a code missing here is a bug, never a silent 400.
STATUS: Final[Mapping[str, int]] = {
    "invalid_request": 422,
    "invalid_phone_number": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "no_session": 404,
    "pool_exhausted": 409,
    "session_not_active": 409,
    "call_in_progress": 409,
    "reassign_conflict": 409,
    "conflicting_repeat": 409,
    "did_taken": 409,
    "did_in_use": 409,
    "idempotency_in_flight": 409,
    "too_many_pools": 409,
    "too_many_webhooks": 409,
    "recording_unavailable": 404,  # 410 for a deleted one (RecordingDeleted)
    "recording_not_allowed": 422,
    "rate_limited": 429,
    "link_expired": 410,
    "provider_rejected": 502,
    "provider_unavailable": 503,
    "database_unavailable": 503,
    "request_timeout": 408,
    "provider_timeout": 504,
    "forbidden_address": 422,
}


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> ProblemDetailsException:
    """Build the one problem+json shape every error of the service takes."""
    return ProblemDetailsException(
        status_code=status,
        type_=PROBLEM_BASE + code,
        title=title,
        detail=detail,
        extra={"code": code, **extra},
    )


def _from_domain(exc: DomainError) -> ProblemDetailsException:
    status = 410 if getattr(exc, "gone", False) else STATUS[exc.code]
    result = problem(status, exc.code, exc.title, exc.detail, **exc.extra)
    if "retry_after" in exc.extra:
        result.headers = {"Retry-After": str(exc.extra["retry_after"])}
    return result


_HTTP_CODES = {
    400: ("invalid_request", "Invalid request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Request body too large"),
    429: ("rate_limited", "Rate limited"),
}


def _field_of(key: str, message: str) -> str:
    if path := re.search(r"`\$\.([^`]+)`", message):
        return path.group(1)
    if key == "data" and (named := re.search(r"field `([^`]+)`", message)):
        return named.group(1)
    return "body" if key == "data" else key


def _from_http(exc: HTTPException) -> ProblemDetailsException:
    if isinstance(exc, ValidationException):
        errors = exc.extra if isinstance(exc.extra, list) else []
        fields = [
            {
                "field": _field_of(str(e.get("key", "")), str(e.get("message", ""))),
                "source": e.get("source"),
                "message": e.get("message"),
            }
            for e in errors
            if isinstance(e, dict)
        ]
        if fields:
            first = fields[0]
            where = "the request body" if first["field"] == "body" else f"`{first['field']}`"
            detail = f"{where}: {first['message']}."
            return problem(422, "invalid_request", "Invalid request", detail, errors=fields)
        return problem(400, "invalid_request", "Invalid request", f"{exc.detail}. Send a valid JSON body.")
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    details = {
        404: "No such resource: check the path and the id.",
        405: "This route does not accept that method.",
        413: "The request body is larger than this route accepts (64 KiB; 1 MiB for bulk DID uploads).",
    }
    detail = details.get(exc.status_code, str(exc.detail))
    if exc.status_code == 400:
        detail = f"{exc.detail}. Send a valid JSON body."
    result = problem(exc.status_code, code, title, detail)
    result.headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 413:
        # The unread body is left on the connection: tell the client to open a new one (granian, unlike
        # uvicorn, would otherwise close it silently and fail the client's next request on it).
        result.headers = {**(result.headers or {}), "connection": "close"}
    return result


def unstorable() -> InvalidRequest:
    """The 422 of a value PostgreSQL refuses outright (a NUL or invalid character): the input's fault."""
    return InvalidRequest("A value in the request cannot be stored (it contains a NUL or invalid character).")


def problem_response(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    """Render a domain error outside the plugin's handlers."""
    return _from_domain(exc).to_response(request)


def _internal(scope: Mapping[str, Any], exc: Exception) -> ProblemDetailsException:
    log.exception("unhandled_error", method=scope.get("method"), path=scope.get("path"), error=type(exc).__name__)
    return problem(
        500,
        "internal_error",
        "Internal error",
        "Something went wrong on our side; retry later and quote the request id if it persists.",
        request_id=scope.get("state", {}).get("request_id"),
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Log an unexpected exception with the request id and answer 500 with no internals."""
    return _internal(request.scope, exc).to_response(request)


def _message(p: ProblemDetailsException) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    # The body Litestar's ProblemDetailsException.to_response() builds, for the routes served below Litestar.
    body = {"status": p.status_code, "type": p.type_, "title": p.title, "detail": p.detail}
    body.update(p.extra if isinstance(p.extra, Mapping) else {})
    headers = [(b"content-type", b"application/problem+json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (p.headers or {}).items()]
    return p.status_code, headers, msgspec.json.encode(body)


def problem_message(exc: DomainError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A domain error as (status, headers, problem+json body), for routes served below Litestar (api/fast.py)."""
    return _message(_from_domain(exc))


def internal_error(scope: Mapping[str, Any], exc: Exception) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """internal_error_handler's log line and 500 answer, for routes served below Litestar."""
    return _message(_internal(scope, exc))


def too_deep_handler(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """A JSON body nested past the decoder's depth limit is the client's error (400), any other recursion a bug."""
    # msgspec raises RecursionError("maximum recursion depth exceeded while deserializing an object").
    if "deserializing" not in str(exc):
        return internal_error_handler(request, exc)
    return problem(
        400,
        "invalid_request",
        "Invalid request",
        "The JSON body is nested too deeply to be decoded; send a valid JSON body of the documented shape.",
    ).to_response(request)


def problem_details_plugin() -> ProblemDetailsPlugin:
    """The Litestar plugin that renders domain and HTTP errors as problem+json."""
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={DomainError: _from_domain, HTTPException: _from_http},
        )
    )
