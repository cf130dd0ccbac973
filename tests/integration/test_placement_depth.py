"""Snapshot placement reads each source backend's queue depth: a job planned while another job's
snapshots wait on one backend's queue sends its own snapshots to the other replica."""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.queues import queue_name
from app.replication.taskrows import TaskKind
from tests.conftest import ClusterFactory
from tests.integration.driver import Driver
from tests.integration.rig import create_test_table, rows


@pytest.fixture
def d(settings: Settings, make_cluster: ClusterFactory) -> Driver:
    return Driver(settings, make_cluster)


def _queues(d: Driver, job_id: int) -> Counter[str]:
    with d.dst.catalog.engine.connect() as conn:
        got = conn.execute(
            sa.text("SELECT queue FROM job_tasks WHERE job_id = :j AND kind = :k"),
            {"j": job_id, "k": str(TaskKind.SNAPSHOT)},
        ).scalars()
        return Counter(got)


def test_a_second_job_avoids_the_queue_the_first_one_filled(d: Driver) -> None:
    be1, be2 = (queue_name(d.src.name, b) for b in ("be1", "be2"))
    first = d.submit()
    waiting = d.tick(
        first
    )  # planned: 8 snapshot tasks (4 partitions x 2 buckets) waiting, not delivered
    assert _queues(d, first.id) == {be1: 4, be2: 4}  # one job alone alternates
    # Its snapshots all wait on be1 (as when be2's share is done and be1 is behind).
    d.sql(d.dst, "UPDATE job_tasks SET queue = :q WHERE job_id = :j", q=be1, j=first.id)

    for handle in (d.src, d.dst):
        create_test_table(handle, "db.second", buckets=2, replication_num=2)
    d.src.load("db.second", rows(1_000, seed=9), label="second")
    second = d.r.replicate(f"{d.src.name}:db.second", d.dst.name)
    sent = d.tick(second)
    assert _queues(d, second.id) == {be2: 8}  # be1 holds 8 already: all 8 go to be2

    d.work(sent + waiting)  # the workers catch up; both jobs then finish normally
    d.finish(second)
    d.finish(first)
    assert first.state == second.state == "COMMITTED"
