"""An incremental job ships only the tablets with new rowsets; the others need no task."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver
from tests.integration.rig import rows

pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def _tasks(d: Driver, job_id: int, kind: TaskKind) -> list[int]:
    with d.dst.catalog.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT dst_tablet_id FROM job_tasks WHERE job_id = :j AND kind = :k"),
                {"j": job_id, "k": kind},
            ).scalars()
        )


def test_a_load_into_one_tablet_replicates_as_one_tablet_and_the_target_equals_the_source(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    d = Driver(settings, make_cluster)  # 4 partitions x 2 buckets, 2 replicas each side
    first = d.finish(d.submit())
    assert first.state is JobState.COMMITTED
    assert len(_tasks(d, first.id, TaskKind.SNAPSHOT)) == 8  # full: every tablet
    d.src.load(TABLE, rows(1, seed=21), label="one-row")  # one partition, one of its tablets

    job = d.finish(d.submit())

    assert job.state is JobState.COMMITTED, job.message
    assert len(_tasks(d, job.id, TaskKind.SNAPSHOT)) == 1
    assert len(_tasks(d, job.id, TaskKind.APPLY)) == 2  # that tablet's two target replicas
    plan_event = next(e for e in job.events if e.to_state == JobState.SNAPSHOTING)
    assert "1 tablets (1 more without new rows need nothing)" in plan_event.reason
    # Every row, and every partition at the source's version (the untouched tablet included).
    assert [p.content() for p in d.dst.checksum(TABLE)] == [
        p.content() for p in d.src.checksum(TABLE)
    ]
