"""Applying schema.sql: idempotent, serialized across processes, recording the schema version."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from service.db import Conn

# Any fixed number: the advisory lock that makes concurrent migrations take turns.
_MIGRATION_LOCK = 7_305_118_422


def schema_sql() -> str:
    """The schema shipped inside the package (the checkout's copy in an editable install)."""
    packaged = resources.files("service").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "schema.sql").read_text(encoding="utf-8")


async def migrate(conn: Conn) -> int:
    """Apply the schema in one transaction under an advisory lock; return the schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(schema_sql())
        version: int = await conn.fetchval("SELECT max(version) FROM schema_version")
    return version
