"""The provider's report read leniently, with no database: odd values become missing, copies share one key."""

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from service.provider.reports import _time, parse_report, report_key

IST = ZoneInfo("Asia/Kolkata")
BASE = {
    "bridge": 918068281234,
    "from": 918765432109,
    "to": 919876543210,
    "source": "C2C",
    "start_at": "2026-11-28 09:30:00",
    "end_at": "2026-11-28 09:30:23",
    "date": "2026-11-28 09:30:23",
    "unixtime": "1795851623",
    "duration": "23",
    "billing": "23",
    "status": "COMPLETED",
    "status1": "RECEIVED",
    "status2": "ANSWER",
    "recording_url": "",
    "hangup_by": "caller",
}


def body(**changes: object) -> bytes:
    return json.dumps({**BASE, **changes}).encode()


def test_the_documented_shape_is_read_with_times_in_the_providers_zone() -> None:
    """Numbers unquoted, times in the provider's zone, empty strings missing."""
    report = parse_report(body(), IST)
    assert report is not None
    assert (report.bridge, report.from_, report.to) == ("+918068281234", "+918765432109", "+919876543210")
    assert report.started_at == datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
    assert (report.duration_seconds, report.billing_seconds, report.recording_url) == (23, 23, None)
    assert report.sent_at == datetime.fromtimestamp(1795851623, UTC)


def test_values_that_cannot_be_stored_as_typed_are_missing() -> None:
    """Year 1, durations beyond 32 bits, a NUL or a lone surrogate: each field is read as missing, the rest kept."""
    raw = body(start_at="0001-01-01 00:00:00", duration=99999999999, billing=3000000000, status="COMP\u0000LETED")
    report = parse_report(raw, IST)
    assert report is not None
    assert (report.started_at, report.duration_seconds, report.billing_seconds, report.status) == (None,) * 4
    assert report.ended_at is not None and report.status1 == "RECEIVED"
    odd = parse_report(b'{"bridge": 918068281234, "from": 918765432109, "to": 919876543210, "status": "\\ud800x",'
                       b' "end_at": "9999-12-31 23:59:59", "billing": "nan", "unixtime": "1e400"}', IST)  # fmt: skip
    assert odd is not None
    assert (odd.status, odd.ended_at, odd.billing_seconds, odd.sent_at) == (None, None, None, None)


def test_a_body_naming_no_call_is_unparseable() -> None:
    """Not JSON, not an object, or without bridge, from and to: nothing to match."""
    for raw in (b"", b"[]", b"{", b'{"bridge": 1}', b"[" * 1000 + b"]" * 1000, b'"\\u0000"'):
        assert parse_report(raw, IST) is None


def test_a_resent_report_has_the_same_key_whatever_its_sending_time_or_spelling() -> None:
    """Key order, strings for numbers and a new date/unixtime do not change the key; any reported fact does."""
    first = parse_report(body(), IST)
    again = json.dumps(dict(reversed(list({**BASE, "duration": 23, "date": "2026-11-28 09:31:00"}.items()))))
    resent = parse_report(again.encode(), IST)
    assert first is not None and resent is not None
    assert report_key(first) == report_key(resent)
    for changed in (body(billing="24"), body(start_at="2026-11-28 09:30:01"), body(status2="NOANSWER"), body(mid=None)):
        other = parse_report(changed, IST)
        assert other is not None
        if changed != body(mid=None):
            assert report_key(other) != report_key(first)
    with_mid = parse_report(body(mid="6b1f3c55-8f9e-4d7a-9c39-0b8f4f1f2a11"), IST)
    assert with_mid is not None and report_key(with_mid) != report_key(first)


def test_the_conversations_own_times_place_it_and_the_sending_time_only_without_them() -> None:
    """Start and end place the conversation; `unixtime` and `date` count only when both are missing."""
    stale = parse_report(body(unixtime="1827387623"), IST)  # a year after its date, as the provider's example
    assert stale is not None and stale.times() == [stale.started_at, stale.ended_at]
    only_end = parse_report(body(start_at=""), IST)
    assert only_end is not None and only_end.times() == [only_end.ended_at]
    bare = parse_report(body(start_at="", end_at=""), IST)
    assert bare is not None and bare.times() == [datetime.fromtimestamp(1795851623, UTC), bare.dated_at]
    assert bare.dated_at == datetime(2026, 11, 28, 4, 0, 23, tzinfo=UTC)
    assert report_key(parse_report(body(date="2027-01-01 00:00:00"), IST)) == report_key(parse_report(body(), IST))  # type: ignore[arg-type]


def test_report_times_are_read_as_strptime_reads_the_providers_format() -> None:
    """The time reader (a pattern, faster than strptime) accepts and refuses what strptime(%Y-%m-%d %H:%M:%S) does."""
    zone = ZoneInfo("Asia/Kolkata")
    texts = ["2026-11-26 16:27:39", "2026-1-5 1:2:3", "2026-11-26  16:27:39", "2026-11- 6 16:27:39",
             "2026-11-26T16:27:39", "2026-13-01 00:00:00", "2026-02-30 00:00:00", "2026-11-26 16:27:60",
             "2026-11-26 24:00:00", "26-11-26 16:27:39", "2026-11-26 16:27:39x", "2026-11-26", ""]  # fmt: skip
    for text in texts:
        try:
            want = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone).astimezone(UTC)
        except ValueError:
            want = None
        assert _time(text, zone) == want, text
