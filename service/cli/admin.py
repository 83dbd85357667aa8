"""The operator's commands: migrate, tenants and keys, DIDs, sessions, the audit log, reports, provider URLs."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from service.cli.common import CliError, cli_context, describe_database, record_action, run_with_db
from service.db import Conn
from service.db.schema import SchemaTooNew
from service.settings import Settings


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from service.db.schema import migrate

    try:
        done = run_with_db(settings, migrate, migrated=False)
    except SchemaTooNew as exc:
        print(f"masking: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**msgspec.to_builtins(done), "database": describe_database(settings)}))
    return 0


def cmd_tenant_create(settings: Settings, args: argparse.Namespace) -> int:
    from service.broker.tenants import create_key

    key = run_with_db(settings, lambda conn: create_key(conn, args.name, args.scope or ["sessions"]))
    sys.stdout.write(msgspec.json.encode(key).decode() + "\n")
    return 0


def cmd_tenant_list(settings: Settings, args: argparse.Namespace) -> int:
    from service.broker.tenants import list_tenants

    for tenant in run_with_db(settings, list_tenants):
        sys.stdout.write(msgspec.json.encode(tenant).decode() + "\n")
    return 0


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from service.broker.audit import Target
    from service.broker.tenants import RevokedKey, revoke_key
    from service.db import tenants as q

    async def work(conn: Conn) -> RevokedKey | None:
        async with conn.transaction():
            # The row stays locked to the end: of two revokes at once, only the one that revoked is on record.
            before = await q.lock_api_key(conn, args.key_id)
            revoked = await revoke_key(conn, args.key_id)
            if before is not None and before["revoked_at"] is None:
                await record_action(conn, before["tenant_id"], "key.revoke", Target("api_key", str(args.key_id)))
            return revoked

    revoked = run_with_db(settings, work)
    if revoked is None:
        raise CliError(f"no API key with id {args.key_id}; `masking tenant list` shows every key's id", code=1)
    sys.stdout.write(msgspec.json.encode(revoked).decode() + "\n")
    return 0


async def _tenant_id(conn: Conn, name: str | None) -> int:
    from service.db import tenants as q

    if name is None:
        names = await q.select_tenant_names(conn)
        if len(names) != 1:
            raise SystemExit("masking: give --tenant NAME (there is not exactly one tenant)")
        name = names[0]
    tenant_id = await q.select_tenant_id(conn, name)
    if tenant_id is None:
        raise SystemExit(f"masking: no tenant named {name!r}; create it with `masking tenant create`")
    return tenant_id


def cmd_dids_import(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from service.broker.audit import Target
    from service.broker.bodies import NewDid
    from service.broker.dids import add_dids, validate_entries
    from service.broker.errors import DomainError

    entries: list[NewDid] = []
    lines: list[int] = []
    try:
        with open(args.file, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or not row[0].strip() or row[0].strip().startswith("#"):
                    continue
                if line == 1 and not any(ch.isdigit() for ch in row[0]):
                    continue  # a header
                pool = row[1].strip() if len(row) > 1 and row[1].strip() else args.pool
                entries.append(NewDid(row[0].strip(), pool))
                lines.append(line)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"masking: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1

    async def work(conn: Conn) -> tuple[int, int]:
        tenant_id = await _tenant_id(conn, args.tenant)
        with Progress(transient=True, disable=len(entries) < 1000) as progress:
            task = progress.add_task("checking numbers", total=len(entries))
            step = 500
            for i in range(0, len(entries), step):
                validate_entries(entries[i : i + step], lines[i : i + step])
                progress.advance(task, len(entries[i : i + step]))
            progress.update(task, description="adding")
            async with conn.transaction():
                done = await add_dids(conn, tenant_id, entries, lines, max_pools=settings.max_pools_per_tenant)
                await record_action(conn, tenant_id, "did.add", Target("dids", str(done[0])))
            return done

    try:
        created, existing = run_with_db(settings, work)
    except DomainError as exc:
        print(json.dumps({"error": exc.code, "detail": exc.detail, **exc.extra}), file=sys.stderr)
        return 1
    print(json.dumps({"created": created, "existing": existing}))
    return 0


def cmd_sessions_expire(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import utc_now
    from service.broker.sessions import ExpireFilter, expire_sessions

    async def work(conn: Conn) -> int:
        tenant_id = await _tenant_id(conn, args.tenant)
        wanted = ExpireFilter(order_id=args.order_id)
        return await expire_sessions(conn, tenant_id, wanted, utc_now(), audit=cli_context(tenant_id))

    print(json.dumps({"expired": run_with_db(settings, work)}))
    return 0


SINCE_UNITS = {"m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """`24h`, `30m`, `7d` (ago), or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in SINCE_UNITS:
        return now - timedelta(seconds=int(text[:-1]) * SINCE_UNITS[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {text!r}: give a span ago (30m, 24h, 7d) or an ISO time (2026-12-01T09:00)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import utc_now
    from service.broker.audit import ACTIONS, since

    if args.action is not None and args.action not in ACTIONS:
        raise CliError(f"--action must be one of: {', '.join(ACTIONS)}")
    start = parse_since(args.since, utc_now())

    async def work(conn: Conn) -> int:
        tenant_id = None if args.service_wide else await _tenant_id(conn, args.tenant)
        count = 0
        async for entry in since(conn, tenant_id, start, args.action):
            sys.stdout.write(msgspec.json.encode(entry).decode() + "\n")
            count += 1
        return count

    run_with_db(settings, work)
    return 0


def cmd_reports(settings: Settings, args: argparse.Namespace) -> int:
    from service.broker.reports import list_reports

    if not args.unmatched:
        print("masking: only `masking reports --unmatched` is available", file=sys.stderr)
        return 2

    async def work(conn: Conn) -> list[dict[str, Any]]:
        tenant_id = await _tenant_id(conn, args.tenant) if args.tenant else None
        page = await list_reports(conn, tenant_id, False, None, args.limit)
        return [msgspec.to_builtins(item) for item in page.items]

    for item in run_with_db(settings, work):
        print(json.dumps(item))
    return 0


def cmd_provider_urls(settings: Settings, args: argparse.Namespace) -> int:
    from service.broker.tenants import callback_token

    token = run_with_db(settings, lambda conn: callback_token(conn, settings.callback_token))
    base = (args.base_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    print(
        json.dumps(
            {
                "callback_url": f"{base}/v1/provider/thundersms/callback/{token}",
                "route_url": f"{base}/v1/provider/thundersms/route/{token}",
            },
            indent=2,
        )
    )
    return 0
