"""A source compaction that merges across the target's version mid-job: the job planned an
incremental copy, but the source no longer holds the versions the target lacks on their own, so
the snapshot falls back to a full one (and the commit replaces the target's old rowsets)."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver
from tests.integration.rig import replica_mismatches, rows


@pytest.fixture
def driver(settings: Settings, make_cluster: ClusterFactory) -> Driver:
    return Driver(settings, make_cluster)


def test_compaction_across_the_targets_version_mid_job_falls_back_to_a_full_snapshot(
    driver: Driver,
) -> None:
    first = driver.finish(driver.submit())
    assert first.state is JobState.COMMITTED, first.message
    driver.src.load(TABLE, rows(1_000, seed=21), label="fallback-2")

    job = driver.submit()
    snapshots = driver.tick(job)  # planned while the source still holds every version
    assert job.refresh().state is JobState.SNAPSHOTING
    assert {p.mode for p in job.partitions()} == {"INCREMENTAL"}
    # Before any snapshot is taken, the source merges each tablet's versions 1..3 into one:
    # the target (at version 2) can no longer be given just version 3.
    dst_versions = {p.name: p.visible_version for p in driver.dst.partitions(TABLE)}
    assert set(dst_versions.values()) == {2}
    report = driver.src.compact(TABLE)
    assert report.rowsets_merged > 0

    driver.work(snapshots)
    job = driver.finish(job)

    assert job.state is JobState.COMMITTED, job.message
    snaps = [t for t in job.tasks() if t.kind == TaskKind.SNAPSHOT]
    assert snaps and not any(t.incremental for t in snaps)  # every tablet fell back to full
    src = [(c.partition, c.version, c.rows, c.checksum) for c in driver.src.checksum(TABLE)]
    assert [(c.partition, c.version, c.rows, c.checksum) for c in driver.dst.checksum(TABLE)] == src
    assert replica_mismatches(driver.dst, TABLE) == []
