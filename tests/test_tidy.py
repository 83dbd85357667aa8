"""Tables stay bounded: the sweeper deletes idempotency keys, ended bindings and settled reports no rule needs."""

from datetime import timedelta

import asyncpg
import httpx

from service.broker import sweeps
from service.broker.sweeps import Sweeper
from service.settings import Settings
from tests.factories import close_session, create_session, open_session
from tests.helpers import AGENT, FakeClock, Keys, add_dids, did_numbers, sealed_body

DAY = 86_400


async def _sweep(db: asyncpg.Connection, settings: Settings, clock: FakeClock) -> None:
    # A new sweeper's first round tidies (one process tidies at most every 5 minutes otherwise).
    await Sweeper(settings).sweep_once(db, clock())


async def _old_key(db: asyncpg.Connection, key: str, clock: FakeClock) -> None:
    await db.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, created_at) "
        "VALUES ((SELECT min(id) FROM tenants), $1, '\\x00', $2)",
        key,
        clock() - timedelta(days=2),
    )


async def test_a_sweeper_tidies_at_most_every_5_minutes_and_keeps_its_own_schedule(
    keys: Keys, db: asyncpg.Connection, settings: Settings, clock: FakeClock
) -> None:
    """One sweeper deletes old rows on its first round, not again within 5 minutes, then again; another has its own clock."""
    sweeper = Sweeper(settings)
    await _old_key(db, "first", clock)
    await sweeper.sweep_once(db, clock())
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    await _old_key(db, "second", clock)
    clock.advance(60)
    await sweeper.sweep_once(db, clock())
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1
    await Sweeper(settings).sweep_once(db, clock())  # another app in the same process is not held back
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    await _old_key(db, "third", clock)
    clock.advance(4 * 60)
    await sweeper.sweep_once(db, clock())
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_idempotency_keys_are_deleted_after_their_24_hours(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, settings: Settings, clock: FakeClock
) -> None:
    """A keyed create's record is replayed within 24 h and deleted by the sweeper after; a newer key stays."""
    await add_dids(client, keys.a, did_numbers(2))
    first = await create_session(client, {**keys.a, "Idempotency-Key": "k1"}, "o1")
    clock.advance(DAY - 60)
    await create_session(client, {**keys.a, "Idempotency-Key": "k2"}, "o2", agent="+918765432100")
    await _sweep(db, settings, clock)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 2
    replay = await create_session(client, {**keys.a, "Idempotency-Key": "k1"}, "o1")
    assert replay.json()["id"] == first.json()["id"]
    clock.advance(61)
    await _sweep(db, settings, clock)
    assert [r["key"] for r in await db.fetch("SELECT key FROM idempotency_keys")] == ["k2"]


async def test_ended_bindings_go_after_the_cool_off_and_sticky_memory_but_not_before(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, settings: Settings, clock: FakeClock
) -> None:
    """A closed session's bindings stay (sticky, cool-off) until the longer window passes, then are deleted."""
    await add_dids(client, keys.a, did_numbers(3))
    s = await open_session(client, keys.a, order="o1")
    live = await open_session(client, keys.a, order="o2", customer="+919876500000")
    await close_session(client, keys.a, s)
    assert settings.sticky_memory_seconds == 7 * DAY > settings.cooloff_seconds
    clock.advance(7 * DAY - 60)
    # the active one must outlive the window too: extend it
    await db.execute("UPDATE sessions SET expires_at = $2 WHERE id = $1::uuid", live["id"], clock() + timedelta(days=1))
    await db.execute(
        "UPDATE bindings SET ends_at = $2 WHERE session_id = $1::uuid", live["id"], clock() + timedelta(days=1)
    )
    await _sweep(db, settings, clock)
    assert await db.fetchval("SELECT count(*) FROM bindings WHERE session_id = $1::uuid", s["id"]) == 2
    again = await open_session(client, keys.a, order="o3")
    assert again["masked_number"] == s["masked_number"]  # sticky: the pair gets its DID back
    await close_session(client, keys.a, again)
    clock.advance(7 * DAY + 1)
    await _sweep(db, settings, clock)
    assert await db.fetchval("SELECT count(*) FROM bindings WHERE session_id = $1::uuid", again["id"]) == 0


async def test_settled_reports_are_deleted_after_the_report_retention_pending_ones_never(
    db: asyncpg.Connection, settings: Settings, clock: FakeClock
) -> None:
    """Matched, unmatched, duplicate and unparseable reports older than 30 days go; a pending one stays."""
    for outcome in ("matched", "unmatched", "duplicate", "unparseable", "pending"):
        await db.execute(
            "INSERT INTO provider_reports (received_at, body, outcome) VALUES ($1, $2, $3)",
            clock() - timedelta(days=31),
            sealed_body(b'{"bridge": 1}'),
            outcome,
        )
    await db.execute(
        "INSERT INTO provider_reports (received_at, body, outcome) VALUES ($1, $2, 'matched')",
        clock(),
        sealed_body(b"x"),
    )
    # a pending report this old would be matched or timed out by the sweep itself; keep it pending here
    await sweeps.tidy(db, settings, clock())
    assert sorted(r["outcome"] for r in await db.fetch("SELECT outcome FROM provider_reports")) == [
        "matched",
        "pending",
    ]


async def test_refusal_counts_are_kept_a_day(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, settings: Settings, clock: FakeClock
) -> None:
    """A refused create is counted in its pool's minute; the sweeper deletes the count a day later, not before."""
    await add_dids(client, keys.a, did_numbers(1))
    await open_session(client, keys.a, order="o1")
    for order in ("o2", "o3"):
        refused = await create_session(client, keys.a, order)
        assert refused.json()["code"] == "pool_exhausted"
    assert [tuple(r) for r in await db.fetch("SELECT pool, refused FROM pool_refusals")] == [("default", 2)]
    clock.advance(DAY - 60)
    await sweeps.tidy(db, settings, clock())
    assert await db.fetchval("SELECT count(*) FROM pool_refusals") == 1
    clock.advance(120)
    await sweeps.tidy(db, settings, clock())
    assert await db.fetchval("SELECT count(*) FROM pool_refusals") == 0


async def test_in_steady_state_every_table_stays_bounded(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection, settings: Settings, clock: FakeClock
) -> None:
    """Sessions created with keys and closed at a constant rate for 40 simulated days: keys, bindings, reports, report
    identities, events and the events' day partitions level off."""
    await add_dids(client, keys.a, did_numbers(5))
    sizes, partitions = [], []
    for day in range(40):
        for i in range(5):
            keyed = {**keys.a, "Idempotency-Key": f"{day}-{i}"}
            session = await open_session(
                client, keyed, order=f"d{day}-{i}", customer=f"+91987{day:03d}{i:04d}", agent=AGENT
            )
            report_id = await db.fetchval(
                "INSERT INTO provider_reports (received_at, body, outcome) VALUES ($1, $2, 'unmatched') RETURNING id",
                clock(),
                sealed_body(b"x"),
            )
            await db.execute(
                "INSERT INTO report_keys (key, report_id, received_at) VALUES (sha256($1::bytea), $2, $3)",
                f"{day}-{i}".encode(),
                report_id,
                clock(),
            )
            await close_session(client, keys.a, session)
        clock.advance(DAY)
        await _sweep(db, settings, clock)
        sizes.append(
            (
                await db.fetchval("SELECT count(*) FROM idempotency_keys"),
                await db.fetchval("SELECT count(*) FROM bindings"),
                await db.fetchval("SELECT count(*) FROM provider_reports"),
                await db.fetchval("SELECT count(*) FROM report_keys"),
                await db.fetchval("SELECT count(*) FROM events"),
            )
        )
        partitions.append(await db.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass"))
    print(
        "\nrows (idempotency_keys, bindings, provider_reports, report_keys, events) on days 10, 20, 30, 40:"
        f" {sizes[9::10]}; events' partitions {partitions[9::10]}"
    )
    assert sizes[-1] == sizes[-11]  # level: what one day adds, the sweep takes away
    # the first day partitions appear on day 1, the first is dropped on day 31: level from there
    assert partitions[-1] == partitions[-9]
    keys_rows, binding_rows, report_rows, report_key_rows, event_rows = sizes[-1]
    event_partitions = partitions[-1]
    assert keys_rows <= 5 and binding_rows <= 8 * 5 + 5 and report_rows <= 31 * 5 and report_key_rows <= 31 * 5
    # 10 events a day (5 created, 5 closed) for the 30 days of retention and the day being dropped; the
    # day partitions of those days and 3 ahead, and the default partition
    assert event_rows <= 31 * 10 and event_partitions <= 31 + 3 + 1
