"""SQL only, one module per aggregate; every function takes the connection first and returns typed rows."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asyncpg import Connection
from asyncpg.pool import PoolConnectionProxy

# A connection of our own or one lent by the pool: the data functions take either.
Conn = Connection | PoolConnectionProxy

_NAME = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class Query:
    """A statement written with :named parameters, turned once into asyncpg's $n and an argument order."""

    def __init__(self, sql: str) -> None:
        self.names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.names:
                self.names.append(name)
            return f"${self.names.index(name) + 1}"

        self.sql = _NAME.sub(number, sql)

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The arguments in $n order; a missing name raises KeyError naming it."""
        return [values[name] for name in self.names]


def load(path: Path, **fragments: str) -> Query:
    """A statement from its .sql file, each `{name}` in it replaced by the fragment of that name, loaded once.

    Fragments are the few pieces of SQL with one definition in Python (a session's columns, say).
    """
    sql = path.read_text()
    for name, text in fragments.items():
        marker = "{" + name + "}"
        if sql.count(marker) != 1:
            raise ValueError(f"{path.name} must hold {marker} once")
        sql = sql.replace(marker, text)
    return Query(sql)
