"""A soak: the mixed workload against two `masking serve` processes on one database, then a Jepsen-style count.

    python -m tests.soak --minutes 10        (or --seconds 20)

Creates, clicks, provider reports (with duplicates, re-sends and calls that never get one), closes,
expiries and restarts of one of the two processes (SIGKILL and SIGTERM in turn) run for the given
time against the provider simulator. Meanwhile webhooks: the soak tenant's steady endpoint takes every
event, a second endpoint is registered and deleted again and again while sessions are created, and a
second tenant creates and closes 2 sessions a second with 8 endpoints that accept and never answer.
At the end it counts: reports acknowledged vs stored, clicks answered 202 vs dials the simulator
received, crossed lines, calls stuck past the report timeout, 5xx answers by route, events the steady
endpoint never received, the soak tenant's delivery delay (event created_at to receipt: p50, p99,
max), and rows per table at the start and the end. The database is MASKING_DATABASE_URL (a fresh one
is best), else an embedded PostgreSQL in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from service.provider.simulator import Fault, Simulator, simulator_app
from tests.helpers import CROSSED_LINES, dsn_for, opened_body
from tests.live import serve
from tests.processes import ServeProcess, masking_env, run_cli
from tests.receiver import Receiver

TOKEN = "soak-callback-token-0123456789"
REPORT_TIMEOUT = 10  # seconds: MASKING_CALL_REPORT_TIMEOUT_SECONDS of the soak's processes
DIDS, AGENTS, WORKERS = 60, 12, 6
HANGING_ENDPOINTS = 8  # the hanging tenant's: each accepts connections and never answers
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _route(method: str, path: str) -> str:
    return f"{method} " + _ID.sub("{id}", path.split("?")[0]).replace(TOKEN, "{token}")


def _canonical(body: bytes | dict[str, Any]) -> str:
    value = json.loads(body) if isinstance(body, bytes) else body
    return json.dumps(value, sort_keys=True)


async def _table_rows(db: asyncpg.Connection) -> dict[str, int]:
    tables = [r["tablename"] for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return {t: await db.fetchval(f'SELECT count(*) FROM "{t}"') for t in sorted(tables)}


@dataclass
class Hooks:
    """The webhook receivers: the soak tenant's steady one and the one that comes and goes, and the one that hangs."""

    steady: Receiver = field(default_factory=Receiver)
    churn: Receiver = field(default_factory=Receiver)
    stuck: Receiver = field(default_factory=lambda: Receiver(mode="hang"))
    steady_id: str = ""

    async def __aenter__(self) -> Hooks:
        for r in (self.steady, self.churn, self.stuck):
            await r.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for r in (self.steady, self.churn, self.stuck):
            await r.stop()


class Soak:
    """The workload's state: the two processes, the simulator, and everything acknowledged along the way."""

    def __init__(self, a: ServeProcess, b: ServeProcess, sim: Simulator, key: str, hung_key: str, hooks: Hooks) -> None:
        self.procs = [a, b]
        self.sim = sim
        self.auth = {"Authorization": f"Bearer {key}"}
        self.hung_auth = {"Authorization": f"Bearer {hung_key}"}
        self.hooks = hooks
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.sessions: set[str] = set()
        self.clicks: set[str] = set()  # call ids answered 202
        self.acked: Counter[str] = Counter()  # report bodies the harness re-sent and heard 200 for
        self.actions: Counter[str] = Counter()
        self.restarts = 0
        self.restarting_since: float | None = None  # when the current restart of A began (monotonic)
        self.five_xx: list[dict[str, Any]] = []  # each 5xx: route, status, code, process, call id, restart under way
        self.stop = asyncio.Event()

    async def request(self, http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """Send to a random process; on a connection failure (a restart) try the other; None if both fail."""
        first = random.randrange(2)
        for i in (first, 1 - first):
            try:
                r = await http.request(method, self.procs[i].url + path, **kwargs)
            except httpx.HTTPError:
                self.actions["connection errors"] += 1
                continue
            self.statuses[(_route(method, path), r.status_code)] += 1
            if r.status_code >= 500:
                self._note_5xx(r, method, path, "AB"[i])
            return r
        return None

    def _note_5xx(self, r: httpx.Response, method: str, path: str, process: str) -> None:
        """Keep what a 5xx says (its code and call id) and whether process A was being restarted at the time."""
        try:
            body = r.json()
        except ValueError:
            body = {}
        since = self.restarting_since
        self.five_xx.append(
            {
                "route": _route(method, path),
                "status": r.status_code,
                "code": body.get("code"),
                "call_id": body.get("call_id"),
                "process": process,
                "seconds into a restart of A": None if since is None else round(time.monotonic() - since, 1),
            }
        )

    async def worker(self, http: httpx.AsyncClient, w: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            order = f"w{w}-{n}"
            body = {
                "order_id": order,
                "customer": f"+91987{w:02d}{n:05d}",
                "agent": f"+91876{random.randrange(AGENTS):07d}",
                "ttl_seconds": random.choice([60, 3600]),
            }
            keyed = {"Idempotency-Key": order} if n % 2 else {}
            r = await self.request(http, "POST", "/v1/sessions", json=body, headers={**self.auth, **keyed})
            if r is None or r.status_code not in (200, 201):
                await asyncio.sleep(0.05)
                continue
            sid = r.json()["id"]
            self.sessions.add(sid)
            if random.random() < 0.7:
                fault = random.random()
                if fault < 0.1:
                    self.sim.inject(Fault(report="duplicate"))
                elif fault < 0.15:
                    self.sim.inject(Fault(report="none"))
                elif fault < 0.25:
                    self.sim.inject(Fault(report="missed"))
                c = await self.request(http, "POST", f"/v1/sessions/{sid}/calls", headers=self.auth)
                if c is not None and c.status_code == 202:
                    self.clicks.add(c.json()["id"])
                    await asyncio.sleep(random.uniform(0.1, 0.5))
            end = random.random()
            if end < 0.6:
                await self.request(http, "POST", f"/v1/sessions/{sid}/close", headers=self.auth)
                self.actions["closes"] += 1
            elif end < 0.75:
                await self.request(http, "POST", "/v1/sessions/expire", json={"order_id": order}, headers=self.auth)
                self.actions["expiries by ops"] += 1
            if random.random() < 0.2:
                await self.resend(http)

    async def resend(self, http: httpx.AsyncClient) -> None:
        """The provider re-sends a report it already delivered (a retry after a lost answer)."""
        if not self.sim.reports_sent:
            return
        report = random.choice(self.sim.reports_sent)
        content = json.dumps(report).encode()
        for _ in range(50):
            r = await self.request(http, "POST", f"/v1/provider/thundersms/callback/{TOKEN}", content=content)
            if r is not None and r.status_code == 200:
                self.acked[_canonical(content)] += 1
                self.actions["report re-sends"] += 1
                return
            await asyncio.sleep(0.2)

    async def churner(self, http: httpx.AsyncClient) -> None:
        """Register an endpoint for session.created, wait 0.3 s, delete it; again and again, while sessions are made."""
        body = {"url": self.hooks.churn.url, "events": ["session.created"]}
        while not self.stop.is_set():
            r = await self.request(http, "POST", "/v1/webhooks", json=body, headers=self.auth)
            if r is None or r.status_code != 201:
                await asyncio.sleep(0.3)
                continue
            self.actions["webhook endpoints registered"] += 1
            await asyncio.sleep(0.3)
            for _ in range(50):  # a 404: the delete took effect on a process killed before it answered
                d = await self.request(http, "DELETE", f"/v1/webhooks/{r.json()['id']}", headers=self.auth)
                if d is not None and d.status_code in (204, 404):
                    self.actions["webhook endpoints deleted"] += 1
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.2)

    async def hanging_tenant(self, http: httpx.AsyncClient) -> None:
        """The other tenant: 2 sessions a second, each closed at once, every event for 8 endpoints that hang."""
        n = 0
        while not self.stop.is_set():
            n += 1
            began = time.monotonic()
            body = {"order_id": f"h{n}", "customer": f"+91986{n:07d}", "agent": f"+91875{n % 4:07d}"}
            r = await self.request(http, "POST", "/v1/sessions", json=body, headers=self.hung_auth)
            if r is not None and r.status_code in (200, 201):
                self.actions["sessions of the hanging tenant"] += 1
                await self.request(http, "POST", f"/v1/sessions/{r.json()['id']}/close", headers=self.hung_auth)
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - began)))

    async def restarter(self, every: float) -> None:
        """Restart process A again and again, by SIGKILL and by SIGTERM in turn; B stays up."""
        a = self.procs[0]
        while True:
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=every)
                return
            except TimeoutError:
                pass
            self.restarting_since = time.monotonic()
            await asyncio.to_thread(a.stop, signal.SIGKILL if self.restarts % 2 == 0 else signal.SIGTERM)
            self.restarts += 1
            await asyncio.to_thread(a.start)
            self.restarting_since = None


async def run(dsn: str, seconds: float, log_dir: Path | None = None, webhook_timeout: float = 15.0) -> dict[str, Any]:
    """Run the soak for `seconds` on this (fresh) database; return the figures.

    webhook_timeout is MASKING_WEBHOOK_TIMEOUT_SECONDS: how long a hanging endpoint holds a request, and (twice
    it, plus 5 s) how long a delivery claimed by a killed process waits before another takes it up.
    """
    started = time.monotonic()
    sim = Simulator(delay=0.2)
    async with serve(simulator_app(sim)) as sim_url, Hooks() as hooks:
        env = masking_env(
            MASKING_DATABASE_URL=dsn,
            MASKING_PROVIDER="thundersms",
            MASKING_THUNDERSMS_URL=sim_url + "/api/v2/",
            MASKING_THUNDERSMS_TOKEN="soak-provider-token",
            MASKING_CALLBACK_TOKEN=TOKEN,
            MASKING_LOG_LEVEL="warning",
            MASKING_CALL_REPORT_TIMEOUT_SECONDS=str(REPORT_TIMEOUT),
            MASKING_SWEEP_INTERVAL_SECONDS="1",
            MASKING_SESSION_CALLS_PER_WINDOW="0",
            MASKING_CALLS_PER_MINUTE="0",
            MASKING_PROVIDER_TIMEOUT_SECONDS="5",
            # 12 agents on 60 DIDs: with the default hour of cool-off the pool would run dry within minutes.
            MASKING_COOLOFF_SECONDS="5",
            MASKING_WEBHOOK_ALLOW_HTTP="true",
            MASKING_WEBHOOK_ALLOW_PRIVATE="true",
            MASKING_WEBHOOK_TIMEOUT_SECONDS=str(webhook_timeout),
        )
        key, hung_key = (
            json.loads(run_cli("tenant", "create", name, "--scope", "sessions", "--scope", "ops", env=env).stdout)[
                "api_key"
            ]
            for name in ("soak", "hanging")
        )
        logs = [log_dir / f"soak-{name}.log" if log_dir else None for name in ("a", "b")]
        a, b = ServeProcess(env, log_path=logs[0]), ServeProcess(env, log_path=logs[1])
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        sim.callback_url = f"{b.url}/v1/provider/thundersms/callback/{TOKEN}"  # B is never restarted
        soak = Soak(a, b, sim, key, hung_key, hooks)
        db = await asyncpg.connect(dsn)
        try:
            async with httpx.AsyncClient(timeout=15) as http:
                dids = [{"number": f"+9180682{i:05d}"} for i in range(DIDS)]
                assert (await http.post(b.url + "/v1/dids/bulk", json={"dids": dids}, headers=soak.auth)).is_success
                dids = [{"number": f"+9180683{i:05d}"} for i in range(20)]
                assert (
                    await http.post(b.url + "/v1/dids/bulk", json={"dids": dids}, headers=soak.hung_auth)
                ).is_success
                steady = await http.post(
                    b.url + "/v1/webhooks", json={"url": hooks.steady.url, "events": ["*"]}, headers=soak.auth
                )
                assert steady.status_code == 201, steady.text
                hooks.steady.secrets, hooks.steady_id = [steady.json()["secret"]], steady.json()["id"]
                for i in range(HANGING_ENDPOINTS):
                    hung = {"url": f"{hooks.stuck.url}/{i}", "events": ["*"]}
                    assert (
                        await http.post(b.url + "/v1/webhooks", json=hung, headers=soak.hung_auth)
                    ).status_code == 201
                rows_at_start = await _table_rows(db)
                tasks = [asyncio.create_task(soak.worker(http, w)) for w in range(WORKERS)]
                tasks += [asyncio.create_task(soak.churner(http)), asyncio.create_task(soak.hanging_tenant(http))]
                restarter = asyncio.create_task(soak.restarter(every=max(3.0, seconds / 8)))
                await asyncio.sleep(seconds)
                soak.stop.set()
                await asyncio.gather(*tasks, restarter)
                stopped_at = await db.fetchval("SELECT now()")
                draining = time.monotonic()
                # Let every call get its report or time out, the simulator finish its deliveries, and every event
                # made during the run reach the steady endpoint (those a killed process had claimed: after its lease).
                deadline = time.monotonic() + max(REPORT_TIMEOUT + 20, 2 * webhook_timeout + 15)
                while time.monotonic() < deadline:
                    if (
                        not sim._tasks
                        and not await db.fetchval("SELECT count(*) FROM calls WHERE in_flight")
                        and not await _undelivered(db, hooks, stopped_at)
                    ):
                        break
                    await asyncio.sleep(0.5)
                drained = round(time.monotonic() - draining, 1)
                figures = await _count(db, soak, rows_at_start)
                figures["seconds to drain (calls, reports, webhooks)"] = drained
                figures.update(await _webhook_figures(db, soak, stopped_at))
        finally:
            await db.close()
            a.stop()
            b.stop()
    figures["seconds"] = round(time.monotonic() - started)
    unhandled = sum(p.log_path.read_text(errors="replace").count("unhandled_error") for p in (a, b))
    figures["unhandled errors in the service logs"] = unhandled
    return figures


async def _count(db: asyncpg.Connection, soak: Soak, rows_at_start: dict[str, int]) -> dict[str, Any]:
    stored = Counter(_canonical(opened_body(r["body"])) for r in await db.fetch("SELECT body FROM provider_reports"))
    acked = Counter(soak.acked)
    for report in soak.sim.reports_sent:  # every report the simulator heard 200 for
        acked[_canonical(report)] += 1
    dials = Counter(str(r.get("mid")) for r in soak.sim.requests)
    call_ids = {str(r["id"]) for r in await db.fetch("SELECT id FROM calls")}
    five_xx: dict[str, int] = {}
    for (route, status), n in sorted(soak.statuses.items()):
        if status >= 500:
            five_xx[f"{route} {status}"] = n
    return {
        "sessions created or found": len(soak.sessions),
        "clicks answered 202": len(soak.clicks),
        "dials the simulator received": sum(dials.values()),
        "202 without a dial": len(soak.clicks - set(dials)),
        "calls dialled twice": sum(1 for n in dials.values() if n > 1),
        "dials for no call": len(set(dials) - call_ids),
        "reports acknowledged": sum(acked.values()),
        "reports stored": sum(stored.values()),
        "acknowledged but not stored": sum(max(0, n - stored[body]) for body, n in acked.items()),
        "report outcomes": dict(
            await db.fetch("SELECT outcome, count(*)::int FROM provider_reports GROUP BY outcome ORDER BY outcome")
        ),
        "crossed lines": await db.fetchval(CROSSED_LINES),
        "calls stuck past the report timeout": await db.fetchval(
            "SELECT count(*)::int FROM calls WHERE in_flight AND created_at < now() - make_interval(secs => $1)",
            REPORT_TIMEOUT + 5,
        ),
        "call statuses": dict(
            await db.fetch("SELECT status, count(*)::int FROM calls GROUP BY status ORDER BY status")
        ),
        "restarts of process A": soak.restarts,
        "actions": dict(soak.actions),
        "answers by status": dict(Counter(status for (_, status), n in soak.statuses.items() for _ in range(n))),
        "5xx by route": five_xx,
        "5xx answers": soak.five_xx,
        "rows at start": rows_at_start,
        "rows at end": await _table_rows(db),
    }


async def _undelivered(db: asyncpg.Connection, hooks: Hooks, before: datetime) -> set[str]:
    """The steady endpoint's events made before `before` that it has not received (webhook ids)."""
    rows = await db.fetch(
        "SELECT event_id FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.endpoint_id = $1::uuid AND e.created_at < $2",
        hooks.steady_id,
        before,
    )
    return {f"evt_{r[0]}" for r in rows} - set(hooks.steady.delivered)


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max (nearest rank), in seconds to the millisecond."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))], 3)

    return {"count": len(ordered), "p50": rank(0.5), "p99": rank(0.99), "max": round(ordered[-1], 3)}


async def _webhook_figures(db: asyncpg.Connection, soak: Soak, stopped_at: datetime) -> dict[str, Any]:
    """The steady endpoint's deliveries: lost, duplicated, badly signed, and the delay from created_at to receipt."""
    hooks = soak.hooks
    wall = time.time() - time.monotonic()  # a monotonic arrival time plus this is the wall clock's
    attempts = {
        f"evt_{r[0]}": r[1]
        for r in await db.fetch(
            "SELECT event_id, attempts FROM webhook_deliveries WHERE endpoint_id = $1::uuid", hooks.steady_id
        )
    }
    delays, first_attempt = [], []
    for webhook_id, arrived in hooks.steady.arrived.items():
        created = datetime.fromisoformat(hooks.steady.events[webhook_id]["created_at"]).timestamp()
        delays.append(arrived + wall - created)
        if attempts.get(webhook_id) == 1:
            first_attempt.append(arrived + wall - created)
    return {
        "events the steady endpoint never received": len(await _undelivered(db, hooks, stopped_at)),
        "events the steady endpoint received twice or more": len(hooks.steady.duplicates()),
        "bad signatures at the steady endpoint": hooks.steady.bad_signatures,
        "delivery delay of the soak tenant (s)": _percentiles(delays),
        "delivery delay of the soak tenant, delivered at the first attempt (s)": _percentiles(first_attempt),
        "requests held open by the hanging endpoints": hooks.stuck.requests,
        "deliveries to the endpoint that came and went": hooks.churn.requests,
    }


def consistent(figures: dict[str, Any]) -> list[str]:
    """The broken promises in a soak's figures (empty when all hold)."""
    zero = [
        "202 without a dial",
        "calls dialled twice",
        "dials for no call",
        "acknowledged but not stored",
        "crossed lines",
        "calls stuck past the report timeout",
        "unhandled errors in the service logs",
        "events the steady endpoint never received",
        "bad signatures at the steady endpoint",
    ]
    broken = [f"{name}: {figures[name]}" for name in zero if figures[name]]
    broken += [f"5xx {route}: {n}" for route, n in figures["5xx by route"].items() if not route.endswith(" 503")]
    return broken


async def _main(seconds: float) -> int:
    if os.environ.get("MASKING_DATABASE_URL"):
        figures = await run(os.environ["MASKING_DATABASE_URL"], seconds)
    else:
        from service.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="masking-soak-")))
        base = server.start()
        try:
            admin = await asyncpg.connect(base)
            await admin.execute("CREATE DATABASE soak")
            await admin.close()
            figures = await run(dsn_for(base, "soak"), seconds)
        finally:
            server.stop()
    print(json.dumps(figures, indent=2))
    broken = consistent(figures)
    for line in broken:
        print("BROKEN", line, file=sys.stderr)
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.soak --minutes N` (or --seconds N)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--seconds", type=float)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (args.minutes or 1) * 60
    sys.exit(asyncio.run(_main(seconds)))


if __name__ == "__main__":
    main()
