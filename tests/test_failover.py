"""The database fails over under load (pg_auto_failover, one switchover): nothing acknowledged is lost, no 500."""

import asyncio

import pytest

from tests.failover import Cluster, broken, run, why_not

pytestmark = pytest.mark.skipif(why_not() is not None, reason=str(why_not()))


def test_a_switchover_under_load_loses_nothing_and_the_service_follows_the_new_primary() -> None:
    """Under load on a multi-host DSN, a planned switchover gives 503s only, loses nothing, and leaves no process."""
    cluster = Cluster()
    try:
        cluster.start()
        figures = asyncio.run(run(cluster, seconds=30, switchovers=1, crashes=0, workers=3))
    finally:
        cluster.stop()
    assert cluster.processes() == []
    print(figures)
    assert broken(figures) == []
    assert figures["creates answered 2xx"] > 10 and figures["reports answered 200"] > 0
    assert figures["switches"][0]["primary after"] != figures["switches"][0]["primary before"]
