"""The `masking` command line: serve, migrate, tenant, key, dids, sessions, audit, reports and provider-urls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import errno
import getpass
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import msgspec
import structlog

from service.db import Conn
from service.db.schema import SchemaTooNew
from service.settings import PREFIX, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from service.broker.audit import Action, Target

T = TypeVar("T")
log = structlog.get_logger("service.cli")


class CliError(Exception):
    """A command cannot go on for a reason a person can fix: one line on stderr, and this exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The DSN to use: MASKING_DATABASE_URL, or an embedded PostgreSQL started (or joined) for the duration."""
    if settings.database_url:
        yield settings.database_url
        return
    from service.embedded import EmbeddedPostgres

    with EmbeddedPostgres(settings.data_dir) as dsn:
        yield dsn


def describe_database(settings: Settings) -> str:
    """Where the data lives, without credentials."""
    if not settings.database_url:
        return f"embedded PostgreSQL in {Path(settings.data_dir).resolve() / 'pg'}"
    url = urlsplit(settings.database_url)
    hosts = [h if ":" in h else f"{h}:5432" for h in url.netloc.rpartition("@")[2].split(",") if h]
    return f"PostgreSQL at {','.join(hosts) or 'local socket'}{url.path}"


async def open_pool(settings: Settings, dsn: str, size: int) -> asyncpg.Pool:
    """A pool on the database, or a CliError naming the variable that points at a database that does not answer."""
    from service.db.pool import create_pool

    try:
        return await create_pool(dsn, size, timeout=_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        variable = "MASKING_DATABASE_URL" if settings.database_url else "MASKING_DATA_DIR"
        reason = " ".join(str(exc).replace(dsn, "[dsn]").split()) or type(exc).__name__
        raise CliError(f"{variable}: cannot connect to {describe_database(settings)}: {reason}") from None


_CONNECT_TIMEOUT = 10.0


def run_with_db(settings: Settings, work: Callable[[Conn], Awaitable[T]], *, migrated: bool = True) -> T:
    """Open the database (migrated first, unless the work is the migration), run work on one connection."""
    from service.db.schema import migrate

    async def main(dsn: str) -> T:
        pool = await open_pool(settings, dsn, 2)
        try:
            async with pool.acquire() as conn:
                if migrated:
                    await migrate(conn)
                return await work(conn)
        finally:
            await pool.close()

    with database(settings) as dsn:
        return asyncio.run(main(dsn))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app, request_context
    from service.db.schema import migrate

    refuse_taken_port(settings.host, settings.port)

    async def prepare(dsn: str) -> int:
        pool = await open_pool(settings, dsn, 1)
        try:
            async with pool.acquire() as conn:
                return (await migrate(conn)).schema_version
        finally:
            await pool.close()

    with database(settings) as dsn:
        try:
            version = asyncio.run(prepare(dsn))
        except SchemaTooNew as exc:
            print(f"masking: {exc}", file=sys.stderr)
            return 1
        log.info(
            "serving",
            url=f"http://{settings.host}:{settings.port}",
            database=describe_database(settings),
            schema_version=version,
            provider=settings.provider_kind,
            workers=settings.workers,
        )
        common: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "log_config": None,
            "access_log": False,
            "lifespan": "on",
            "server_header": False,
            # X-Forwarded-For is read by the service itself, from MASKING_TRUSTED_PROXIES only, under either server.
            "proxy_headers": False,
        }
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; make that an exception so the
        # embedded PostgreSQL is stopped on the way out instead of the process dying on the spot.
        signal.signal(signal.SIGTERM, _exit_quietly)
        signal.signal(signal.SIGINT, _exit_quietly)
        with contextlib.suppress(SystemExit):
            if settings.server == "granian":
                _serve_granian(settings, dsn)
            elif settings.workers > 1:
                # Each worker process builds its own app from the environment, on this database.
                os.environ["MASKING_DATABASE_URL"] = dsn
                uvicorn.run("service.cli:worker_app", factory=True, workers=settings.workers, **common)
            else:
                simulator = None
                if settings.provider_kind == "simulator":
                    from service.provider.simulator import Simulator

                    simulator = Simulator(timezone=settings.provider_timezone)
                app = create_app(settings, dsn=dsn, simulator=simulator)
                uvicorn.Server(uvicorn.Config(request_context(app), **common)).run()
    log.info("stopped")
    return 0


def _serve_granian(settings: Settings, dsn: str) -> None:
    """Serve with granian (Rust HTTP, one asyncio loop per worker); each worker builds the app from the environment."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    os.environ["MASKING_DATABASE_URL"] = dsn
    # granian stops its workers gracefully on SIGTERM/SIGINT itself, then returns here.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    Granian(
        "service.cli:worker_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        factory=True,
        log_enabled=False,
    ).serve()


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def refuse_taken_port(host: str, port: int) -> None:
    """Raise CliError when host:port cannot be listened on, above all when another process already listens there.

    Both HTTP servers bind with SO_REUSEPORT, so a second service on a taken port would start without a word and
    share the traffic with the first; this probe binds without it, which fails while anyone listens there.
    """
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CliError(f"MASKING_HOST: cannot listen on {host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
            probe.listen()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"MASKING_PORT: port {port} on {host} is already in use by another process; "
                    "stop that process or choose another MASKING_PORT"
                ) from None
            raise CliError(f"MASKING_HOST, MASKING_PORT: cannot listen on {host}:{port}: {exc.strerror}") from None


def worker_app() -> Any:
    """The app of one worker process of `masking serve`; the worker exits as soon as `masking serve` is gone."""
    from service.app import app_from_env

    _exit_with_parent(os.getppid())
    return app_from_env()


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    # A worker whose parent was killed (SIGKILL, OOM) is re-parented and would go on serving the port beside
    # a restarted service. Polling getppid() is portable and, unlike PR_SET_PDEATHSIG, is not fooled by the
    # parent's spawning thread ending before the parent does.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("parent_gone", parent=parent)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
    from service.broker.tenants import revoke_key

    revoked = run_with_db(settings, lambda conn: revoke_key(conn, args.key_id))
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
    from service.broker.dids import NewDid, add_dids, validate_entries
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
                await _record(conn, tenant_id, "did.add", Target("dids", str(done[0])))
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
    from service.broker.audit import Target
    from service.broker.sessions import ExpireFilter, expire_sessions

    async def work(conn: Conn) -> int:
        tenant_id = await _tenant_id(conn, args.tenant)
        async with conn.transaction():
            count = await expire_sessions(conn, tenant_id, ExpireFilter(order_id=args.order_id), utc_now())
            await _record(conn, tenant_id, "sessions.expire", Target("order", args.order_id))
        return count

    print(json.dumps({"expired": run_with_db(settings, work)}))
    return 0


def cli_user() -> str:
    """Who runs this command, as the audit log names a command-line actor: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


async def _record(conn: Conn, tenant_id: int, action: Action, target: Target) -> None:
    """Write a command's audit row (in the caller's transaction, with the action)."""
    from service.app import utc_now
    from service.broker.audit import Actor, record

    await record(conn, tenant_id, Actor.cli(cli_user()), action, target, None, None, None, utc_now())


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
        tenant_id = await _tenant_id(conn, args.tenant)
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
    revoke = key.add_parser("revoke", help="revoke an API key by its id (`tenant list`); refused within 10 s")
    revoke.add_argument("key_id", type=int, metavar="KEY_ID")
    revoke.set_defaults(run=cmd_key_revoke)

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

    audit = sub.add_parser("audit", help="a tenant's audit log as JSON lines, oldest first (newest last)")
    audit.add_argument("--tenant", required=True, help="the tenant whose audit log to print")
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
    return int(result)
