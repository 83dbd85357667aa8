"""A failover under load: pg_auto_failover (a monitor, two nodes) under two `masking serve`, and the counts.

    python -m tests.failover                    (3 minutes: three switchovers, two kill -9 of the primary)
    python -m tests.failover --seconds 40 --switchovers 1 --crashes 0

Creates (half with an Idempotency-Key), PATCHes, clicks, provider reports (by the simulator and re-sent
by the test) and webhook deliveries to a loopback receiver run against two service processes on one
multi-host DSN while the primary moves. Afterwards it counts what the issue asks (issue 21): creates
answered 2xx and not found, reports answered 200 and not stored, clicks dialled twice, crossed lines
after each switch, 500s, seconds from each promotion to the first successful write, connections left
on a standby 10 s after a switch, and webhook deliveries per event. pg_autoctl runs as `postgres`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from service.db.pool import APPLICATION_NAME
from service.provider.simulator import Fault, Simulator, simulator_app
from tests.helpers import CROSSED_LINES, opened_body
from tests.live import serve
from tests.processes import ServeProcess, free_port, masking_env, run_cli
from tests.receiver import Receiver

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TOKEN = "failover-callback-token-0123456789"
REPORT_TIMEOUT = 15
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pg_autoctl() -> str | None:
    """The pg_autoctl binary, or None when pg_auto_failover is not installed."""
    found = shutil.which("pg_autoctl") or (str(PG_BIN / "pg_autoctl") if (PG_BIN / "pg_autoctl").exists() else None)
    return found if found and (PG_BIN / "pg_ctl").exists() else None


def why_not() -> str | None:
    """Why a failover test cannot run here, or None when it can."""
    if pg_autoctl() is None:
        return "pg_auto_failover is not installed (apt-get install postgresql-15-auto-failover pg-auto-failover-cli)"
    if os.geteuid() != 0:
        return "pg_autoctl runs as the postgres user; starting it needs root (runuser)"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    return None


class Cluster:
    """A pg_auto_failover formation on loopback: a monitor and two nodes, run as `postgres`; always stopped."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="masking-ha-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o755)
        self.monitor_port, *self.ports = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.runs: dict[str, subprocess.Popen[bytes]] = {}  # the latest `pg_autoctl` of each node, by name
        self.logs: list[Any] = []
        self.events: list[str] = []

    # -- plumbing --------------------------------------------------------------------------------------
    def _env(self) -> list[str]:
        return [
            "runuser",
            "-u",
            "postgres",
            "--",
            "env",
            f"XDG_CONFIG_HOME={self.root}/config",
            f"XDG_DATA_HOME={self.root}/share",
            f"PATH={PG_BIN}:/usr/bin:/bin",
        ]

    def pgdata(self, name: str) -> Path:
        return self.root / name

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run `pg_autoctl ARGS` as postgres and return its output."""
        result = subprocess.run([*self._env(), "pg_autoctl", *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args)}: {result.stderr[-2000:]}")
        return result.stdout

    def _run(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        self.logs.append(log)
        proc = subprocess.Popen(
            [*self._env(), "pg_autoctl", *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.runs[name] = proc

    @property
    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=disable"

    @property
    def dsn(self) -> str:
        """The service's DSN: both nodes, and only a writable one will do."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"postgresql://postgres@{hosts}/masking?target_session_attrs=read-write"

    def node_dsn(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/masking"

    # -- life ------------------------------------------------------------------------------------------
    def start(self, within: float = 240) -> Cluster:
        common = ["--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl", "--pgctl", str(PG_BIN / "pg_ctl")]
        self._run(
            "monitor",
            "create",
            "monitor",
            "--pgdata",
            str(self.pgdata("monitor")),
            "--pgport",
            str(self.monitor_port),
            *common,
            "--run",
        )
        self._wait(lambda: self._accepts(self.monitor_port, "pg_auto_failover", "autoctl_node"), within, "monitor")
        for i, port in enumerate(self.ports, 1):
            self._run(
                f"node{i}",
                "create",
                "postgres",
                "--pgdata",
                str(self.pgdata(f"node{i}")),
                "--pgport",
                str(port),
                *common,
                "--monitor",
                self.monitor_uri,
                "--dbname",
                "masking",
                "--name",
                f"node{i}",
                "--run",
            )
            if i == 1:
                self._wait(lambda: self._accepts(self.ports[0], "masking", "postgres"), within, "first node")
        self.wait_stable(within)
        return self

    def _accepts(self, port: int, db: str, user: str) -> bool:
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-d", db, "-U", user], capture_output=True
        )
        return result.returncode == 0

    def _wait(self, ready: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"pg_auto_failover: {what} not ready within {within:.0f}s; logs in {self.root}")

    def state(self) -> list[dict[str, Any]]:
        """The monitor's view of the nodes."""
        nodes: list[dict[str, Any]] = json.loads(
            self.ctl("show", "state", "--pgdata", str(self.pgdata("monitor")), "--json")
        )
        return nodes

    def stable(self) -> bool:
        try:
            nodes = self.state()
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return False
        states = sorted((n["current_group_state"], n["assigned_group_state"]) for n in nodes)
        return states == [("primary", "primary"), ("secondary", "secondary")]

    def wait_stable(self, within: float = 120) -> None:
        """Wait for a primary and a secondary; nudge the primary's checkpoint so a base backup need not wait."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.stable():
                return
            for port in self.ports:  # pg_basebackup waits for a spread checkpoint (minutes) unless one is asked
                subprocess.run(
                    [
                        *self._env(),
                        "psql",
                        "-qAtX",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-d",
                        "masking",
                        "-c",
                        "CHECKPOINT",
                    ],
                    capture_output=True,
                    timeout=30,
                )
            time.sleep(1)
        raise RuntimeError(f"pg_auto_failover: no primary and secondary within {within:.0f}s; logs in {self.root}")

    def primary_port(self) -> int:
        nodes = self.state()
        return next(int(n["nodeport"]) for n in nodes if n["assigned_group_state"] in ("primary", "wait_primary"))

    def switchover(self) -> None:
        self.ctl("perform", "switchover", "--pgdata", str(self.pgdata("monitor")), timeout=120)

    def crash_primary(self) -> int:
        """kill -9 the primary's postmaster (its keeper lives on); return the port it served."""
        port = self.primary_port()
        i = self.ports.index(port) + 1
        pid = int((self.pgdata(f"node{i}") / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        return port

    def crash_node(self) -> int:
        """kill -9 the primary's keeper and postmaster, as when its machine dies; return the port it served."""
        port = self.primary_port()
        name = f"node{self.ports.index(port) + 1}"
        pid = int((self.pgdata(name) / "postmaster.pid").read_text().split()[0])
        os.killpg(self.runs[name].pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.runs[name].wait()
        return port

    def restart_node(self, port: int) -> None:
        """Start a crashed node's keeper again: it rejoins as the standby."""
        name = f"node{self.ports.index(port) + 1}"
        self._run(name, "run", "--pgdata", str(self.pgdata(name)))

    def processes(self) -> list[int]:
        """Our pg_autoctl and postgres processes (by the scratch folder in their command line, or a postmaster's)."""
        mine: list[int] = []
        postmasters = self._postmasters()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if str(self.root) in cmd or ppid in postmasters:
                mine.append(int(entry.name))
        return mine

    def _postmasters(self) -> set[int]:
        pids = set()
        for name in ("monitor", "node1", "node2"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.add(int((self.pgdata(name) / "postmaster.pid").read_text().split()[0]))
        return pids

    def stop(self) -> None:
        """Stop every node and the monitor, then kill whatever is left; leave no process behind."""
        for name in ("node1", "node2", "monitor"):
            if self.pgdata(name).exists():
                with contextlib.suppress(Exception):
                    self.ctl("stop", "--pgdata", str(self.pgdata(name)), timeout=60)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        for _ in range(3):
            leftover = self.processes()
            if not leftover:
                break
            for pid in leftover:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for log in self.logs:
            log.close()
        if self.processes():
            raise RuntimeError(f"pg_auto_failover processes left: {self.processes()}")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _route(method: str, path: str) -> str:
    return f"{method} " + _ID.sub("{id}", path.split("?")[0]).replace(TOKEN, "{token}")


class Load:
    """The workload and everything the service promised during it."""

    def __init__(self, procs: list[ServeProcess], sim: Simulator, key: str) -> None:
        self.procs = procs
        self.sim = sim
        self.auth = {"Authorization": f"Bearer {key}"}
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.no_retry_after = 0
        self.failures: list[str] = []  # the first answers 500 (or 502, 504): route, status, body
        self.created: set[str] = set()
        self.clicks: set[str] = set()
        self.acked: Counter[str] = Counter()
        self.writes: list[float] = []  # monotonic times of successful writes
        self.stop = asyncio.Event()

    async def request(self, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response | None:
        proc = random.choice(self.procs)
        try:
            r = await http.request(method, proc.url + path, **kw)
        except httpx.HTTPError:
            return None
        self.statuses[(_route(method, path), r.status_code)] += 1
        if r.status_code >= 500 and r.status_code != 503 and len(self.failures) < 5:
            self.failures.append(f"{_route(method, path)} {r.status_code} {r.text[:300]}")
        if r.status_code == 503 and "retry-after" not in r.headers:
            self.no_retry_after += 1
        if method != "GET" and r.is_success:
            self.writes.append(time.monotonic())
        return r

    async def worker(self, http: httpx.AsyncClient, w: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            order = f"w{w}-{n}"
            body = {
                "order_id": order,
                "customer": f"+91987{w:02d}{n:05d}",
                "agent": f"+91876{random.randrange(12):07d}",
            }
            keyed = {"Idempotency-Key": order} if n % 2 else {}
            r = None
            for _ in range(3 if keyed else 1):  # a keyed create may be re-sent safely
                r = await self.request(http, "POST", "/v1/sessions", json=body, headers={**self.auth, **keyed})
                if r is not None and r.status_code != 503:
                    break
                await asyncio.sleep(0.3)
            if r is None or r.status_code not in (200, 201):
                await asyncio.sleep(0.05)
                continue
            sid = r.json()["id"]
            self.created.add(sid)
            await self.request(http, "PATCH", f"/v1/sessions/{sid}", json={"ttl_seconds": 1800}, headers=self.auth)
            if random.random() < 0.6:
                if random.random() < 0.1:
                    self.sim.inject(Fault(report="duplicate"))
                c = await self.request(http, "POST", f"/v1/sessions/{sid}/calls", headers=self.auth)
                if c is not None and c.status_code == 202:
                    self.clicks.add(c.json()["id"])
            if random.random() < 0.5:
                await self.request(http, "POST", f"/v1/sessions/{sid}/close", headers=self.auth)
            if random.random() < 0.2:
                await self.resend(http)
            await asyncio.sleep(0.02)

    async def resend(self, http: httpx.AsyncClient) -> None:
        """The provider re-sends a report it already delivered."""
        if not self.sim.reports_sent:
            return
        content = json.dumps(random.choice(self.sim.reports_sent)).encode()
        for _ in range(20):
            r = await self.request(http, "POST", f"/v1/provider/thundersms/callback/{TOKEN}", content=content)
            if r is not None and r.status_code == 200:
                self.acked[_canonical(content)] += 1
                return
            await asyncio.sleep(0.3)


def _canonical(body: bytes | dict[str, Any]) -> str:
    return json.dumps(json.loads(body) if isinstance(body, bytes) else body, sort_keys=True)


async def _writable(port: int) -> bool:
    try:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/masking", timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        # A transaction id commits only once the synchronous standby has it: "accepts writes" means this returns.
        return bool(await conn.fetchval("SELECT txid_current() > 0", timeout=1))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    finally:
        conn.terminate()


async def _on_node(port: int, sql: str) -> Any:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/masking", timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _switch(cluster: Cluster, load: Load, kind: str) -> dict[str, Any]:
    """One switch (a switchover or a kill -9 of the primary); its measures."""
    before = await asyncio.to_thread(cluster.primary_port)
    began = time.monotonic()
    task = None
    if kind == "switchover":
        task = asyncio.create_task(asyncio.to_thread(cluster.switchover))
    elif kind == "crash":
        await asyncio.to_thread(cluster.crash_primary)
    else:
        await asyncio.to_thread(cluster.crash_node)
    promoted = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the first moment a node accepts a write again (the other, if it moved)
        for port in cluster.ports:
            if (kind == "crash" or port != before) and await _writable(port):
                promoted = time.monotonic()
                break
        if promoted:
            break
        await asyncio.sleep(0.05)
    if task is not None:
        await task
    if kind == "node-crash":
        await asyncio.to_thread(cluster.restart_node, before)
    await asyncio.to_thread(cluster.wait_stable, 180)
    after = await asyncio.to_thread(cluster.primary_port)
    first_write = next((t for t in load.writes if promoted and t >= promoted), None)
    while first_write is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        first_write = next((t for t in load.writes if promoted and t >= promoted), None)
    await asyncio.sleep(max(0.0, (promoted or began) + 10 - time.monotonic()))
    standby = next(p for p in cluster.ports if p != after)
    on_standby = await _on_node(
        standby, f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}'"
    )
    return {
        "kind": kind,
        "primary before": before,
        "primary after": after,
        "write outage s": round(promoted - began, 2) if promoted else None,
        "promotion to first service write s": round(first_write - promoted, 2) if first_write and promoted else None,
        "service connections on the standby 10 s after": on_standby,
        "crossed lines": await _on_node(after, CROSSED_LINES),
    }


def _plan(switchovers: int, crashes: int, node_crashes: int = 0) -> list[str]:
    """Switchovers, crashes and node crashes in turn: switchover, crash, node-crash, switchover, ..."""
    left = {"switchover": switchovers, "crash": crashes, "node-crash": node_crashes}
    plan: list[str] = []
    while any(left.values()):
        for kind, n in left.items():
            if n:
                plan.append(kind)
                left[kind] -= 1
    return plan


async def run(
    cluster: Cluster, seconds: float, switchovers: int, crashes: int, workers: int, node_crashes: int = 0
) -> dict[str, Any]:
    """Load for `seconds`, with the switches spread over it; then drain and count."""
    sim = Simulator(delay=0.2)
    async with serve(simulator_app(sim)) as sim_url, Receiver() as receiver:
        env = masking_env(
            MASKING_DATABASE_URL=cluster.dsn,
            MASKING_PROVIDER="thundersms",
            MASKING_THUNDERSMS_URL=sim_url + "/api/v2/",
            MASKING_THUNDERSMS_TOKEN="failover-provider-token",
            MASKING_CALLBACK_TOKEN=TOKEN,
            MASKING_LOG_LEVEL="warning",
            MASKING_CALL_REPORT_TIMEOUT_SECONDS=str(REPORT_TIMEOUT),
            MASKING_SWEEP_INTERVAL_SECONDS="1",
            MASKING_SESSION_CALLS_PER_WINDOW="0",
            MASKING_CALLS_PER_MINUTE="0",
            MASKING_SESSIONS_PER_MINUTE="0",
            MASKING_PROVIDER_TIMEOUT_SECONDS="5",
            MASKING_COOLOFF_SECONDS="5",
            MASKING_WEBHOOK_ALLOW_HTTP="true",
            MASKING_WEBHOOK_ALLOW_PRIVATE="true",
            MASKING_WEBHOOK_RETRY_SECONDS="1,1,2,2,3,5,5",
            MASKING_WEBHOOK_POLL_SECONDS="0.2",
        )
        made = run_cli("migrate", env=env)
        assert made.returncode == 0, made.stderr
        key = json.loads(run_cli("tenant", "create", "ha", "--scope", "sessions", "--scope", "ops", env=env).stdout)[
            "api_key"
        ]
        a, b = ServeProcess(env), ServeProcess(env)
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        try:
            sim.callback_url = f"{b.url}/v1/provider/thundersms/callback/{TOKEN}"
            load = Load([a, b], sim, key)
            async with httpx.AsyncClient(timeout=15) as http:
                dids = [{"number": f"+9180682{i:05d}"} for i in range(60)]
                assert (await http.post(a.url + "/v1/dids/bulk", json={"dids": dids}, headers=load.auth)).is_success
                hook = await http.post(
                    a.url + "/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=load.auth
                )
                assert hook.status_code == 201, hook.text
                receiver.secrets.append(hook.json()["secret"])
                endpoint = hook.json()["id"]
                started = time.monotonic()
                tasks = [asyncio.create_task(load.worker(http, w)) for w in range(workers)]
                plan = _plan(switchovers, crashes, node_crashes)
                gap = seconds / (len(plan) + 1)
                switches = []
                for i, kind in enumerate(plan):
                    await asyncio.sleep(max(0.0, started + gap * (i + 1) - time.monotonic()))
                    switches.append(await _switch(cluster, load, kind))
                    print(json.dumps(switches[-1]), file=sys.stderr)
                await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
                load.stop.set()
                await asyncio.gather(*tasks)
                figures = await _count(cluster, load, receiver, endpoint, switches)
        finally:
            a.stop()
            b.stop()
    figures["unhandled errors in the service logs"] = sum(
        p.log_path.read_text(errors="replace").count("unhandled_error") for p in (a, b)
    )
    return figures


async def _count(
    cluster: Cluster, load: Load, receiver: Receiver, endpoint: str, switches: list[Any]
) -> dict[str, Any]:
    db = await asyncpg.connect(cluster.dsn)
    try:
        deadline = time.monotonic() + REPORT_TIMEOUT + 60  # drain: calls settle, events are delivered
        while time.monotonic() < deadline:
            busy = await db.fetchval(
                "SELECT (SELECT count(*) FROM calls WHERE in_flight)"
                " + (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')"
            )
            if not busy and not load.sim._tasks:
                break
            await asyncio.sleep(1)
        sessions = {str(r["id"]) for r in await db.fetch("SELECT id FROM sessions")}
        calls = {str(r["id"]) for r in await db.fetch("SELECT id FROM calls")}
        stored = Counter(
            _canonical(opened_body(r["body"])) for r in await db.fetch("SELECT body FROM provider_reports")
        )
        wanted = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid", endpoint)
        undelivered = await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid AND status <> 'delivered'", endpoint
        )
        crossed = await db.fetchval(CROSSED_LINES)
        in_flight = await db.fetchval("SELECT count(*) FROM calls WHERE in_flight")
    finally:
        await db.close()
    acked = Counter(load.acked)
    for report in load.sim.reports_sent:
        acked[_canonical(report)] += 1
    dials = Counter(str(r.get("mid")) for r in load.sim.requests)
    statuses = Counter()
    for (_, status), n in load.statuses.items():
        statuses[status] += n
    delivered = len(receiver.delivered)
    return {
        "creates answered 2xx": len(load.created),
        "creates answered 2xx and not found afterwards": len(load.created - sessions),
        "reports answered 200": sum(acked.values()),
        "reports answered 200 and not stored": sum(max(0, n - stored[body]) for body, n in acked.items()),
        "clicks answered 202": len(load.clicks),
        "clicks answered 202 without a call row": len(load.clicks - calls),
        "clicks dialled twice": sum(1 for n in dials.values() if n > 1),
        "crossed lines (after each switch, and at the end)": sum(s["crossed lines"] for s in switches) + crossed,
        "calls still in flight after draining (report timeout stuck)": in_flight,
        "answers 500": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "the first answers 500": load.failures,
        "answers 503 without Retry-After": load.no_retry_after,
        "answers by status": dict(sorted(statuses.items())),
        "seconds from promotion to the first successful write": [
            s["promotion to first service write s"] for s in switches
        ],
        "connections still pointing at a standby after 10 s": sum(
            s["service connections on the standby 10 s after"] for s in switches
        ),
        "events wanted by the endpoint": wanted,
        "events delivered (distinct)": delivered,
        "events delivered per event created": round(delivered / wanted, 3) if wanted else None,
        "events not delivered after draining": undelivered,
        "switches": switches,
    }


def broken(figures: dict[str, Any]) -> list[str]:
    """The promises the figures break (empty when all hold)."""
    zero = [
        "creates answered 2xx and not found afterwards",
        "reports answered 200 and not stored",
        "clicks answered 202 without a call row",
        "clicks dialled twice",
        "crossed lines (after each switch, and at the end)",
        "calls still in flight after draining (report timeout stuck)",
        "answers 500",
        "answers 503 without Retry-After",
        "connections still pointing at a standby after 10 s",
        "events not delivered after draining",
        "unhandled errors in the service logs",
    ]
    out = [f"{name}: {figures[name]}" for name in zero if figures[name]]
    if figures["answers 500"]:
        out.append(f"the first answers 500: {figures['the first answers 500']}")
    for s in figures["switches"]:
        if s["promotion to first service write s"] is None or s["promotion to first service write s"] > 5:
            out.append(f"slow recovery: {s}")
    if (
        figures["events wanted by the endpoint"]
        and figures["events delivered (distinct)"] < figures["events wanted by the endpoint"]
    ):
        out.append("events lost")
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.failover [--seconds N] [--switchovers N] [--crashes N]`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--switchovers", type=int, default=3)
    parser.add_argument("--crashes", type=int, default=2)
    parser.add_argument("--node-crashes", type=int, default=0, help="kill -9 the primary's keeper too: a real failover")
    parser.add_argument("--workers", type=int, default=6)
    args = parser.parse_args(argv)
    reason = why_not()
    if reason:
        sys.exit(f"cannot run: {reason}")
    with Cluster() as cluster:
        figures = asyncio.run(
            run(cluster, args.seconds, args.switchovers, args.crashes, args.workers, args.node_crashes)
        )
    print(json.dumps(figures, indent=2))
    problems = broken(figures)
    for line in problems:
        print("BROKEN", line, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
