"""Admission limits and job history: decided at submit time, so no workers are needed."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.catalog import schema as s
from app.client import ClusterHandle, Replicator
from app.config import Settings
from app.errors import AdmissionRefused, TableBusy
from app.replication import jobs
from app.replication.coordinator import Coordinator
from tests.conftest import ClusterFactory
from tests.integration.rig import COLUMNS, PARTITIONS, rows


def _pair(make_cluster: ClusterFactory, table: str = "db.t") -> tuple[ClusterHandle, ClusterHandle]:
    src, dst = make_cluster(backends=2), make_cluster(backends=2)
    for handle in (src, dst):
        handle.create_table(
            table, COLUMNS, partition_by="day", partitions=PARTITIONS, buckets=4, replication_num=2
        )
    src.load(table, rows(2_000, seed=1), label="one")
    return src, dst


def _job_count(dst: ClusterHandle) -> int:
    with dst.catalog.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(s.jobs)).scalar_one())


def _no_nudge(_cluster: str, _job: int) -> None:
    return None


def test_a_job_over_the_replica_limit_is_refused_and_nothing_is_made(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _pair(make_cluster)
    r = Replicator(settings.with_overrides(replication_max_parallel_replica_count=10), _no_nudge)
    with pytest.raises(
        AdmissionRefused, match=r"needs 32 tablet replicas.*replication_max_parallel_replica_count"
    ):
        r.replicate(f"{src.name}:db.t", dst.name)
    assert _job_count(dst) == 0


def test_a_job_over_the_data_size_limit_is_refused(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _pair(make_cluster)
    r = Replicator(settings.with_overrides(replication_max_parallel_data_size_mb=0), _no_nudge)
    with pytest.raises(AdmissionRefused, match="replication_max_parallel_data_size_mb"):
        r.replicate(f"{src.name}:db.t", dst.name)
    assert _job_count(dst) == 0


def test_the_table_count_limit_counts_running_jobs(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _pair(make_cluster)
    for handle in (src, dst):
        handle.create_table("db.u", COLUMNS, partition_by="day", partitions=PARTITIONS, buckets=2)
    src.load("db.u", rows(100, seed=2), label="u-one")
    r = Replicator(settings.with_overrides(replication_max_parallel_table_count=1), _no_nudge)
    first = r.replicate(f"{src.name}:db.t", dst.name)  # no workers here: it stays running
    assert first.state == "INITIALIZING"
    with pytest.raises(AdmissionRefused, match="1 replication jobs are running, the limit is 1"):
        r.replicate(f"{src.name}:db.u", dst.name)
    assert _job_count(dst) == 1
    assert first.cancel() is True


def test_the_replica_and_size_limits_add_up_the_running_jobs(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    """db.t and db.u need 32 replicas each: a limit of 40 admits one and refuses the other with
    the running one's 32 counted. db.t holds a few MB, db.u well under one: a 1 MB limit admits
    db.u alone but not beside the running db.t."""
    src, dst = _pair(make_cluster)
    src.load("db.t", rows(40_000, seed=5, wide=True), label="t-wide")
    for handle in (src, dst):
        handle.create_table(
            "db.u", COLUMNS, partition_by="day", partitions=PARTITIONS, buckets=4, replication_num=2
        )
    src.load("db.u", rows(500, seed=2), label="u-one")
    r = Replicator(settings.with_overrides(replication_max_parallel_replica_count=40), _no_nudge)
    first = r.replicate(f"{src.name}:db.t", dst.name)
    assert first.state == "INITIALIZING"
    with pytest.raises(AdmissionRefused, match="needs 32 tablet replicas and running jobs hold 32"):
        r.replicate(f"{src.name}:db.u", dst.name)
    mb = first.record.options["data_size"] / 2**20
    assert mb > 1.5
    sized = Replicator(settings.with_overrides(replication_max_parallel_data_size_mb=1), _no_nudge)
    with pytest.raises(AdmissionRefused, match=f"running jobs {mb:.1f} MB; the limit is 1 MB"):
        sized.replicate(f"{src.name}:db.u", dst.name)
    assert _job_count(dst) == 1
    assert first.cancel() is True
    Coordinator(settings, actor="test").tick(dst.name, first.id)  # ABORTED: no longer counted
    assert sized.replicate(f"{src.name}:db.u", dst.name).state == "INITIALIZING"


def test_a_second_job_on_a_table_with_a_running_job_is_refused(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _pair(make_cluster)
    r = Replicator(settings, _no_nudge)
    first = r.replicate(f"{src.name}:db.t", dst.name)
    with pytest.raises(TableBusy, match=first.ref):
        r.replicate(f"{src.name}:db.t", dst.name)
    assert _job_count(dst) == 1


def test_finished_jobs_are_purged_after_the_history_window(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = make_cluster(backends=1), make_cluster(backends=1)
    for handle in (src, dst):
        handle.create_table("db.t", COLUMNS, partition_by="day", partitions=PARTITIONS)
    r = Replicator(settings, _no_nudge)
    done = r.replicate(f"{src.name}:db.t", dst.name)  # nothing loaded: up to date at once
    assert done.state == "COMMITTED"
    src.load("db.t", rows(10, seed=3), label="x")
    running = r.replicate(f"{src.name}:db.t", dst.name)
    assert running.state == "INITIALIZING"

    assert jobs.purge_history(settings, dst.name) == 0  # within the 7-day default
    purged = jobs.purge_history(settings.with_overrides(history_job_keep_max_second=0), dst.name)

    assert purged == 1
    assert [j.id for j in r.jobs(dst.name)] == [running.id]


def test_a_job_cancelled_before_it_started_is_aborted_by_the_next_tick(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    src, dst = _pair(make_cluster)
    job = Replicator(settings, _no_nudge).replicate(f"{src.name}:db.t", dst.name)
    assert job.state == "INITIALIZING"

    assert job.cancel() is True
    Coordinator(settings, actor="test").tick(dst.name, job.id)

    assert job.refresh().state == "ABORTED"
    assert job.message == "cancelled by user"
    assert job.record.txn_id is None  # it never opened a transaction on the target
    assert [e.to_state for e in job.events] == ["INITIALIZING", "ABORTED"]
    assert job.cancel() is False  # finished jobs cannot be cancelled again
