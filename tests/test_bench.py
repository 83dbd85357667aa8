"""The benchmark's quick path runs end to end, so the benchmark cannot rot."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("wrk") is None, reason="the benchmark needs wrk (apt-get install wrk)")
def test_the_quick_benchmark_writes_its_figures_and_chart(tmp_path: Path) -> None:
    """`python -m tests.bench --quick` measures every scenario and writes the JSON and the PNG."""
    out, chart = tmp_path / "bench-results.json", tmp_path / "chart.png"
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--seconds", "1", "--out", str(out), "--chart", str(chart)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(out.read_text())
    figures = run["results"]
    assert [f["name"].split(" (")[0] for f in figures] == [
        "create-session", "create-session", "create-session", "report ingest", "get-session", "click-to-call",
        "event-delivery",
    ]  # fmt: skip
    events = figures.pop()
    assert events["rps"] > 0 and events["limit_rps"] > 0 and events["errors"] == 0, events
    for f in figures:
        assert f["rps"] > 0 and f["p50_ms"] > 0 and f["p99_ms"] >= f["p50_ms"]
    # every scenario but click-to-call stands beside its reference (or the framework floor)
    assert all(f["limit_rps"] > 0 for f in figures[:5])
    assert figures[0]["errors"] == 0
    # get's reference is the complete one (issue 23): the floor with its primary-key read; the constant alone beside it
    got = figures[4]
    assert "primary-key read" in got["limit"] and "constant route alone" in got["note"], got
    assert {t["target"].split(" ")[0] for t in run["targets"]} == {"create-session,", "report", "get-session"}
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert "ratio" in result.stdout
    # the service's own warnings are counted (a suspected failover, say), not thrown away
    assert "the service's warnings and errors during the run:" in result.stdout
