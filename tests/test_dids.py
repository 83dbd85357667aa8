"""The DID pool: add one or many, list with active sessions, drain and retire; CSV import for ops."""

from pathlib import Path

import asyncpg
import httpx

from tests.factories import close_session, create_session, open_session
from tests.helpers import Keys, add_dids, assert_problem, did_numbers
from tests.processes import masking_env, run_cli


async def test_adding_a_did_is_201_then_200_unchanged_and_taken_for_another_tenant(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """The same number again is 200 unchanged; the number in another tenant's pool is 409 did_taken."""
    first = await client.post("/v1/dids", json={"number": "918068200001", "pool": "blr"}, headers=keys.a)
    assert first.status_code == 201
    did = first.json()
    assert did["number"] == "+918068200001" and did["pool"] == "blr" and did["country"] == "IN"
    assert did["status"] == "active" and did["active_sessions"] == 0 and did["max_concurrent_calls"] is None
    again = await client.post("/v1/dids", json={"number": "+918068200001", "pool": "other"}, headers=keys.a)
    assert again.status_code == 200 and again.json() == did
    assert_problem(await client.post("/v1/dids", json={"number": "+918068200001"}, headers=keys.b), 409, "did_taken")


async def test_bulk_add_counts_created_and_existing(client: httpx.AsyncClient, keys: Keys) -> None:
    """A bulk add reports what it created and what was already there."""
    await add_dids(client, keys.a, did_numbers(3))
    r = await client.post("/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(5)]}, headers=keys.a)
    assert r.json() == {"created": 2, "existing": 3}


async def test_bulk_add_is_all_or_nothing_and_names_bad_entries(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """One invalid entry among many: 422 naming it by index, and nothing is added."""
    entries = [{"number": n} for n in did_numbers(10)]
    entries[7] = {"number": "+91123"}
    problem = assert_problem(
        await client.post("/v1/dids/bulk", json={"dids": entries}, headers=keys.a), 422, "invalid_request"
    )
    assert problem["invalid"] == [{"index": 7, "number": "+91123", "error": "not a valid phone number"}]
    assert await db.fetchval("SELECT count(*) FROM dids") == 0


async def test_bulk_add_with_another_tenants_number_adds_nothing(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """A bulk list holding a number tenant B owns: 409 did_taken naming it, and nothing is added."""
    await add_dids(client, keys.b, did_numbers(1, start=9))
    r = await client.post("/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(10)]}, headers=keys.a)
    assert assert_problem(r, 409, "did_taken")["numbers"] == did_numbers(1, start=9)
    assert await db.fetchval("SELECT count(*) FROM dids") == 1


async def test_bulk_add_takes_ten_thousand(client: httpx.AsyncClient, keys: Keys) -> None:
    """10,000 DIDs in one request (over 64 KiB of JSON) are all added."""
    r = await client.post("/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(10_000)]}, headers=keys.a)
    assert r.json() == {"created": 10_000, "existing": 0}
    too_many = [{"number": n} for n in did_numbers(10_001)]
    assert (await client.post("/v1/dids/bulk", json={"dids": too_many}, headers=keys.a)).status_code in (413, 422)


async def test_list_shows_active_sessions_and_filters(client: httpx.AsyncClient, keys: Keys) -> None:
    """Listing counts each DID's active sessions and filters by pool and status."""
    await add_dids(client, keys.a, did_numbers(1), pool="p1")
    await add_dids(client, keys.a, did_numbers(1, start=1), pool="p2")
    await open_session(client, keys.a, pool_name="p1", order="o", customer="+919870000001", agent="+919870000002")
    listed = (await client.get("/v1/dids", headers=keys.a)).json()["items"]
    assert {d["number"]: d["active_sessions"] for d in listed} == {did_numbers(1)[0]: 1, did_numbers(1, 1)[0]: 0}
    only_p2 = (await client.get("/v1/dids", params={"pool": "p2"}, headers=keys.a)).json()["items"]
    assert [d["pool"] for d in only_p2] == ["p2"]
    assert (await client.get("/v1/dids", headers=keys.b)).json()["items"] == []


async def test_a_draining_did_gets_no_new_sessions_but_keeps_its_current_ones(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Draining keeps current sessions going and gives no new ones; retiring waits until it is unused."""
    did = did_numbers(1)[0]
    session = await open_session(
        client, keys.a, dids=[did], order="o1", customer="+919870000001", agent="+919870000002"
    )
    r = await client.patch(f"/v1/dids/{did}", json={"status": "draining"}, headers=keys.a)
    assert r.status_code == 200 and r.json()["status"] == "draining"
    assert (await client.get(f"/v1/sessions/{session['id']}", headers=keys.a)).json()["status"] == "active"
    refused = await create_session(client, keys.a, "o2", "+919870000003", "+919870000004")
    assert assert_problem(refused, 409, "pool_exhausted")["ruled_out"]["not_active"] == 1
    assert_problem(await client.patch(f"/v1/dids/{did}", json={"status": "retired"}, headers=keys.a), 409, "did_in_use")
    await close_session(client, keys.a, session)
    retired = await client.patch(f"/v1/dids/{did}", json={"status": "retired"}, headers=keys.a)
    assert retired.status_code == 200 and retired.json()["status"] == "retired"


async def test_changing_a_did_of_another_tenant_is_404(client: httpx.AsyncClient, keys: Keys) -> None:
    """Tenant B cannot see or change tenant A's DID."""
    did = did_numbers(1)[0]
    await add_dids(client, keys.a, [did])
    assert_problem(await client.patch(f"/v1/dids/{did}", json={"status": "draining"}, headers=keys.b), 404, "not_found")
    assert_problem(
        await client.patch("/v1/dids/garbage", json={"status": "draining"}, headers=keys.a), 404, "not_found"
    )


def test_csv_import_adds_ten_thousand_rows_in_one_go(tmp_path: Path, dsn: str) -> None:
    """`masking dids import` loads 10,000 rows, with a header and per-row pools."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    assert run_cli("tenant", "create", "acme", env=env).returncode == 0
    csv_file = tmp_path / "dids.csv"
    rows = ["number,pool"] + [f"{n},{'north' if i % 2 else ''}" for i, n in enumerate(did_numbers(10_000))]
    csv_file.write_text("\n".join(rows) + "\n")
    result = run_cli("dids", "import", str(csv_file), "--pool", "south", env=env)
    assert result.returncode == 0, result.stderr
    assert '"created": 10000' in result.stdout


def test_csv_import_names_bad_rows_by_line_and_adds_nothing(tmp_path: Path, dsn: str) -> None:
    """Bad rows are reported by their line number and no row of the file is added."""
    env = masking_env(MASKING_DATABASE_URL=dsn)
    assert run_cli("tenant", "create", "acme", env=env).returncode == 0
    csv_file = tmp_path / "dids.csv"
    lines = ["number"] + did_numbers(20)
    lines[5] = "not-a-number1"
    lines[12] = "+9100"
    csv_file.write_text("\n".join(lines) + "\n")
    result = run_cli("dids", "import", str(csv_file), env=env)
    assert result.returncode == 1
    assert '"line": 6' in result.stderr and '"line": 13' in result.stderr
    counted = run_cli("dids", "import", str(tmp_path / "empty.csv"), env=env)
    assert counted.returncode != 0
