"""SQL for sessions and their DID bindings, one module per job: create, change, end, read (row: their one shape)."""

from service.db.sessions.change import (
    Blocker,
    Change,
    DidFit,
    PartyChange,
    bind_new,
    blockers,
    call_in_flight,
    did_fit,
    drop_placeholder,
    finish_reassign,
    lock_session,
    select_changes,
    update_expiry,
)
from service.db.sessions.create import ALLOCATE, Allocation, Attempt, Exhaustion, allocate, exhaustion, find_repeat
from service.db.sessions.end import close_session, end_sessions, expire_matching, sweep_expired
from service.db.sessions.read import RouteRow, select_route, select_session, select_sessions
from service.db.sessions.row import SESSION, as_json, columns

__all__ = [
    "ALLOCATE",
    "SESSION",
    "Allocation",
    "Attempt",
    "Blocker",
    "Change",
    "DidFit",
    "Exhaustion",
    "PartyChange",
    "RouteRow",
    "allocate",
    "as_json",
    "bind_new",
    "blockers",
    "call_in_flight",
    "close_session",
    "columns",
    "did_fit",
    "drop_placeholder",
    "end_sessions",
    "exhaustion",
    "expire_matching",
    "find_repeat",
    "finish_reassign",
    "lock_session",
    "select_changes",
    "select_route",
    "select_session",
    "select_sessions",
    "sweep_expired",
    "update_expiry",
]
