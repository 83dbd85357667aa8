"""The soak in miniature: a few seconds of the mixed workload over two processes, and its count adds up."""

from pathlib import Path

from tests.soak import consistent, run


async def test_a_short_soak_keeps_every_promise(dsn: str, tmp_path: Path) -> None:
    """15 s of creates, clicks, reports, re-sends, closes, expiries and restarts: no promise broken, work done."""
    figures = await run(dsn, seconds=15, log_dir=tmp_path)
    print(
        f"\n{figures['clicks answered 202']} clicks, {figures['dials the simulator received']} dials, "
        f"{figures['reports acknowledged']} reports acknowledged, {figures['reports stored']} stored, "
        f"{figures['restarts of process A']} restarts, 5xx {figures['5xx by route']}"
    )
    assert consistent(figures) == []
    assert figures["restarts of process A"] >= 1
    assert (
        figures["clicks answered 202"] >= 20
        and figures["dials the simulator received"] >= figures["clicks answered 202"]
    )
    assert figures["reports stored"] >= figures["reports acknowledged"] >= figures["clicks answered 202"] // 2
    assert figures["actions"].get("report re-sends", 0) > 0 and figures["actions"].get("closes", 0) > 0
    assert figures["rows at start"]["sessions"] == 0 and figures["rows at end"]["sessions"] > 0
