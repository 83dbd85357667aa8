"""The one definition of a session in SQL: its columns and its JSON, both derived from models.Session."""

from __future__ import annotations

from typing import Any

import msgspec

from service.models import Session

# The resource's fields whose column has another name; every other field is the column of its name.
_COLUMN_OF = {"masked_number": "did"}
FIELDS: tuple[str, ...] = tuple(f.name for f in msgspec.structs.fields(Session))


def columns(alias: str | None = None) -> str:
    """A session row's columns under the resource's field names (qualified by alias when given)."""
    prefix = f"{alias}." if alias else ""
    parts = []
    for name in FIELDS:
        column = _COLUMN_OF.get(name, name)
        parts.append(f"{prefix}{column}" + (f" AS {name}" if column != name else ""))
    return ", ".join(parts)


def as_json(alias: str) -> str:
    """A session row (alias) as the JSON of the Session resource, for events built inside a statement."""
    pairs = ", ".join(f"'{name}', {alias}.{_COLUMN_OF.get(name, name)}" for name in FIELDS)
    return f"jsonb_build_object({pairs})"


# The columns of an unaliased session row, for SELECT and RETURNING.
SESSION = columns()


def session(row: Any) -> Session:
    """A session row as the resource."""
    return msgspec.convert(row, Session)


def session_or_none(row: Any) -> Session | None:
    """A session row as the resource, or None for no row."""
    return None if row is None else msgspec.convert(row, Session)
