"""The audit log (rule 12): who did which ops action to what, written in the action's transaction, and read back.

The retention purge is a sweep (broker/sweeps.py: purge_audit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Literal, get_args

import msgspec

from service.broker.errors import InvalidRequest
from service.db import Conn
from service.db import audit as q
from service.logging import scrub

Action = Literal[
    "console.sign_in",
    "console.sign_out",
    "session.reveal",
    "session.close",
    "sessions.expire",
    "did.add",
    "did.drain",
    "did.retire",
    "pool.update",
    "webhook.create",
    "webhook.update",
    "webhook.rotate_secret",
    "webhook.delete",
    "event.redeliver",
    "call_link.create",
    "recording.access",
    "recording.delete",
    "erasure",
    "keys.rotate",
    "keys.reindex",
    "key.revoke",
    "webhook.test",
    "console.sign_in_failed",
]
ACTIONS: tuple[str, ...] = get_args(Action)
# Actions a person must say why they took (the console's Reveal asks for a short reason).
REASON_REQUIRED = frozenset({"session.reveal"})
MAX_REASON = 500
MAX_LIMIT = 200


# A DID's new status as the audit log names its change; re-activating (or moving pools) is not a contract action.
DID_STATUS_ACTIONS: dict[str, Action] = {"draining": "did.drain", "retired": "did.retire"}


class Actor(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who acted, exactly one of: an API key (id and name), the console session of a key, a command-line user, one
    of the service's own jobs, an unidentified client.

    Rendered as the contract's `{"key_id", "key_name"}` or `{"console_session_of": key_id}`; a command-line
    action (no key involved) as `{"command_line": "user@host"}`; what the service does by itself (the recording
    retention sweep) as `{"system": "retention"}`; a client nobody could identify (a failed console sign-in:
    the key it tried is no identity, and nothing of it is kept) as `{"anonymous": "console"}`.
    """

    key_id: str | None = None
    key_name: str | None = None
    console_session_of: str | None = None
    command_line: str | None = None
    system: str | None = None
    anonymous: str | None = None

    @classmethod
    def api_key(cls, key_id: str, key_name: str) -> Actor:
        """A request made with an API key."""
        return cls(key_id=key_id, key_name=key_name)

    @classmethod
    def console(cls, key_id: str) -> Actor:
        """A console page used by whoever signed in with this key."""
        return cls(console_session_of=key_id)

    @classmethod
    def cli(cls, who: str) -> Actor:
        """A `masking` command run by this operating-system user (user@host)."""
        return cls(command_line=who)

    @classmethod
    def service(cls, job: str) -> Actor:
        """The service itself, acting on a setting through one of its background jobs (e.g. retention)."""
        return cls(system=job)

    @classmethod
    def unidentified(cls, where: str) -> Actor:
        """A client that did not say who it is, through this door (console)."""
        return cls(anonymous=where)

    def stored(self) -> tuple[str, str, str | None]:
        """(kind, id, name) as the audit_log columns hold them."""
        given: list[tuple[str, str]] = []
        for kind, value in (
            ("api_key", self.key_id),
            ("console", self.console_session_of),
            ("command_line", self.command_line),
            ("system", self.system),
            ("anonymous", self.anonymous),
        ):
            if value is not None:
                given.append((kind, value))
        if len(given) != 1 or (self.key_name is not None and given[0][0] != "api_key"):
            raise ValueError(
                "an Actor is exactly one of: an API key, a console session, a command-line user, a service job, "
                "an unidentified client"
            )
        kind, actor_id = given[0]
        return kind, actor_id, self.key_name if kind == "api_key" else None


class Target(msgspec.Struct, frozen=True):
    """What an action was done to: a type (session, did, pool, webhook, event, call, number...) and its id."""

    type: str
    id: str


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One ops action as GET /v1/audit shows it."""

    id: str
    at: datetime
    tenant_id: int | None
    actor: Actor
    action: str
    target: Target | None
    reason: str | None
    client_address: str | None
    request_id: str | None


class AuditPage(msgspec.Struct, frozen=True):
    """A page of audit entries, oldest first; next_cursor resumes after the last one (or where you were)."""

    items: list[AuditEntry]
    next_cursor: str | None


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Who is acting, for which tenant, from where: built once per request, handed down to the audited action."""

    tenant_id: int | None
    actor: Actor
    client_address: str | None = None
    request_id: str | None = None

    async def record(
        self, conn: Conn, action: Action, target: Target | None, now: datetime, reason: str | None = None
    ) -> int:
        """record() this context's action, in the caller's transaction."""
        return await record(
            conn, self.tenant_id, self.actor, action, target, reason, self.client_address, self.request_id, now
        )


async def record(
    conn: Conn,
    tenant_id: int | None,
    actor: Actor,
    action: Action,
    target: Target | None,
    reason: str | None,
    client_address: str | None,
    request_id: str | None,
    now: datetime,
) -> int:
    """Write one audit row in the caller's transaction (it commits or rolls back with the action); its id.

    tenant_id is the tenant acted for (None only for a service-wide action such as keys.rotate, or when it is not
    known: a failed console sign-in).
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    # Free text may hold what must not rest in clear (rule 11): a party number is kept masked, a key dropped.
    reason = scrub((reason or "").strip()) or None
    if reason is None and action in REASON_REQUIRED:
        raise InvalidRequest(
            "Say in a few words why you need this (the reason is kept in the audit log).", field="reason"
        )
    if reason is not None and len(reason) > MAX_REASON:
        raise InvalidRequest(f"Keep the reason under {MAX_REASON} characters.", field="reason")
    kind, actor_id, actor_name = actor.stored()
    return await q.insert(
        conn,
        q.NewAuditRow(
            at=now,
            tenant_id=tenant_id,
            actor_kind=kind,
            actor_id=actor_id[:128],
            actor_name=actor_name[:128] if actor_name else None,
            action=action,
            target_type=target.type[:64] if target else None,
            target_id=_target_id(target),
            reason=reason,
            client_address=client_address[:64] if client_address else None,
            request_id=request_id[:64] if request_id else None,
        ),
    )


def _target_id(target: Target | None) -> str | None:
    if target is None:
        return None
    # DIDs are the tenant's published numbers and stay in clear; any other number-like id is masked.
    return (target.id if target.type == "did" else scrub(target.id))[:256]


def render(row: q.AuditRow) -> AuditEntry:
    """A stored row as the API shows it."""
    match row.actor_kind:
        case "api_key":
            actor = Actor.api_key(row.actor_id, row.actor_name or "")
        case "console":
            actor = Actor.console(row.actor_id)
        case "system":
            actor = Actor.service(row.actor_id)
        case "anonymous":
            actor = Actor.unidentified(row.actor_id)
        case _:
            actor = Actor.cli(row.actor_id)
    target = Target(row.target_type, row.target_id or "") if row.target_type else None
    return AuditEntry(
        id=f"aud_{row.id}",
        at=row.at,
        tenant_id=row.tenant_id,
        actor=actor,
        action=row.action,
        target=target,
        reason=row.reason,
        client_address=row.client_address,
        request_id=row.request_id,
    )


def _cursor(row: q.AuditRow) -> str:
    return f"{row.txid}.{row.id}"


def _parse_cursor(cursor: str) -> tuple[str, int]:
    txid, _, number = cursor.partition(".")
    if not (cursor.isascii() and txid.isdigit() and number.isdigit() and len(cursor) < 48):
        raise InvalidRequest("`after` is not a cursor this service gave out; start again without it.", field="after")
    return txid, int(number)


async def page(
    conn: Conn, tenant_id: int, after: str | None, action: str | None, actor: str | None, limit: int
) -> AuditPage:
    """The tenant's audit entries oldest first after a cursor, optionally only one action's or one actor's."""
    if action is not None and action not in ACTIONS:
        raise InvalidRequest(f"`action` must be one of: {', '.join(ACTIONS)}.", field="action")
    if actor is not None and not 1 <= len(actor) <= 128:
        raise InvalidRequest(
            "`actor` is a key id (as an entry's actor shows it), a command-line user or a service job (retention), "
            "up to 128 characters.",
            field="actor",
        )
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"`limit` must be between 1 and {MAX_LIMIT}.", field="limit")
    rows = await q.select_page(conn, tenant_id, action, actor, _parse_cursor(after) if after else None, limit)
    return AuditPage([render(r) for r in rows], _cursor(rows[-1]) if rows else after)


async def newest(conn: Conn, tenant_id: int, action: str | None, before: str | None, limit: int) -> AuditPage:
    """The tenant's audit entries newest first before a cursor (None: the newest); next_cursor pages to older ones."""
    if action is not None and action not in ACTIONS:
        raise InvalidRequest(f"`action` must be one of: {', '.join(ACTIONS)}.", field="action")
    rows = await q.select_newest(conn, tenant_id, action, _parse_cursor(before) if before else None, limit + 1)
    more = len(rows) > limit
    return AuditPage([render(r) for r in rows[:limit]], _cursor(rows[limit - 1]) if more else None)


async def since(
    conn: Conn, tenant_id: int | None, start: datetime, action: str | None, batch: int = MAX_LIMIT
) -> AsyncIterator[AuditEntry]:
    """The tenant's audit entries (None: those of no tenant) at or after `start`, oldest first, a batch at a time."""
    if action is not None and action not in ACTIONS:
        raise InvalidRequest(f"`action` must be one of: {', '.join(ACTIONS)}.", field="action")
    after = (start, 0)  # ids start at 1: (at, id) > (start, 0) keeps every row at start or later
    while True:
        rows = await q.select_since(conn, tenant_id, action, after, batch)
        for row in rows:
            yield render(row)
        if len(rows) < batch:
            return
        after = (rows[-1].at, rows[-1].id)
