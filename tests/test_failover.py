"""The database fails over under load (pg_auto_failover, one switchover): nothing acknowledged is lost, no 500."""

import asyncio

import pytest

from service.cli import describe_database
from service.settings import Settings
from tests.failover import Cluster, broken, run, why_not


def test_a_multi_host_dsn_is_described_by_all_its_hosts_without_credentials() -> None:
    """`masking migrate` and `serve` name every host of a multi-host DSN, and never its password."""
    dsn = "postgresql://app:s3cret@db1:5432,db2:5433/masking?target_session_attrs=read-write"
    assert describe_database(Settings(database_url=dsn)) == "PostgreSQL at db1:5432,db2:5433/masking"
    assert describe_database(Settings(database_url="postgresql://db/masking")) == "PostgreSQL at db:5432/masking"


@pytest.mark.skipif(why_not() is not None, reason=str(why_not()))
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
