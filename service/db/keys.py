"""SQL for data_keys: the data key ids a ciphertext in this database may name (keys themselves are never stored)."""

from __future__ import annotations

from service.db import Conn

REGISTER = "INSERT INTO data_keys (id) VALUES ($1) ON CONFLICT DO NOTHING"
LIST = "SELECT id FROM data_keys ORDER BY added_at, id"
FORGET = "DELETE FROM data_keys WHERE id <> ALL($1::text[])"


async def register(conn: Conn, key_id: str) -> None:
    """Record that ciphertexts under this data key may be written (before the first one is)."""
    await conn.execute(REGISTER, key_id)


async def listed(conn: Conn) -> list[str]:
    """Every data key id the database says its ciphertexts may name, oldest first."""
    return [r[0] for r in await conn.fetch(LIST)]


async def keep_only(conn: Conn, key_ids: list[str]) -> list[str]:
    """Forget every other key id (no ciphertext names them any more); the ids forgotten."""
    rows = await conn.fetch(FORGET + " RETURNING id", key_ids)
    return sorted(r[0] for r in rows)
