"""The real coordinator, driven through every edge of the job state machine.

Real Postgres catalogs and real storage roots; the coordinator's ticks and the workers' task
code run in this process, one step at a time, so each edge can be reached on purpose. Every
transition the coordinator records must be an edge of ``state.ALLOWED``, and together the
scenarios must take every edge there is.
"""

from __future__ import annotations

import pytest

from app.client import Job
from app.config import Settings
from app.replication import taskrows
from app.replication.state import ALLOWED, JobState
from app.replication.taskrows import TaskKind, TaskState
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver
from tests.integration.rig import rows

S = JobState


def _edges(job: Job) -> set[tuple[JobState, JobState]]:
    return {
        (S(e.from_state), S(e.to_state))
        for e in job.events
        if e.from_state is not None and e.actor == "edge-test"
    }


@pytest.fixture
def driver(settings: Settings, make_cluster: ClusterFactory) -> Driver:
    return Driver(settings, make_cluster)


def test_the_coordinator_takes_every_allowed_edge_and_no_other(driver: Driver) -> None:
    seen: dict[tuple[JobState, JobState], str] = {}

    def record(job: Job) -> None:
        for edge in _edges(job):
            assert edge[1] in ALLOWED[edge[0]], f"{job.ref} took {edge}: not in state.ALLOWED"
            seen.setdefault(edge, job.message or "")

    # INITIALIZING -> SNAPSHOTING -> REPLICATING -> COMMITTED: a job that goes through.
    job = driver.finish(driver.submit())
    assert job.state is S.COMMITTED, job.message
    record(job)

    # INITIALIZING -> COMMITTED: by the time the coordinator plans, the target has caught up.
    driver.src.load(TABLE, rows(500, seed=8), label="edges-2")
    job = driver.submit()
    src_versions = {c.partition: (c.version, c.epoch) for c in driver.src.checksum(TABLE)}
    for name, (version, epoch) in src_versions.items():
        driver.sql(
            driver.dst,
            "UPDATE partitions SET visible_version = :v, version_epoch = :e WHERE name = :n",
            v=version,
            e=epoch,
            n=name,
        )
    job = driver.finish(job)
    assert job.state is S.COMMITTED and job.message and "up to date" in job.message
    record(job)

    # INITIALIZING -> ABORTED: planning refused (the target is ahead of the source).
    driver.src.load(TABLE, rows(500, seed=9), label="edges-3")
    job = driver.submit()
    driver.sql(driver.dst, "UPDATE partitions SET visible_version = visible_version + 10")
    job = driver.finish(job)
    assert job.state is S.ABORTED and job.message and "planning failed" in job.message
    record(job)
    driver.reset_target()

    # SNAPSHOTING -> ABORTED: cancelled while the snapshots are out.
    job = driver.submit()
    driver.tick(job)  # plans and sends the snapshots, which no worker runs
    assert job.refresh().state is S.SNAPSHOTING
    job.cancel()
    job = driver.finish(job)
    assert job.state is S.ABORTED and job.message == "cancelled by user"
    record(job)

    # REPLICATING -> ABORTED: every replica applied, then the target moved before the commit.
    job = driver.submit()
    job = driver.run_until(
        job,
        S.REPLICATING,
        then=lambda: driver.sql(
            driver.dst, "UPDATE partitions SET visible_version = visible_version + 1"
        ),
    )
    assert job.state is S.REPLICATING
    job = driver.finish(job)
    assert job.state is S.ABORTED and job.message and "commit refused" in job.message, job.message
    record(job)

    every_edge = {(frm, to) for frm, tos in ALLOWED.items() for to in tos}
    assert set(seen) == every_edge, f"edges never taken: {every_edge - set(seen)}"


def test_applies_start_as_soon_as_their_snapshots_are_taken(driver: Driver) -> None:
    """A tablet's applies are created and run while other snapshots are still out; nothing is
    visible before the commit, and no replica gets two apply tasks."""
    job = driver.submit()
    snapshots = driver.tick(job)  # plans and sends the snapshots
    assert job.refresh().state is S.SNAPSHOTING
    assert len(snapshots) >= 2 and all(m.kind is TaskKind.SNAPSHOT for m in snapshots)
    before = [(c.partition, c.version) for c in driver.dst.checksum(TABLE)]

    driver.work(snapshots[:1])  # one message's snapshots are taken; the others are still out
    applies = driver.tick(job)
    assert job.refresh().state is S.SNAPSHOTING
    assert applies and all(m.kind is TaskKind.APPLY for m in applies)
    with driver.dst.catalog.engine.connect() as conn:
        tasks = taskrows.of_job(conn, job.id)
    taken = {
        t.dst_tablet_id for t in tasks if t.kind == TaskKind.SNAPSHOT and t.state == TaskState.DONE
    }
    started = {t.dst_tablet_id for t in tasks if t.kind == TaskKind.APPLY}
    assert taken and started == taken  # exactly the taken tablets' applies, no others

    driver.work(applies)  # applies run while the job is still SNAPSHOTING
    assert job.refresh().state is S.SNAPSHOTING
    assert [(c.partition, c.version) for c in driver.dst.checksum(TABLE)] == before

    driver.work(snapshots[1:])
    job = driver.finish(job)
    assert job.state is S.COMMITTED, job.message
    with driver.dst.catalog.engine.connect() as conn:
        tasks = taskrows.of_job(conn, job.id, TaskKind.APPLY)
    replicas = [(t.dst_tablet_id, t.dst_backend_id) for t in tasks]
    assert len(replicas) == len(set(replicas)) == 2 * len({t for t, _b in replicas})
    assert all(t.state == TaskState.DONE for t in tasks)
    src = [(c.partition, c.rows, c.checksum) for c in driver.src.checksum(TABLE)]
    assert [(c.partition, c.rows, c.checksum) for c in driver.dst.checksum(TABLE)] == src
