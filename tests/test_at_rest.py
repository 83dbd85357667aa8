"""Issue 20's acceptance test: after a realistic mix over real HTTP, no party number is in clear anywhere at rest.

`masking serve` runs on an embedded PostgreSQL of this test's own (its logging as shipped), the provider
simulator and a webhook receiver on loopback. Then every byte of every file under the data folder
(tables, indexes, WAL, the server's log), the service's log and a logical dump of every table are searched
for each number used, in E.164, bare-digit and national forms. A canary number written in clear on purpose
proves the scan finds what it looks for in each of those places.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import phonenumbers

from service.embedded import EmbeddedPostgres
from service.provider.simulator import Fault, Simulator, simulator_app
from tests.helpers import dsn_for, wait_for
from tests.live import CALLBACK_TOKEN, serve
from tests.processes import ServeProcess, masking_env, run_cli
from tests.receiver import Receiver
from tests.scan import Finding, Layout, Needles, Report, masked
from tests.test_console_pages import unmatched_report

CALLBACK = f"/v1/provider/thundersms/callback/{CALLBACK_TOKEN}"
ROUTE = f"/v1/provider/thundersms/route/{CALLBACK_TOKEN}"
DIDS = [f"+9180682{i:05d}" for i in range(16)]
SESSIONS = 36
JSON_PRESS = {"Accept": "application/json", "Content-Type": "application/json"}
# PostgreSQL's settings that say where and what it logs (reported with the scan).
SERVER_LOGGING = [
    "data_directory",
    "logging_collector",
    "log_directory",
    "log_destination",
    "log_min_messages",
    "log_min_error_statement",
    "log_statement",
    "log_parameter_max_length_on_error",
]


class Numbers:
    """Fresh, valid Indian mobile numbers (+9198xxxxxxxx), each used once, all remembered for the scan."""

    def __init__(self) -> None:
        self.rng = random.SystemRandom()
        self.used: list[str] = []

    def new(self) -> str:
        while True:
            number = f"+9198{self.rng.randrange(10**8):08d}"
            if number not in self.used and phonenumbers.is_valid_number(phonenumbers.parse(number)):
                self.used.append(number)
                return number


@asynccontextmanager
async def embedded(data_dir: Path) -> AsyncIterator[str]:
    """The test's own embedded PostgreSQL (the one `masking serve` joins on the same folder), stopped on exit."""
    server = EmbeddedPostgres(data_dir)
    try:
        yield await asyncio.to_thread(server.start)
    finally:
        await asyncio.to_thread(server.stop)


@asynccontextmanager
async def masking_serve(env: dict[str, str], cwd: Path, log: Path) -> AsyncIterator[ServeProcess]:
    """`masking serve` (and its workers), stopped on exit whatever happened."""
    service = ServeProcess(env, cwd=cwd, log_path=log)
    await asyncio.to_thread(service.start, 90)
    try:
        yield service
    finally:
        await asyncio.to_thread(service.stop)


class Mix:
    """A marketplace backend, its ops and its provider working one tenant through the service over HTTP."""

    def __init__(
        self, http: httpx.AsyncClient, sim: Simulator, receiver: Receiver, numbers: Numbers, pg_log: Path
    ) -> None:
        self.http, self.sim, self.receiver, self.numbers, self.pg_log = http, sim, receiver, numbers, pg_log
        self.sessions: list[dict[str, Any]] = []
        self.notes: list[str] = []

    async def ok(self, request: Awaitable[httpx.Response], *codes: int) -> Any:
        """The response's JSON (or the response) after checking its status; a failure shows numbers masked."""
        r = await request
        wanted = codes or (200,)
        assert r.status_code in wanted, masked(
            f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:500]}"
        )
        return r.json() if r.headers.get("content-type", "").endswith("json") else r

    async def create(
        self, order: str, customer: str, agent: str, key: str | None = None, **body: Any
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        body = {"order_id": order, "customer": customer, "agent": agent, "metadata": {"city": "Pune"}, **body}
        session: dict[str, Any] = await self.ok(self.http.post("/v1/sessions", json=body, headers=headers), 200, 201)
        return session

    async def call(self, session: dict[str, Any], first: str = "agent", fault: Fault | None = None) -> dict[str, Any]:
        if fault:
            self.sim.inject(fault)
        call: dict[str, Any] = await self.ok(
            self.http.post(f"/v1/sessions/{session['id']}/calls", json={"first": first}), 202
        )
        return call

    async def outcome(self, call_id: str) -> str:
        async def reported() -> str | None:
            status: str = (await self.ok(self.http.get(f"/v1/calls/{call_id}")))["status"]
            return None if status == "initiated" else status

        result: str = await wait_for(reported, within=20)
        return result

    async def run(self, service_url: str) -> None:
        await self.setup()
        await self.open_sessions()
        await self.provoke_unique_violation()
        await self.reassign()
        await self.place_calls(service_url)
        await self.provider_extras()
        await self.reads()
        await self.end_sessions()
        await self.console(service_url)
        await self.events_and_webhooks()

    async def setup(self) -> None:
        """DIDs in two pools, and a webhook endpoint for every event."""
        await self.ok(self.http.post("/v1/dids/bulk", json={"dids": [{"number": d} for d in DIDS[:12]]}))
        city = {"dids": [{"number": d, "pool": "city"} for d in DIDS[12:]]}
        await self.ok(self.http.post("/v1/dids/bulk", json=city))
        hook = await self.ok(self.http.post("/v1/webhooks", json={"url": self.receiver.url, "events": ["*"]}), 201)
        self.receiver.secrets.append(hook["secret"])

    async def open_sessions(self) -> None:
        """Each customer new, riders serving several orders; a third made with an Idempotency-Key and retried
        with it, one retried without; one in the other pool; two identical creates at once (one session)."""
        n = self.numbers
        agents = [n.new() for _ in range(8)]
        for i in range(SESSIONS):
            key = f"idem-{i}" if i % 3 == 0 else None
            self.sessions.append(await self.create(f"ORD-{1000 + i}", n.new(), agents[i % len(agents)], key))
        for i in (0, 3):
            s = self.sessions[i]
            assert (await self.create(s["order_id"], s["customer"], s["agent"], f"idem-{i}"))["id"] == s["id"]
        s = self.sessions[1]
        assert (await self.create(s["order_id"], s["customer"], s["agent"]))["id"] == s["id"]
        self.sessions.append(await self.create("ORD-CITY", n.new(), n.new(), pool="city"))
        pair = (n.new(), n.new())
        twins = await asyncio.gather(*(self.create("ORD-TWINS", *pair) for _ in range(2)))
        assert twins[0]["id"] == twins[1]["id"]

    async def provoke_unique_violation(self, rounds: int = 8) -> None:
        """Two live sessions of one order, moved onto the same new pair at once, until the database's unique key
        refuses one of them (PostgreSQL logs the key's values with the error)."""
        n = self.numbers
        for round_ in range(1, rounds + 1):
            customer, agent = n.new(), n.new()
            both = [await self.create(f"ORD-RACE-{round_}", customer, n.new()) for _ in range(2)]
            answers = await asyncio.gather(
                *(self.http.patch(f"/v1/sessions/{s['id']}", json={"agent": agent}) for s in both)
            )
            assert sorted(r.status_code for r in answers) == [200, 409], [r.status_code for r in answers]
            if b"duplicate key value violates unique constraint" in self.pg_log.read_bytes():
                self.notes.append(f"unique violation logged by PostgreSQL in race {round_}")
                return
        self.notes.append(f"no unique violation in PostgreSQL's log after {rounds} races")

    async def reassign(self) -> None:
        """New riders and new customer numbers (moving DID when they must), and a longer life."""
        n = self.numbers
        for s in self.sessions[4:8]:
            await self.ok(self.http.patch(f"/v1/sessions/{s['id']}", json={"agent": n.new(), "allow_new_number": True}))
        for s in self.sessions[8:10]:
            body = {"customer": n.new(), "allow_new_number": True}
            await self.ok(self.http.patch(f"/v1/sessions/{s['id']}", json=body))
        await self.ok(self.http.patch(f"/v1/sessions/{self.sessions[10]['id']}", json={"ttl_seconds": 7200}))
        for i in range(4, 10):  # as the sessions are now
            self.sessions[i] = await self.ok(self.http.get(f"/v1/sessions/{self.sessions[i]['id']}"))

    async def place_calls(self, service_url: str) -> None:
        """Click-to-call through the simulator: completed either way round, missed, a report sent three times,
        and an agent's call link opened and pressed."""
        firsts = ["agent", "customer"] * 4
        calls = [await self.call(s, first) for s, first in zip(self.sessions[:8], firsts, strict=True)]
        calls.append(await self.call(self.sessions[8], fault=Fault(report="missed")))
        calls.append(await self.call(self.sessions[9], fault=Fault(report="duplicate")))
        body = {"party": "agent", "max_uses": 3}
        link = await self.ok(self.http.post(f"/v1/sessions/{self.sessions[11]['id']}/call-links", json=body), 201)
        path = "/c/" + link["url"].rsplit("/c/", 1)[1]
        async with httpx.AsyncClient(base_url=service_url, timeout=30) as phone:
            page = await phone.get(path, headers={"Accept": "text/html"})
            assert page.status_code == 200, masked(page.text[:500])
            pressed = await phone.post(path, headers=JSON_PRESS, content=b"{}")
            assert pressed.status_code == 202, masked(pressed.text[:500])
            calls.append(pressed.json())
            outcomes = [await self.outcome(c["id"]) for c in calls]
            assert (await phone.get(path + "/status")).status_code == 200
        assert outcomes.count("completed") == len(calls) - 1 and "missed" in outcomes, outcomes

    async def provider_extras(self) -> None:
        """The provider re-sends a report it already sent, reports a call no session knows, and asks where to
        route a customer calling the masked number back, and a stranger."""

        async def all_sent() -> bool:  # 11 calls, one of them reported three times
            return len(self.sim.reports_sent) >= 13

        await wait_for(all_sent, within=20)
        resent = await self.http.post(CALLBACK, content=json.dumps(self.sim.reports_sent[0]).encode())
        assert resent.status_code == 200, masked(resent.text)
        stranger, other = self.numbers.new(), self.numbers.new()
        unmatched = await self.http.post(CALLBACK, content=unmatched_report(DIDS[0], stranger, other))
        assert unmatched.status_code == 200, masked(unmatched.text)

        async def listed() -> bool:
            return bool((await self.ok(self.http.get("/v1/reports", params={"matched": "false"})))["items"])

        await wait_for(listed, within=20)
        s = self.sessions[12]
        routed = await self.ok(
            self.http.get(ROUTE, params={"did": s["masked_number"][1:], "caller": s["customer"][1:]})
        )
        connected = routed["connect_to"] == s["agent"][1:]
        assert connected, "the customer calling back was not routed to the session's agent"
        nobody = await self.http.get(ROUTE, params={"did": DIDS[1][1:], "caller": self.numbers.new()[1:]})
        assert nobody.status_code == 404, masked(nobody.text)

    async def reads(self) -> None:
        """What a backend reads: sessions by customer, one session, its calls."""
        for s in self.sessions[12:15]:
            found = await self.ok(self.http.get("/v1/sessions", params={"customer": s["customer"]}))
            assert [x["id"] for x in found["items"]] == [s["id"]]
            await self.ok(self.http.get(f"/v1/sessions/{s['id']}"))
            await self.ok(self.http.get(f"/v1/sessions/{s['id']}/calls"))

    async def end_sessions(self) -> None:
        """Closed by the client; expired by ops by order, by customer and by agent."""
        for s in self.sessions[15:20]:
            await self.ok(self.http.post(f"/v1/sessions/{s['id']}/close", json={"reason": "order delivered"}))
        for field, s in (
            ("order_id", self.sessions[20]),
            ("customer", self.sessions[21]),
            ("agent", self.sessions[22]),
        ):
            expired = await self.ok(self.http.post("/v1/sessions/expire", json={field: s[field]}))
            assert expired["expired"] >= 1

    async def events_and_webhooks(self) -> None:
        """Every event read back through the feed; the webhook endpoint receives each of them."""
        events: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "100", **({"after": cursor} if cursor else {})}
            page = await self.ok(self.http.get("/v1/events", params=params))
            events += page["items"]
            if not page["items"] or not page.get("next_cursor"):
                break
            cursor = page["next_cursor"]
        wanted = {"session.created", "session.updated", "session.closed", "call.completed", "call.missed"}
        assert wanted | {"report.unmatched"} <= {e["type"] for e in events}

        async def delivered() -> bool:
            return len(self.receiver.delivered) >= len(events)

        await wait_for(delivered, within=30)
        assert self.receiver.bad_signatures == 0
        self.notes.append(f"{len(events)} events read, {len(self.receiver.delivered)} delivered to the webhook")

    async def console(self, service_url: str) -> None:
        """Ops in the console: sign in, search by a party's number, open a session, press Reveal when the console
        has it, look at the calls and reports pages, sign out."""
        key = self.http.headers["Authorization"].removeprefix("Bearer ")
        target = self.sessions[13]
        async with httpx.AsyncClient(base_url=service_url, timeout=30) as browser:
            form = await browser.get("/console/sign-in")
            token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
            assert token is not None, masked(form.text[:500])
            signed = await browser.post("/console/sign-in", data={"_csrf_token": token.group(1), "key": key})
            assert signed.status_code == 303, masked(signed.text[:500])
            search = {"q": target["customer"], "_csrf_token": token.group(1)}  # posted: no number in a URL
            found = await browser.post("/console/sessions", data=search)
            assert found.status_code == 200 and target["id"] in found.text, masked(found.text[:500])
            page = await browser.get(f"/console/sessions/{target['id']}")
            assert page.status_code == 200, masked(page.text[:500])
            reveal = re.search(r'<form[^>]*action="([^"]*reveal[^"]*)"(.*?)</form>', page.text, re.S | re.I)
            if reveal is None:
                self.notes.append("console: no Reveal on a session's page yet, skipped")
            else:
                fields = form_fields(reveal.group(2), "customer dispute, ticket 4471")
                shown = await browser.post(reveal.group(1), data=fields, follow_redirects=True)
                assert shown.status_code == 200, masked(shown.text[:500])
                revealed = target["customer"] in shown.text
                assert revealed, "Reveal did not show the session's customer number"
                self.notes.append("console: Reveal pressed")
            for where in ("/console/calls", "/console/reports", "/console/sessions"):
                assert (await browser.get(where)).status_code == 200, where
            csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
            if csrf is not None:
                await browser.post("/console/sign-out", data={"_csrf_token": csrf.group(1)})


def form_fields(form: str, words: str) -> dict[str, str]:
    """What a person submits with a form: its filled fields as they are, every empty one (the reason) with words."""
    fields: dict[str, str] = {}
    for tag in re.findall(r"<(?:input|textarea)\b[^>]*>", form, re.I):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        if "name" in attrs and attrs.get("type") not in ("submit", "button"):
            fields[attrs["name"]] = attrs.get("value") or words
    return fields


async def databases(dsn: str) -> list[str]:
    """Every database of the server one can connect to."""
    admin = await asyncpg.connect(dsn)
    try:
        return [r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database WHERE datallowconn")]
    finally:
        await admin.close()


# Each relation's file under the data folder, what it is, and for TOAST (and its index) the table it serves.
RELATIONS = """
SELECT pg_relation_filepath(c.oid) AS path, c.relkind::text AS kind, c.relname AS name,
       (SELECT o.relname FROM pg_class o
        WHERE o.reltoastrelid IN (c.oid, (SELECT indrelid FROM pg_index WHERE indexrelid = c.oid))) AS toast_of
FROM pg_class c WHERE pg_relation_filepath(c.oid) IS NOT NULL
"""
KINDS = {"r": "table", "i": "index", "t": "toast", "S": "sequence", "m": "view"}


async def relation_files(dsn: str) -> dict[str, str]:
    """Each relation file's path under the data folder (base/5/16470) -> what it is ("table postgres.sessions")."""
    names: dict[str, str] = {}
    for db in await databases(dsn):
        conn = await asyncpg.connect(dsn_for(dsn, db))
        try:
            for r in await conn.fetch(RELATIONS):
                kind, name = (
                    ("toast", r["toast_of"]) if r["toast_of"] else (KINDS.get(r["kind"], "relation"), r["name"])
                )
                names[r["path"]] = f"{kind} {db}.{name}"
        finally:
            await conn.close()
    return names


async def dump(dsn: str, needles: Needles, report: Report) -> None:
    """Every row of every table of every database, as a dump would hold them, searched too (TOAST-compressed
    values escape a byte scan; a dump shows them whole)."""
    for name in await databases(dsn):
        conn = await asyncpg.connect(dsn_for(dsn, name))
        try:
            tables = await conn.fetch(
                "SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            )
            for table in tables:
                rows = await conn.fetch(f"SELECT * FROM {table['t']}")  # names from the catalog
                text = b"\n".join(
                    v if isinstance(v, bytes) else str(v).encode()
                    for row in rows
                    for v in row.values()
                    if v is not None
                )
                report.add(Finding(f"{name}.{table['t']}", "dump", needles.find(text)))
        finally:
            await conn.close()


async def scan_everything(dsn: str, data_dir: Path, service_log: Path, needles: Needles) -> tuple[Report, str]:
    """CHECKPOINT and a WAL switch, then the byte scan of the data folder, wherever else the server logs, and the
    service's log, and the dump; also how the server logs (as shipped: this test changes none of it)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
        await conn.execute("SELECT pg_switch_wal()")
        await conn.execute("CHECKPOINT")
        settings = dict(await conn.fetch("SELECT name, setting FROM pg_settings WHERE name = ANY($1)", SERVER_LOGGING))
        current_log = await conn.fetchval("SELECT pg_current_logfile()")
    finally:
        await conn.close()
    layout = Layout.of(settings, current_log, await relation_files(dsn))
    report = await asyncio.to_thread(layout.scan, data_dir, [service_log], needles)
    await dump(dsn, needles, report)
    logging = ", ".join(f"{k}={settings[k]}" for k in SERVER_LOGGING if k != "data_directory")
    return report, logging


async def plant_canaries(dsn: str, numbers: Numbers) -> tuple[str, str]:
    """Two numbers written in clear on purpose (a table row each form, and a statement error in the server's log)."""
    e164, digits = numbers.new(), numbers.new()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE scan_canary (number text)")
        await conn.execute("INSERT INTO scan_canary VALUES ($1), ($2)", e164, digits[1:])
        try:
            await conn.execute(f"SELECT '{e164}'::date")
        except asyncpg.PostgresError:
            pass
        else:
            raise AssertionError("the canary's statement error did not happen")
    finally:
        await conn.close()
    return e164, digits


async def drop_canaries(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS scan_canary")
    finally:
        await conn.close()


def test_the_scan_tells_a_numbers_forms_apart_and_shows_numbers_only_masked() -> None:
    """E.164, bare-digit and national copies are each counted in their form, other digits are not; the failure
    message and the scan's reprs show numbers masked."""
    needles = Needles(["+919812345678", "+919898765432"])
    data = b'{"to": "+919812345678"} from=919812345678 09812345678 \x00\x019898765432\xff 9812345679 +9198123'
    found = needles.find(data)
    assert found == Counter(
        {
            ("+919812345678", "e164"): 1,
            ("+919812345678", "digits"): 1,
            ("+919812345678", "national"): 1,
            ("+919898765432", "national"): 1,
        }
    )
    report = Report()
    report.add(Finding("base/5/16470", "table postgres.sessions", found))
    shown = report.summary(2) + repr(report) + repr(report.findings) + masked("call 919812345678 now")
    assert "9812345678" not in shown and "9898765432" not in shown
    assert "+91******5678" in shown and "e164 1, digits 1, national 2" in shown


async def test_after_a_realistic_mix_no_party_number_is_in_clear_in_any_database_file_or_log(tmp_path: Path) -> None:
    """Sessions, reassignment, calls and reports (incl. unmatched and duplicate), events, webhooks, call links and
    the console leave no party number in clear in any table, index, WAL segment, server log line or service log line."""
    started = time.monotonic()
    data_dir = tmp_path / "masking"
    service_log = tmp_path / "serve.log"
    numbers = Numbers()
    sim = Simulator(delay=0.05)
    env = masking_env(
        MASKING_DATA_DIR=str(data_dir),
        MASKING_PROVIDER="thundersms",
        MASKING_THUNDERSMS_TOKEN="provider-token-xyz",
        MASKING_CALLBACK_TOKEN=CALLBACK_TOKEN,
        MASKING_PROVIDER_TIMEOUT_SECONDS="30",
        MASKING_WEBHOOK_ALLOW_HTTP="true",
        MASKING_WEBHOOK_ALLOW_PRIVATE="true",
        MASKING_WEBHOOK_POLL_SECONDS="0.05",
        MASKING_WEBHOOK_RETRY_SECONDS="0.2,0.2,0.2",
        MASKING_LOG_LEVEL="debug",
    )
    async with embedded(data_dir) as dsn:
        try:
            async with serve(simulator_app(sim)) as sim_url, Receiver() as receiver:
                env["MASKING_THUNDERSMS_URL"] = sim_url + "/api/v2/"
                async with masking_serve(env, tmp_path, service_log) as service:
                    sim.callback_url = service.url + CALLBACK
                    made = await asyncio.to_thread(
                        run_cli, "tenant", "create", "shop", "--scope", "ops", env=env, cwd=tmp_path
                    )
                    assert made.returncode == 0, made.stderr
                    key = json.loads(made.stdout)["api_key"]
                    auth = {"Authorization": f"Bearer {key}"}
                    async with httpx.AsyncClient(base_url=service.url, headers=auth, timeout=30) as http:
                        mix = Mix(http, sim, receiver, numbers, data_dir / "pg" / "log")
                        await mix.run(service.url)
            mixed = time.monotonic() - started
            party = list(numbers.used)
            canary_e164, canary_digits = await plant_canaries(dsn, numbers)
            scanning = time.monotonic()
            report, logging = await scan_everything(dsn, data_dir, service_log, Needles(numbers.used))
            scanned = time.monotonic() - scanning
        finally:
            await drop_canaries(dsn)

    # The scan bites: the canaries are found in a table's file, the WAL, the server's log and the dump, in their forms.
    e164_in = {f.kind.split(" ", 1)[0]: f.forms() for f in report.of(canary_e164)}
    digits_in = {f.kind.split(" ", 1)[0]: f.forms() for f in report.of(canary_digits)}
    bites = all(e164_in.get(kind, {}).get("e164") for kind in ("table", "WAL", "server-log", "dump")) and all(
        digits_in.get(kind, {}).get("digits") for kind in ("table", "WAL", "dump")
    )
    assert bites, f"the scan missed a canary written in clear: E.164 found in {e164_in}, bare digits in {digits_in}"
    # ... and the service's log it scanned is the service's own, with its start-up and request lines.
    lines = service_log.read_text(errors="replace")
    assert "serving" in lines and "/v1/sessions" in lines, "the service's log holds none of its lines"

    leaks = report.without({canary_e164, canary_digits})
    print(
        f"\nat-rest scan: {len(party)} party numbers; mix {mixed:.0f} s, scan {scanned:.0f} s, "
        f"total {time.monotonic() - started:.0f} s; "
        f"{'; '.join(mix.notes)}; server logging: {logging}\n{leaks.summary(len(party))}"
    )
    hits = leaks.total
    assert hits == 0, "party numbers are stored in clear at rest (issue 20):\n" + leaks.summary(len(party))
