"""The task that ends a phase moves the job on in its own process (workers.tasks.advance_here):
with no coordinator running at all, one tick to plan is enough — the last snapshot dispatches
the applies and the last apply commits, on real workers over the transfer service."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery

from app.config import Settings
from app.replication.coordinator import Coordinator
from app.replication.state import JobState
from tests.integration.rig import Rig, create_test_table, rows, start_rig


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("advance")
    yield from start_rig(settings, test_env, base, "adv", bandwidth=0, coordinator=False)


def test_the_last_snapshot_and_the_last_apply_move_the_job_without_a_coordinator(
    rig: Rig,
) -> None:
    for handle in (rig.src, rig.dst):
        create_test_table(handle, "db.adv", buckets=2, replication_num=2)
    rig.src.load("db.adv", rows(3_000, seed=3), label="adv-1")
    job = rig.replicator.replicate(f"{rig.src.name}:db.adv", rig.dst.name)
    time.sleep(1.5)
    assert job.refresh().state is JobState.INITIALIZING  # nobody ticks it

    # The one tick a coordinator would make: plan, and send the snapshot messages.
    result = Coordinator(rig.settings, actor="test-coordinator").tick(rig.dst.name, job.id)
    assert result.state is JobState.SNAPSHOTING and result.messages
    client = Celery("test-client", broker=rig.redis.url)
    client.conf.update(task_serializer="json", accept_content=["json"])
    for m in result.messages:
        client.send_task(
            m.task,
            kwargs={"cluster": m.cluster, "job_id": m.job_id, "task_ids": list(m.task_ids)},
            queue=m.queue,
            routing_key=m.queue,
        )

    assert job.wait(120).state is JobState.COMMITTED, job.message
    actors = {(e.from_state, e.to_state): str(e.actor) for e in job.events}
    assert actors[("INITIALIZING", "SNAPSHOTING")] == "test-coordinator"
    # A source worker dispatched the applies; a target worker committed.
    assert rig.src.name in actors[("SNAPSHOTING", "REPLICATING")], actors
    assert rig.dst.name in actors[("REPLICATING", "COMMITTED")], actors
    assert rig.content(rig.dst, "db.adv") == rig.content(rig.src, "db.adv")
