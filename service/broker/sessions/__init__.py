"""Masking sessions, one module per job: create (allocation), change (TTL, reassignment), end (close, expiry), read.

Their request bodies are in broker/bodies.py, named here too for the callers of the package.
"""

from service.broker.bodies import CreateSession, ExpireFilter, Ttl
from service.broker.sessions.base import Clock, Rules, live_view
from service.broker.sessions.change import Reassign, change_ttl, reassign
from service.broker.sessions.create import create_session
from service.broker.sessions.end import close_session, expire_sessions
from service.broker.sessions.read import Page, get_session, list_sessions

__all__ = [
    "Clock",
    "CreateSession",
    "ExpireFilter",
    "Page",
    "Reassign",
    "Rules",
    "Ttl",
    "change_ttl",
    "close_session",
    "create_session",
    "expire_sessions",
    "get_session",
    "list_sessions",
    "live_view",
    "reassign",
]
