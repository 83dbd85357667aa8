"""The `masking` command line: serve, migrate, tenant, key, keys, dids, sessions, audit, reports and provider-urls."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from service.cli.admin import (
    cmd_audit,
    cmd_dids_import,
    cmd_key_revoke,
    cmd_migrate,
    cmd_provider_urls,
    cmd_reports,
    cmd_sessions_expire,
    cmd_tenant_create,
    cmd_tenant_list,
)
from service.cli.common import CliError, describe_database
from service.cli.keys import add_parser as add_keys_parser
from service.cli.serve import cmd_serve, worker_app
from service.crypto import KeysError
from service.settings import PREFIX, Settings, SettingsError, load_settings

__all__ = ["describe_database", "main", "parser", "worker_app"]


def parser() -> argparse.ArgumentParser:
    """The command line's grammar."""
    top = argparse.ArgumentParser(
        prog="masking", description="Number-masking service.", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("--version", action="version", version=f"masking {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "serve",
        help="apply the schema and run the HTTP service",
        description="Apply the schema, then serve HTTP and run the background work (expiry, reports, webhooks).",
        epilog=_variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(run=cmd_serve)
    sub.add_parser("migrate", help="bring the database to this version's schema (says what it applied)").set_defaults(
        run=cmd_migrate
    )

    tenant = sub.add_parser("tenant", help="tenants and API keys").add_subparsers(dest="action", required=True)
    create = tenant.add_parser("create", help="create a tenant (if needed) and a new API key, shown once")
    create.add_argument("name")
    create.add_argument("--scope", action="append", choices=["sessions", "ops"], help="repeatable")
    create.set_defaults(run=cmd_tenant_create)
    tenant.add_parser(
        "list", help="every tenant with its keys' ids, prefixes, scopes and times (never a key): a JSON line each"
    ).set_defaults(run=cmd_tenant_list)

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    revoke = key.add_parser("revoke", help="revoke an API key by its id (`tenant list`); refused within a second")
    revoke.add_argument("key_id", type=int, metavar="KEY_ID")
    revoke.set_defaults(run=cmd_key_revoke)
    add_keys_parser(sub)

    dids = sub.add_parser("dids", help="the DID pool").add_subparsers(dest="action", required=True)
    imp = dids.add_parser("import", help="add DIDs from a CSV file: number[,pool] per line")
    imp.add_argument("file")
    imp.add_argument("--pool", default="default", help="pool for rows that name none")
    imp.add_argument("--tenant", help="owner (needed when there is more than one tenant)")
    imp.set_defaults(run=cmd_dids_import)

    sessions = sub.add_parser("sessions", help="sessions").add_subparsers(dest="action", required=True)
    exp = sessions.add_parser("expire", help="expire a tenant's active sessions of an order")
    exp.add_argument("--order-id", required=True)
    exp.add_argument("--tenant", required=True, help="the tenant whose sessions to expire")
    exp.set_defaults(run=cmd_sessions_expire)

    audit = sub.add_parser(
        "audit", help="a tenant's audit log (or the entries of no tenant) as JSON lines, oldest first (newest last)"
    )
    whose = audit.add_mutually_exclusive_group(required=True)
    whose.add_argument("--tenant", help="the tenant whose audit log to print")
    whose.add_argument(
        "--service-wide",
        action="store_true",
        help="the entries of no tenant instead: keys.rotate, keys.reindex and failed console sign-ins",
    )
    audit.add_argument("--since", default="24h", help="how far back: 30m, 24h, 7d or an ISO time (default 24h)")
    audit.add_argument("--action", help="only this action's entries (session.reveal, did.drain...)")
    audit.set_defaults(run=cmd_audit)

    reports = sub.add_parser("reports", help="provider reports that matched no call")
    reports.add_argument("--unmatched", action="store_true", required=True)
    reports.add_argument("--tenant", help="a tenant's (default: those on no known DID, the operator's own)")
    reports.add_argument("--limit", type=int, default=100)
    reports.set_defaults(run=cmd_reports)

    urls = sub.add_parser("provider-urls", help="print the callback and routing URLs to give the provider")
    urls.add_argument("--base-url", help="the service's public base URL (default: its listen address)")
    urls.set_defaults(run=cmd_provider_urls)
    top.epilog = "commands:\n" + "\n".join(_commands(top))
    return top


def _commands(parent: argparse.ArgumentParser, path: str = "masking") -> Iterator[str]:
    """Every runnable command under parent, with its help, for the top-level --help."""
    for action in parent._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                    yield from _commands(child, f"{path} {name}")
                else:
                    yield f"  {path} {name}".ljust(30) + f" {helps.get(name) or ''}"


def _variables_help() -> str:
    """The MASKING_* variables `serve` reads, with their defaults (docs/configuration.md says what each means)."""
    lines = ["environment (see docs/configuration.md):"]
    for field in msgspec.structs.fields(Settings):
        default = "unset" if field.default in (None, msgspec.NODEFAULT) else field.default
        lines.append(f"  {PREFIX}{field.name.upper()} (default {default})")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("masking")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"masking: configuration error: {exc}", file=sys.stderr)
        return 2
    from service.logging import configure_logging

    configure_logging(settings.log_renderer, settings.log_level)
    run: Callable[[Settings, argparse.Namespace], int] = args.run
    try:
        result: Any = run(settings, args)
    except CliError as exc:
        print(f"masking: {exc}", file=sys.stderr)
        return exc.code
    except KeysError as exc:  # the keys are missing, unreadable, or lack one the database needs
        print(f"masking: keys: {exc}", file=sys.stderr)
        return 2
    return int(result)
