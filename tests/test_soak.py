"""The soak in miniature: a few seconds of the mixed workload over two processes, and its count adds up."""

from pathlib import Path

from tests.soak import HANGING_ENDPOINTS, consistent, run


async def test_a_short_soak_keeps_every_promise(dsn: str, tmp_path: Path) -> None:
    """15 s of creates, clicks, reports, re-sends, closes, expiries and restarts, with an endpoint registered and
    deleted again and again and another tenant's endpoints hanging: no promise broken, work done, every event of
    the soak tenant at its steady endpoint."""
    figures = await run(dsn, seconds=15, log_dir=tmp_path, webhook_timeout=3)
    delay = figures["delivery delay of the soak tenant (s)"]
    print(
        f"\n{figures['clicks answered 202']} clicks, {figures['dials the simulator received']} dials, "
        f"{figures['reports acknowledged']} reports acknowledged, {figures['reports stored']} stored, "
        f"{figures['restarts of process A']} restarts, 5xx {figures['5xx by route']}, "
        f"{figures['actions'].get('webhook endpoints registered', 0)} endpoints registered and deleted, "
        f"{figures['requests held open by the hanging endpoints']} requests hanging, "
        f"the soak tenant's delivery delay {delay}; {figures['seconds']} s in all, "
        f"{figures['seconds to drain (calls, reports, webhooks)']} s of them to drain"
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
    # The webhook side ran: endpoints came and went, the hanging tenant's endpoints held requests, events arrived.
    actions = figures["actions"]
    assert actions.get("webhook endpoints registered", 0) >= 5
    assert actions.get("webhook endpoints deleted", 0) >= actions["webhook endpoints registered"] - 1
    assert actions.get("sessions of the hanging tenant", 0) >= 5
    assert figures["requests held open by the hanging endpoints"] >= HANGING_ENDPOINTS
    assert delay["count"] >= figures["clicks answered 202"]
