"""The beat's fast sweep (Coordinator.due_jobs): one query names the active jobs a tick would
move now. Every time it leaves a job out, a tick of that job must find nothing to do; every
time the job has something to do (planning, snapshots taken, a phase complete, a lost worker's
lease, a cancel), it must be named. Real coordinator, real task code, real Postgres."""

from __future__ import annotations

import pytest

from app.client import Job
from app.config import Settings
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState
from tests.conftest import ClusterFactory
from tests.integration.driver import TABLE, Driver
from tests.integration.rig import rows

pytestmark = pytest.mark.usefixtures("drop_created_catalogs")


def _due(d: Driver, job: Job) -> bool:
    return job.id in d.coordinator.due_jobs(d.dst.name)


def _idle_tick(d: Driver, job: Job) -> None:
    """Left out: then a tick sends nothing and moves nothing."""
    assert not _due(d, job)
    before = job.refresh().state
    assert d.tick(job) == []
    assert job.refresh().state is before


def test_due_jobs_names_exactly_the_jobs_a_tick_would_move(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    d = Driver(settings, make_cluster)
    job = d.submit()
    assert _due(d, job)  # INITIALIZING: to be planned

    snapshots = d.tick(job)
    assert job.refresh().state is JobState.SNAPSHOTING and len(snapshots) >= 2
    _idle_tick(d, job)  # every snapshot message is out and nothing came back yet

    d.work(snapshots[:1])
    assert _due(d, job)  # a snapshot taken: its applies can start
    started = d.tick(job)
    assert started and all(m.task == "replication.apply" for m in started)
    _idle_tick(d, job)

    d.work(snapshots[1:])
    assert _due(d, job)  # the phase is complete
    rest = d.tick(job)
    assert job.refresh().state is JobState.REPLICATING
    _idle_tick(d, job)

    # A worker took an apply and died: its lease expires, the task is due again.
    d.sql(d.dst, "UPDATE job_tasks SET state = :running, lease_until = now() - interval '1 s' "
                 "WHERE id = (SELECT min(id) FROM job_tasks WHERE job_id = :j AND kind = :apply "
                 "AND state = :queued)", j=job.id, running=TaskState.RUNNING, apply=TaskKind.APPLY,
                 queued=TaskState.QUEUED)  # fmt: skip
    assert _due(d, job)
    again = d.tick(job)
    assert len(again) == 1
    _idle_tick(d, job)

    d.work(started + rest + again)
    assert _due(d, job)  # every apply done: the commit is due
    d.finish(job)
    assert job.refresh().state is JobState.COMMITTED
    assert not _due(d, job)


def test_a_cancel_and_an_expired_transaction_make_a_job_due(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    d = Driver(settings, make_cluster)
    job = d.submit()
    d.tick(job)
    _idle_tick(d, job)
    d.sql(d.dst, "UPDATE transactions SET deadline = now() - interval '1 s' "
                 "WHERE id = (SELECT txn_id FROM jobs WHERE id = :j)", j=job.id)  # fmt: skip
    assert _due(d, job)
    d.tick(job)
    assert job.refresh().state is JobState.ABORTED and not _due(d, job)

    d.reset_target()
    other = d.submit()
    d.tick(other)
    _idle_tick(d, other)
    assert other.cancel() is True
    assert _due(d, other)
    d.tick(other)
    assert other.refresh().state is JobState.ABORTED


def test_a_later_jobs_taken_snapshots_make_it_due_though_earlier_jobs_applied_those_tablets(
    settings: Settings, make_cluster: ClusterFactory
) -> None:
    """The 'snapshot taken, no apply yet' clause looks at this job's applies only: an earlier
    job's applies of the same target tablets must not hide it (they did, when the clause was
    correlated to a FROM jobs of its own)."""
    d = Driver(settings, make_cluster)
    first = d.finish(d.submit())
    assert first.state is JobState.COMMITTED
    d.src.load(TABLE, rows(500, seed=8), label="edges-2")

    job = d.submit()
    snapshots = d.tick(job)
    assert job.refresh().state is JobState.SNAPSHOTING and len(snapshots) >= 2
    _idle_tick(d, job)
    d.work(snapshots[:1])
    assert _due(d, job)  # its tablets have applies, but of the first job
    assert d.tick(job)  # ... and a tick does start applies
