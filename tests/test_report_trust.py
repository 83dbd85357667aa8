"""Reports that cannot be trusted whole: the conversation's own times decide, a re-send never finishes a newer call,
and the provider's free text on a refused click reaches no agent and no log unmasked."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import structlog

from service.provider.simulator import Fault
from tests.factories import open_session, report_for
from tests.helpers import Keys, assert_problem
from tests.live import Live, live_service
from tests.test_reports import click, outcomes, read

DID = "+918068281234"
YEAR = timedelta(days=365)


@pytest.fixture
async def live(dsn: str) -> Any:
    async with live_service(dsn) as service:
        yield service


@pytest.mark.parametrize("offset", [YEAR, -YEAR], ids=["unixtime_a_year_after", "unixtime_a_year_before"])
async def test_the_providers_example_timed_now_with_a_stale_unixtime_completes_its_call(
    live: Live, keys: Keys, db: asyncpg.Connection, offset: timedelta
) -> None:
    """The conversation's start and end decide; a `unixtime` a year off its `date` does not refuse the report."""
    session = await open_session(live.http, keys.a, dids=[DID])
    call = await click(live, keys, session)
    report = json.loads(report_for(call, billing=23))
    report["unixtime"] = str(int((datetime.now(UTC) + offset).timestamp()))
    assert (await live.http.post(live.callback, content=json.dumps(report))).status_code == 200
    done = await read(live, keys, f"/v1/calls/{call['id']}")
    assert (done["status"], done["billing_seconds"]) == ("completed", 23)
    assert await outcomes(db) == {("matched", None): 1}


async def test_the_sending_time_places_a_report_only_when_it_has_no_start_and_no_end(
    live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """A report without start and end, sent a year before the call was placed, is refused as before_call."""
    session = await open_session(live.http, keys.a, dids=[DID])
    call = await click(live, keys, session)
    report = json.loads(report_for(call, billing=23))
    old = datetime.now(UTC) - YEAR
    del report["start_at"], report["end_at"]
    report["unixtime"], report["date"] = str(int(old.timestamp())), old.strftime("%Y-%m-%d %H:%M:%S")
    assert (await live.http.post(live.callback, content=json.dumps(report))).status_code == 200
    assert (await read(live, keys, f"/v1/calls/{call['id']}"))["status"] == "initiated"
    assert await outcomes(db) == {("unmatched", "before_call"): 1}


def _recording_added(report: dict[str, Any]) -> None:
    report["recording_url"] = "https://recordings.example/late.mp3"


def _hangup_changed(report: dict[str, Any]) -> None:
    report["hangup_by"] = "agent" if report["hangup_by"] == "caller" else "caller"


def _status_lowercase(report: dict[str, Any]) -> None:
    for field in ("status", "status1", "status2"):
        report[field] = report[field].lower()


def _times_removed(report: dict[str, Any]) -> None:
    for field in ("start_at", "end_at", "date", "unixtime"):
        del report[field]


@pytest.mark.parametrize("change", [_recording_added, _hangup_changed, _status_lowercase, _times_removed])
async def test_a_resend_with_a_field_a_resend_may_change_leaves_the_newer_call_alone(
    live: Live, keys: Keys, db: asyncpg.Connection, change: Any
) -> None:
    """Call 1's report re-sent with one changeable field changed, while call 2 is in flight: a duplicate, call 2 untouched."""
    session = await open_session(live.http, keys.a, dids=[DID], max_calls=3)
    first = await click(live, keys, session)
    started = datetime.now(UTC) - timedelta(seconds=30)
    original = report_for(first, billing=23, start=started)
    assert (await live.http.post(live.callback, content=original)).status_code == 200
    assert (await read(live, keys, f"/v1/calls/{first['id']}"))["status"] == "completed"
    second = await click(live, keys, session)
    resent = json.loads(original)
    change(resent)
    assert (await live.http.post(live.callback, content=json.dumps(resent))).status_code == 200
    assert (await read(live, keys, f"/v1/calls/{second['id']}"))["status"] == "initiated"
    assert await outcomes(db) == {("matched", None): 1, ("duplicate", "call_already_reported"): 1}
    own = report_for(second, billing=61)
    assert (await live.http.post(live.callback, content=own)).status_code == 200
    done = await read(live, keys, f"/v1/calls/{second['id']}")
    assert (done["status"], done["billing_seconds"]) == ("completed", 61)


async def test_a_next_call_with_the_same_durations_but_its_own_times_is_completed_by_its_report(
    live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """Two busy calls in a row report the same durations and statuses; the second's own times complete it."""
    session = await open_session(live.http, keys.a, dids=[DID], max_calls=3)
    first = await click(live, keys, session)
    began = datetime.now(UTC) - timedelta(seconds=20)
    assert (
        await live.http.post(live.callback, content=report_for(first, billing=0, start=began, seconds=0))
    ).status_code == 200
    second = await click(live, keys, session)
    again = report_for(second, billing=0, start=datetime.now(UTC), seconds=0)
    assert (await live.http.post(live.callback, content=again)).status_code == 200
    assert (await read(live, keys, f"/v1/calls/{second['id']}"))["status"] == "missed"
    assert await outcomes(db) == {("matched", None): 2}


SECRET = "+919812345678"
MESSAGE = f"Number {SECRET} is on the DND list (ref 9812345678)"


async def test_the_providers_refusal_text_reaches_no_agent_no_log_and_no_row_unmasked(
    live: Live, keys: Keys, db: asyncpg.Connection
) -> None:
    """A refusal whose text holds a number: the agent page, the API's problem, logs, events and the call hold it masked."""
    session = await open_session(live.http, keys.a, dids=[DID])
    r = await live.http.post(f"/v1/sessions/{session['id']}/call-links", json={}, headers=keys.auth(keys.a_sessions))
    path = "/c/" + r.json()["url"].rsplit("/c/", 1)[1]
    page = await live.http.get(path, headers={"Accept": "text/html"})
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    live.sim.inject(Fault(answer="reject", message=MESSAGE, count=3))
    with structlog.testing.capture_logs() as logs:
        pressed = await live.http.post(path, data={"_csrf_token": csrf.group(1)}, headers={"Accept": "text/html"})
        api = await live.http.post(f"/v1/sessions/{session['id']}/calls", headers=keys.a)
    assert pressed.status_code == 502 and "9812345678" not in pressed.text
    problem = assert_problem(api, 502, "provider_rejected")
    assert "9812345678" not in api.text
    call = await read(live, keys, f"/v1/calls/{problem['call_id']}")
    assert (
        call["status"] == "failed"
        and call["provider"]["message"] == "Number [number] is on the DND list (ref [number])"
    )
    assert "9812345678" not in json.dumps(logs)
    tables = await db.fetch("SELECT data::text AS t FROM events UNION ALL SELECT provider_message FROM calls")
    assert tables and not any("9812345678" in (row["t"] or "") for row in tables)
