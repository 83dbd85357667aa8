"""`masking serve` starts cleanly or says in one line why not, and its workers never outlive it."""

import os
import signal
import time

import httpx
import psutil
import pytest

from tests.processes import ServeProcess, free_port, masking_env, run_cli


def answers(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_workers_die_with_a_killed_serve_and_nothing_answers_on_its_port(dsn: str, server: str) -> None:
    """After kill -9 of `masking serve` (two workers), within seconds no worker is alive and the port is silent."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_WORKERS="2", MASKING_SERVER=server)
    with ServeProcess(env) as service:
        assert service.proc is not None
        workers = psutil.Process(service.proc.pid).children(recursive=True)
        assert len(workers) >= 2, "the test needs worker processes to watch"
        os.kill(service.proc.pid, signal.SIGKILL)
        service.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (any(w.is_running() for w in workers) or answers(service.url)):
            time.sleep(0.2)
        alive = [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], f"workers {alive} outlived their parent"
        assert not answers(service.url), "something still answers on the killed service's port"


def test_a_worker_that_starts_after_its_serve_was_killed_exits_at_once(dsn: str) -> None:
    """A worker still importing when `masking serve` was killed finds its parent already gone: it must not take
    its new parent (init, or a subreaper) for `masking serve` and serve on (seen in CI: uvicorn workers alive
    10 s after kill -9)."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that named a `masking serve` that is no more
    env = masking_env(MASKING_DATABASE_URL=dsn, _MASKING_SERVE_PID=str(gone.pid))
    worker = subprocess.Popen(
        [sys.executable, "-c", "from service.cli.serve import worker_app; worker_app(); import time; time.sleep(60)"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        code = worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        raise AssertionError("a worker whose `masking serve` is gone kept running") from None
    assert code == 1
    assert "parent_gone" in (worker.stdout.read() if worker.stdout else "")


def test_a_second_serve_on_a_taken_port_exits_2_with_one_line_naming_the_port(dsn: str) -> None:
    """A port another `masking serve` already listens on is a start-up error, not a silently shared port."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    with ServeProcess(env) as first:
        second = ServeProcess(env, port=first.port)
        code = second.wait_for_exit(timeout=60)
        lines = second.output.strip().splitlines()
        assert code == 2, f"exit {code}: {second.output[-2000:]}"
        assert len(lines) == 1 and str(first.port) in lines[0], lines
        assert "MASKING_PORT" in lines[0]
        assert answers(first.url)


def test_a_port_taken_by_another_program_exits_2_with_one_line(tmp_path: object) -> None:
    """A port held by a plain listening socket (no SO_REUSEPORT) is refused in one line too, before any database work."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = ServeProcess(masking_env(MASKING_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"), port=port)
        code = service.wait_for_exit(timeout=60)
    lines = service.output.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(port) in lines[0], service.output[-2000:]


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["tenant", "create", "acme"]])
def test_a_database_url_that_points_nowhere_exits_2_with_one_line_naming_the_variable(command: list[str]) -> None:
    """No PostgreSQL at MASKING_DATABASE_URL: one line naming the variable and where it points, exit 2."""
    nowhere = f"postgresql://masking:secret-password@127.0.0.1:{free_port()}/masking"
    env = masking_env(MASKING_DATABASE_URL=nowhere, MASKING_PORT=str(free_port()))
    result = run_cli(*command, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "MASKING_DATABASE_URL" in lines[0] and "127.0.0.1" in lines[0]
    assert "secret-password" not in result.stderr
