"""`masking serve`: the HTTP service and its workers, which die with it, on a port no one else serves."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from service import crypto
from service.broker.keys import check_at_start
from service.db.schema import SchemaTooNew
from service.settings import Settings

if TYPE_CHECKING:
    pass

from service.cli.common import CliError, database, describe_database, open_pool

log = structlog.get_logger("service.cli")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app, request_context
    from service.db.schema import migrate

    refuse_taken_port(settings.host, settings.port)
    keys_said = crypto.ensure(settings)  # KeysError: one line and exit 2 (cli.main)
    if not (settings.keys or settings.keys_file):
        # Worker processes read their settings from the environment: the embedded default's key file too.
        os.environ["MASKING_KEYS_FILE"] = str(Path(settings.data_dir).expanduser().resolve() / crypto.KEY_FILE_NAME)

    async def prepare(dsn: str) -> int:
        pool = await open_pool(settings, dsn, 1)
        try:
            async with pool.acquire() as conn:
                version = (await migrate(conn)).schema_version
                await check_at_start(conn, crypto.ring())
                return version
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
            sealing=keys_said,  # where the keys came from (a field named "keys" would be dropped as secret)
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
        os.environ[SERVE_PID] = str(os.getpid())  # the parent each worker watches (worker_app)
        with contextlib.suppress(SystemExit):
            if settings.server == "granian":
                _serve_granian(settings, dsn)
            elif settings.workers > 1:
                # Each worker process builds its own app from the environment, on this database.
                os.environ["MASKING_DATABASE_URL"] = dsn
                uvicorn.run("service.cli.serve:worker_app", factory=True, workers=settings.workers, **common)
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
        "service.cli.serve:worker_app",
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


# The environment variable naming `masking serve`'s process id to its workers (not a setting: no MASKING_ prefix).
SERVE_PID = "_MASKING_SERVE_PID"


def worker_app() -> Any:
    """The app of one worker process of `masking serve`; the worker exits as soon as `masking serve` is gone."""
    from service.app import app_from_env

    _exit_with_parent(int(os.environ.get(SERVE_PID) or os.getppid()))
    return app_from_env()


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    # A worker whose parent was killed (SIGKILL, OOM) is re-parented and would go on serving the port beside
    # a restarted service. Polling getppid() is portable and, unlike PR_SET_PDEATHSIG, is not fooled by the
    # parent's spawning thread ending before the parent does. The parent is named by `masking serve` itself,
    # not read from getppid() here: a worker still starting when its parent was killed would otherwise take
    # its new parent (init) for `masking serve` and serve on forever (seen in CI with uvicorn).
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("parent_gone", parent=parent)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
