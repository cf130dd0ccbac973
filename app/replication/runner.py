"""The worker's side of the lease protocol: claim a message's tasks, keep their leases,
record failures with the retry policy.

A completion or failure is a compare-and-set on the attempt that was claimed (``taskrows``), so
a worker whose lease was taken over can never finish someone else's attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import LeaseLost, retryable
from app.replication import taskrows
from app.replication.taskrows import Claimed, TaskKind
from app.retry import RetryPolicy

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total) of the current message


@dataclass
class BatchOutcome:
    done: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0


class TaskRunner:
    """The worker's side of the task-row protocol for one message of one job."""

    def __init__(self, settings: Settings, cluster: str, job_id: int, worker: str) -> None:
        self.settings = settings
        self.dst = Cluster(settings, cluster)  # the job lives in its target cluster's catalog
        self.job_id = job_id
        self.worker = worker
        self.policy = RetryPolicy(maximum_attempts=settings.task_max_attempts)

    # -- the lease protocol ------------------------------------------------------------------
    def claim(self, task_ids: list[int], kind: TaskKind) -> list[Claimed]:
        with self.dst.engine.begin() as conn:
            return taskrows.claim(
                conn,
                self.job_id,
                kind,
                task_ids,
                worker=self.worker,
                lease_sec=self.settings.task_lease_sec,
                max_attempts=self.settings.task_max_attempts,
            )

    def renew(
        self, claims: list[Claimed], current: Claimed | None = None, bytes_done: int | None = None
    ) -> None:
        """Extend the batch's leases; LeaseLost if none is ours any more or the job has ended
        or been cancelled (renewal is how a busy worker notices a cancel)."""
        with self.dst.engine.begin() as conn:
            alive = taskrows.renew(
                conn,
                self.job_id,
                claims,
                worker=self.worker,
                lease_sec=self.settings.task_lease_sec,
                current=current,
                bytes_done=bytes_done,
            )
        if not alive:
            raise LeaseLost(f"job {self.job_id}: this worker no longer owns its tasks")

    def fail(self, claim: Claimed, exc: BaseException) -> str:
        """Record a failed attempt: back to PENDING after a backoff, or FAILED for good."""
        retry = retryable(exc) and not self.policy.gives_up(claim.attempt)
        message = f"{type(exc).__name__}: {exc}"
        with self.dst.engine.begin() as conn:
            taskrows.fail(conn, claim, message, self.policy.delay(claim.attempt) if retry else None)
        log.warning(
            "task %s attempt %s failed (%s): %s",
            claim.id,
            claim.attempt,
            "will retry" if retry else "giving up",
            message[:2000],
        )
        return "retried" if retry else "failed"

    def fail_all(self, claims: list[Claimed], exc: BaseException, out: BatchOutcome) -> None:
        for claim in claims:
            if self.fail(claim, exc) == "retried":
                out.retried += 1
            else:
                out.failed += 1

    # -- reading -----------------------------------------------------------------------------
    def job(self) -> Any:
        with self.dst.engine.connect() as conn:
            return conn.execute(sa.select(s.jobs).where(s.jobs.c.id == self.job_id)).one()

    def phase_done(self, kind: TaskKind) -> bool:
        """Every task of ``kind`` is DONE."""
        with self.dst.engine.connect() as conn:
            return not taskrows.any_not_done(conn, self.job_id, kind)
