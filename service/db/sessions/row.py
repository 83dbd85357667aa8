"""The one definition of a session in SQL: its columns and its JSON, both derived from models.Session.

Its party numbers are sealed (service/db/sealed.py): the SQL gives them as sealed text, and session()
opens them with the row's tenant.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.db import sealed
from service.models import Session

# The resource's fields whose column has another name; every other field is the column of its name.
_COLUMN_OF = {
    "masked_number": "did",
    **{p: sealed.sealed_text(f"{{a}}{p}_ct", f"{{a}}{p}_mask") for p in sealed.PARTIES},
}
FIELDS: tuple[str, ...] = tuple(f.name for f in msgspec.structs.fields(Session))


def columns(alias: str | None = None) -> str:
    """A session row's columns under the resource's field names (qualified by alias when given)."""
    prefix = f"{alias}." if alias else ""
    parts = [f"{prefix}tenant_id AS tenant_id"]
    for name in FIELDS:
        parts.append(f"{_column(name, prefix)} AS {name}")
    return ", ".join(parts)


def _column(name: str, prefix: str) -> str:
    column = _COLUMN_OF.get(name, name)
    return column.format(a=prefix) if "{a}" in column else prefix + column


def as_json(alias: str) -> str:
    """A session row (alias) as the JSON of the Session resource, for events built inside a statement."""
    pairs = ", ".join(f"'{name}', {_column(name, alias + '.')}" for name in FIELDS)
    return f"jsonb_build_object({pairs})"


# The columns of an unaliased session row (and its tenant_id, to open its numbers), for SELECT and RETURNING.
SESSION = columns()


def session(row: Any) -> Session:
    """A session row (with its tenant_id) as the resource, its numbers opened."""
    values = dict(row)
    tenant_id = values["tenant_id"]
    for party in sealed.PARTIES:
        values[party] = sealed.opened(tenant_id, sealed.label(party), values[party])
    return msgspec.convert(values, Session)


def session_or_none(row: Any) -> Session | None:
    """A session row as the resource, or None for no row."""
    return None if row is None else session(row)
