"""The pure parts, without a database: numbers, rate buckets, exhaustion sentences, named SQL parameters."""

from datetime import timedelta

import pytest

from service.broker import limits
from service.broker.errors import InvalidPhoneNumber, RateLimited, parse_id
from service.broker.phones import normalize, parse_with_region, provider_digits
from service.broker.sessions.create import exhausted as _exhausted
from service.db import Query
from service.db.sessions import Exhaustion


@pytest.mark.parametrize("given", ["+919876543210", "919876543210", " +919876543210 "])
def test_a_number_with_or_without_plus_becomes_e164(given: str) -> None:
    """E.164 with or without the leading + is accepted and returned with +."""
    assert normalize(given, "customer") == "+919876543210"


@pytest.mark.parametrize("given", ["12345", "+91 98765 43210", "abc", "+0019876543210", "9" * 40, ""])
def test_anything_else_is_invalid_naming_the_field(given: str) -> None:
    """Short, spaced, lettered, overlong or empty input is invalid_phone_number naming its field."""
    with pytest.raises(InvalidPhoneNumber) as caught:
        normalize(given, "agent")
    assert caught.value.extra == {"field": "agent"} and "`agent`" in caught.value.detail


def test_the_region_comes_from_phonenumbers_and_the_provider_gets_digits() -> None:
    """A number's ISO region is phonenumbers', and the provider's form drops the +."""
    assert parse_with_region("+14155550123", "customer") == ("+14155550123", "US")
    assert provider_digits("+919876543210") == "919876543210"


def test_a_token_bucket_allows_its_burst_then_says_when_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """60 a minute: 60 at once pass, the 61st is refused with a retry time, and a second later one passes."""
    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    buckets = limits.TokenBuckets(60)
    for _ in range(60):
        buckets.take("tenant", "sessions")
    with pytest.raises(RateLimited) as caught:
        buckets.take("tenant", "sessions")
    assert caught.value.extra["retry_after"] == 1 and "60 sessions a minute" in caught.value.detail
    buckets.take("other", "sessions")  # another key has its own bucket
    now[0] += 1.0
    buckets.take("tenant", "sessions")


def test_a_zero_cap_means_no_cap() -> None:
    """MASKING_SESSIONS_PER_MINUTE=0 turns the bucket off."""
    buckets = limits.TokenBuckets(0)
    for _ in range(1000):
        buckets.take("tenant", "sessions")


def test_the_exhaustion_sentence_counts_each_rule() -> None:
    """pool_exhausted says how many DIDs each rule ruled out, and what to do."""
    error = _exhausted("default", Exhaustion(pool_dids=5, not_active=1, other_country=0, party_busy=3, cooling_off=1))
    assert error.code == "pool_exhausted"
    assert "all 5 are ruled out (1 not active, 3 party busy, 1 cooling off)" in error.detail
    assert "add DIDs" in error.detail
    assert error.extra["ruled_out"] == {"not_active": 1, "other_country": 0, "party_busy": 3, "cooling_off": 1}


def test_an_empty_pool_says_to_add_dids() -> None:
    """A pool with no DID at all says so rather than listing rules."""
    error = _exhausted("p", Exhaustion(pool_dids=0, not_active=0, other_country=0, party_busy=0, cooling_off=0))
    assert "has no DIDs" in error.detail and error.extra["pool_dids"] == 0


def test_named_parameters_number_in_order_of_first_use_and_skip_casts() -> None:
    """:name becomes $n by first appearance; ::casts and quoted colons are left alone."""
    q = Query("SELECT :b::text, :a, :b, 'flow:' || :a, now() - :gap::interval")
    assert q.sql == "SELECT $1::text, $2, $1, 'flow:' || $2, now() - $3::interval"
    assert q.args({"a": 1, "b": 2, "gap": timedelta(seconds=3)}) == [2, 1, timedelta(seconds=3)]
    with pytest.raises(KeyError, match="gap"):
        q.args({"a": 1, "b": 2})


def test_a_path_id_that_is_not_a_uuid_is_simply_not_found() -> None:
    """A malformed id reads as a missing resource, never as a server error."""
    with pytest.raises(Exception, match="No session with that id"):
        parse_id("not-a-uuid", "session")
    assert str(parse_id("0b7d9b84-3c2a-4b8e-9f61-2d5e7c1a9b30", "call")) == "0b7d9b84-3c2a-4b8e-9f61-2d5e7c1a9b30"
