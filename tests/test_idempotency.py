"""Idempotency-Key: a claim that keeps changing hands ends in a clear 409, never an unbounded retry."""

import asyncpg
import httpx

from tests.factories import create_session
from tests.helpers import Keys, add_dids, assert_problem, did_numbers


async def test_a_key_that_is_never_held_nor_claimable_ends_in_409_after_a_bounded_retry(
    client: httpx.AsyncClient, keys: Keys, db: asyncpg.Connection
) -> None:
    """When every claim fails and yet no request holds the key, the retry stops: 409 idempotency_in_flight."""
    await add_dids(client, keys.a, did_numbers(1))
    # A trigger that silently drops every claim: each attempt finds the key neither claimable nor held,
    # the state a holder that releases between our claim and our read leaves behind, made permanent.
    await db.execute(
        """
        CREATE FUNCTION drop_claim() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
        CREATE TRIGGER drop_claim BEFORE INSERT ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION drop_claim();
        """
    )
    response = await create_session(client, {**keys.a, "Idempotency-Key": "k"})
    problem = assert_problem(response, 409, "idempotency_in_flight")
    assert "retry" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
