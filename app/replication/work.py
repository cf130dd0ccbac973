"""What a backend worker runs for one message: a batch of snapshot, apply or upload tasks of
one job.

The tasks are claimed with one statement (``runner``), worked on by ``snapshot`` or ``apply``,
and their results committed in chunks, so a message of many small tablets costs a handful of
Postgres round trips, not several per tablet. Work is idempotent: a rerun finishes what is
missing and redoes nothing that is verified.
"""

from __future__ import annotations

import logging

from app.backup.upload import upload_batch
from app.cluster import Cluster
from app.config import Settings
from app.errors import LeaseLost
from app.replication.apply import apply_batch
from app.replication.coordinator import Message
from app.replication.finish import clean_backend
from app.replication.runner import BatchOutcome, ProgressFn, TaskRunner
from app.replication.snapshot import snapshot_batch
from app.replication.state import JobKind
from app.replication.taskrows import TaskKind

log = logging.getLogger(__name__)


def run_message(
    runner: TaskRunner, kind: TaskKind, task_ids: list[int], progress: ProgressFn | None = None
) -> BatchOutcome:
    job = runner.job()
    out = BatchOutcome()
    claims = runner.claim(task_ids, kind)
    out.skipped = len(task_ids) - len(claims)
    if not claims:
        return out
    try:
        if kind is TaskKind.SNAPSHOT:
            snapshot_batch(runner, job, claims, out)
        elif job.kind == JobKind.BACKUP:
            upload_batch(runner, job, claims, out, progress)
        else:
            apply_batch(runner, job, claims, out, progress)
    except LeaseLost as exc:  # another attempt owns the tasks, or the job ended: stop quietly
        log.info("%s", exc)
    return out


def run_cleanup(settings: Settings, cluster: str, backend: str, job_id: int) -> int:
    """A target backend's share of an aborted job's clean-up (see ``finish.clean_backend``)."""
    return clean_backend(Cluster(settings, cluster), backend, job_id)


def deliver(settings: Settings, m: Message, worker: str) -> None:
    """Run one coordinator message in this process, as the worker of its queue would."""
    if m.kind is None:
        assert m.backend is not None
        run_cleanup(settings, m.cluster, m.backend, m.job_id)
    else:
        run_message(TaskRunner(settings, m.cluster, m.job_id, worker), m.kind, list(m.task_ids))
