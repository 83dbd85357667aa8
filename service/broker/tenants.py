"""Tenants and their API keys: keys are shown once and kept only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from service.db import Conn
from service.db import tenants as q

KEY_PREFIX = "msk_"
PREFIX_LENGTH = 12  # "msk_" and 8 random characters: shown in listings, never enough to use
Scope = Literal["sessions", "ops"]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: a tenant, its key's scopes, and the key by id and shown prefix (for the audit log)."""

    tenant_id: int
    tenant: str
    scopes: frozenset[str]
    key_id: int
    key_prefix: str

    def allows(self, scope: Scope) -> bool:
        """`ops` includes everything `sessions` allows."""
        return scope in self.scopes or "ops" in self.scopes


class NewKey(msgspec.Struct, frozen=True):
    """The one moment a key is shown: the CLI prints this."""

    tenant: str
    api_key: str
    scopes: list[str]


class KeyListing(msgspec.Struct, frozen=True):
    """A key as ops see it: never the key nor its hash, only its id and the shown prefix."""

    id: int
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class TenantListing(msgspec.Struct, frozen=True):
    """A tenant and every key it was given, revoked ones included."""

    tenant: str
    created_at: datetime
    keys: list[KeyListing]


class RevokedKey(msgspec.Struct, frozen=True):
    """What `masking key revoke` reports."""

    key_id: int
    tenant: str
    revoked_at: datetime


def hash_key(api_key: str) -> bytes:
    """The SHA-256 digest under which a key is stored and looked up."""
    return hashlib.sha256(api_key.encode()).digest()


async def create_key(conn: Conn, tenant: str, scopes: list[Scope]) -> NewKey:
    """Create the tenant if needed and a new key with the given scopes."""
    wanted = sorted(set(scopes or ["sessions"]))
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        tenant_id = await q.upsert_tenant(conn, tenant)
        await q.insert_api_key(conn, tenant_id, hash_key(api_key), api_key[:PREFIX_LENGTH], wanted)
    return NewKey(tenant=tenant, api_key=api_key, scopes=wanted)


async def list_tenants(conn: Conn) -> list[TenantListing]:
    """Every tenant with its keys."""
    return [msgspec.convert(dict(row), TenantListing) for row in await q.select_tenants_with_keys(conn)]


async def revoke_key(conn: Conn, key_id: int) -> RevokedKey | None:
    """Revoke a key by id (again: unchanged); None when there is no such key.

    Every process stops accepting it within KeyCache's ttl.
    """
    row = await q.revoke_api_key(conn, key_id)
    return None if row is None else msgspec.convert(dict(row), RevokedKey)


async def authenticate(db: asyncpg.Pool | Conn, api_key: str) -> Principal | None:
    """The principal of a key, or None when the key is unknown or revoked."""
    if not api_key.startswith(KEY_PREFIX) or len(api_key) > 128:
        return None
    digest = hash_key(api_key)
    # Look up by the non-secret prefix, then compare hashes in constant time.
    for row in await q.select_keys_by_prefix(db, api_key[:PREFIX_LENGTH]):
        if hmac.compare_digest(bytes(row["key_hash"]), digest):
            return _principal(row)
    return None


async def principal_by_hash(conn: Conn, digest: bytes) -> Principal | None:
    """The principal of a live key by its SHA-256 digest (a console session keeps only that); None once revoked."""
    row = await q.select_key_by_hash(conn, digest)
    return None if row is None else _principal(row)


def _principal(row: asyncpg.Record) -> Principal:
    return Principal(
        tenant_id=row["tenant_id"],
        tenant=row["tenant"],
        scopes=frozenset(row["scopes"]),
        key_id=row["key_id"],
        key_prefix=row["prefix"],
    )


async def callback_token(db: asyncpg.Pool | Conn, configured: str | None) -> str:
    """The callback token: the configured one, else one generated once and kept in the database."""
    if configured:
        return configured
    return await q.get_or_create_secret(db, "callback_token", secrets.token_urlsafe(24))


class KeyCache:
    """Principals of recently seen keys, by key hash, for a second (a revoked key dies within ttl in every process).

    One read of a key per second per process costs nothing beside the requests it spares; a longer ttl
    would only stretch the time a revoked key still works.
    """

    def __init__(self, ttl: float = 1.0, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._seen: dict[bytes, tuple[float, Principal]] = {}

    async def authenticate(self, db: asyncpg.Pool | Conn, api_key: str) -> Principal | None:
        """Like authenticate(), answered from memory while fresh; unknown keys are never cached."""
        digest = hash_key(api_key)
        now = time.monotonic()
        hit = self._seen.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await authenticate(db, api_key)
        if principal is not None:
            if len(self._seen) >= self.size:
                self._seen.clear()
            self._seen[digest] = (now + self.ttl, principal)
        return principal
