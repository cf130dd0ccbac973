"""Driving the real coordinator and the workers' task code in this process, step by step.

Real Postgres catalogs and real storage roots; no Celery. Each step can be interleaved with
whatever a test needs to do to the catalogs or files in between.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from app.client import ClusterHandle, Job, Replicator
from app.config import Settings
from app.replication.coordinator import Coordinator, Message
from app.replication.state import JobState
from app.replication.work import deliver
from tests.conftest import ClusterFactory
from tests.integration.rig import create_test_table, rows

TABLE = "db.edges"


def _no_nudge(_cluster: str, _job_id: int) -> None:
    return None


class Driver:
    def __init__(self, settings: Settings, make_cluster: ClusterFactory) -> None:
        # The applies run in this process, reading the source roots directly: what is under
        # test here is the coordinator, not the transfer service.
        self.settings = settings = settings.with_overrides(transfer_mode="shared")
        self.src = make_cluster(backends=2)
        self.dst = make_cluster(backends=2)
        for handle in (self.src, self.dst):
            create_test_table(handle, TABLE, buckets=2, replication_num=2)
        self.src.load(TABLE, rows(2_000, seed=7), label="edges-1")
        self.r = Replicator(settings, _no_nudge)
        self.coordinator = Coordinator(settings, actor="edge-test")

    def submit(self) -> Job:
        return self.r.replicate(f"{self.src.name}:{TABLE}", self.dst.name)

    def tick(self, job: Job) -> list[Message]:
        return self.coordinator.tick(self.dst.name, job.id).messages

    def work(self, messages: list[Message]) -> None:
        """Run the messages' tasks as the workers of their queues would."""
        for m in messages:
            deliver(self.settings, m, "edge-worker")

    def run_until(self, job: Job, state: JobState, then: Callable[[], None] | None = None) -> Job:
        """Tick and work until the job reaches ``state`` (its messages done), then ``then``."""
        for _ in range(20):
            messages = self.tick(job)
            self.work(messages)
            if job.refresh().state is state or job.state.final:
                break
        if then is not None:
            then()
        return job

    def sql(self, handle: ClusterHandle, statement: str, **params: object) -> None:
        with handle.catalog.engine.begin() as conn:
            conn.execute(sa.text(statement), params)

    def finish(self, job: Job) -> Job:
        for _ in range(20):
            self.work(self.tick(job))
            if job.refresh().state.final:
                return job
        raise AssertionError(f"job {job.ref} did not finish: {job.state}")

    def reset_target(self) -> None:
        """A fresh target table, so the next scenario starts from an empty replica."""
        self.sql(self.dst, "UPDATE partitions SET visible_version = 1, version_epoch = 0")
