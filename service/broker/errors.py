"""Domain errors: a stable code, a title and a sentence a person can act on; no HTTP in sight."""

from __future__ import annotations

import uuid
from typing import Any


class DomainError(Exception):
    """A failure the caller can act on; subclasses fix the code and title (api/ maps codes to statuses)."""

    code = "invalid_request"
    title = "Invalid request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidRequest(DomainError):
    code, title = "invalid_request", "Invalid request"


class InvalidPhoneNumber(DomainError):
    code, title = "invalid_phone_number", "Invalid phone number"


class Unauthorized(DomainError):
    code, title = "unauthorized", "Unauthorized"


class Forbidden(DomainError):
    code, title = "forbidden", "Forbidden"


class NotFound(DomainError):
    code, title = "not_found", "Not found"


class PoolExhausted(DomainError):
    code, title = "pool_exhausted", "Pool exhausted"


class SessionNotActive(DomainError):
    code, title = "session_not_active", "Session not active"


class CallInProgress(DomainError):
    code, title = "call_in_progress", "Call in progress"


class ReassignConflict(DomainError):
    """The new pair may not keep the session's DID (the detail says why) and no new number was allowed."""

    code, title = "reassign_conflict", "Reassignment conflict"


class ConflictingRepeat(DomainError):
    """A repeated create whose other fields differ from the live session's (extra `fields` names them)."""

    code, title = "conflicting_repeat", "Conflicting repeat"


class DidTaken(DomainError):
    code, title = "did_taken", "DID owned by another tenant"


class DidInUse(DomainError):
    code, title = "did_in_use", "DID in use"


class IdempotencyConflict(DomainError):
    code, title = "idempotency_in_flight", "Request still in progress"


class ProviderRejected(DomainError):
    code, title = "provider_rejected", "Provider rejected the call"


class ProviderUnavailable(DomainError):
    code, title = "provider_unavailable", "Provider unavailable"


class ProviderTimeout(DomainError):
    code, title = "provider_timeout", "Provider timeout"


class RateLimited(DomainError):
    """Over a cap; `retry_after` (seconds) says when the next attempt can succeed."""

    code, title = "rate_limited", "Rate limited"


class NoSession(DomainError):
    code, title = "no_session", "No session"


class LinkExpired(DomainError):
    code, title = "link_expired", "Link expired"


class DatabaseUnavailable(DomainError):
    """The database cannot be reached or is failing over; `retry_after` (seconds) says when to try again."""

    code, title = "database_unavailable", "Database unavailable"

    def __init__(self, detail: str, retry_after: int = 2, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)


class TooManyPools(DomainError):
    code, title = "too_many_pools", "Too many pools"


class TooManyWebhooks(DomainError):
    code, title = "too_many_webhooks", "Too many webhook endpoints"


class RecordingUnavailable(DomainError):
    code, title = "recording_unavailable", "Recording unavailable"
    gone = False  # True: there was one, and its reference was destroyed (api/ answers 410 rather than 404)


class RecordingDeleted(RecordingUnavailable):
    gone = True


class RecordingNotAllowed(DomainError):
    code, title = "recording_not_allowed", "Recording not allowed"


class ForbiddenAddress(DomainError):
    code, title = "forbidden_address", "Forbidden address"


class RequestTimeout(DomainError):
    code, title = "request_timeout", "Request timeout"


def parse_id(value: str, what: str) -> uuid.UUID:
    """A resource id from a path; anything that is not a UUID is simply not found."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"No {what} with that id.") from None
