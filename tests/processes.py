"""Real `masking` processes for end-to-end tests: started on a free port, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import httpx

from service import crypto

# Every log line of the run lands here, for the privacy scan at its end (test_zz_privacy_scan.py).
LOG_DIR = Path(os.environ.setdefault("MASKING_TEST_LOG_DIR", tempfile.mkdtemp(prefix="masking-test-logs-")))

# One key ring for the run (pytest or a standalone `python -m tests.failover`): installed here for
# in-process code, and in the environment for every `masking` process a test starts (masking_env keeps
# it), so all of them seal and open alike.
os.environ.setdefault("MASKING_KEYS", crypto.KeyRing.generate().dumps().decode())
crypto.install(crypto.KeyRing.parse(os.environ["MASKING_KEYS"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def masking_env(**overrides: str) -> dict[str, str]:
    """The environment for a masking process: this one's, minus MASKING_*, plus the overrides."""
    # MASKING_SERVER passes through, so that the whole suite can run under either HTTP server.
    # MASKING_KEYS (the run's key ring, tests/conftest.py) is kept: every process seals alike
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MASKING_") or k in ("MASKING_SERVER", "MASKING_KEYS")
    }
    env.update({"MASKING_LOG_FORMAT": "json", **overrides})
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: str | Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `masking ARGS` to completion."""
    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    with open(LOG_DIR / "cli.log", "a") as log:
        log.write(result.stderr)
    return result


class ServeProcess:
    """`masking serve` on a free port; a context manager that waits for /readyz and stops it on exit.

    It runs in a process group of its own, and stopping it ends the whole group: its workers too, even
    when the parent is already gone (killed, or exited on a failed start).
    """

    def __init__(
        self,
        env: dict[str, str],
        cwd: str | Path | None = None,
        log_path: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.env = {**env, "MASKING_HOST": "127.0.0.1", "MASKING_PORT": str(self.port)}
        self.cwd = cwd
        self.log_path = log_path or LOG_DIR / f"serve-{self.port}-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> subprocess.Popen[bytes]:
        """Start `masking serve` in a new session (its own process group), without waiting for it."""
        out = open(self.log_path, "ab")  # noqa: SIM115
        self._log = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=self.env,
            cwd=self.cwd,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        return self.proc

    def start(self, timeout: float = 60) -> ServeProcess:
        proc = self.launch()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"masking serve exited with {proc.returncode}")
                try:
                    if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise RuntimeError("masking serve did not become ready")
        except BaseException:
            self.stop()
            raise

    def wait_for_exit(self, timeout: float = 60) -> int | None:
        """Start it and wait for it to exit by itself: its exit code, or None (then stopped) if it kept running."""
        proc = self.launch()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.stop()

    @property
    def output(self) -> str:
        """Everything it wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever is left of its group (workers of a killed parent, say) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log:
            self._log.close()
            self._log = None
            if LOG_DIR not in self.log_path.parents:
                with open(LOG_DIR / "serve-elsewhere.log", "ab") as copy:
                    copy.write(self.log_path.read_bytes())
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
