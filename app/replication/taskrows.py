"""A task row's life: its states, and every change of state as a named compare-and-set.

A task row is one unit of a job's work (one target tablet's snapshot on a source backend, or one
target replica's apply) and the only truth about it; Celery messages carry just its id.

    PENDING --mark_due--> QUEUED --claim--> RUNNING --complete--> DONE
       ^  \\                  |                | \\
       |   `--give_up--> FAILED <-------------' `--fail (retryable, backoff)--> PENDING
       |                      ^                   fail (permanent, or out of attempts)
       `-- mark_due also re-queues a QUEUED row whose message was lost (queued too long) and a
           RUNNING row whose lease expired (its worker died); claim takes those over too.
    PENDING, QUEUED, RUNNING --cancel_open (the job aborted)--> CANCELLED

Every function here is one ``UPDATE ... WHERE <expected state>`` so that two actors (two
coordinators, a worker and the coordinator, a worker and its own late twin) can never both win:
a worker completes or fails only the attempt it claimed, and a lease it did not renew is anyone's.
Nothing outside this module spells a task state or a task kind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.errors import redact
from app.replication.state import JobState, TaskCounts


class TaskState(StrEnum):
    PENDING = "PENDING"  # waiting to be sent (first time, or after a retry's backoff)
    QUEUED = "QUEUED"  # a message is on the broker
    RUNNING = "RUNNING"  # claimed by a worker, under a lease
    DONE = "DONE"
    FAILED = "FAILED"  # for good: the job aborts
    CANCELLED = "CANCELLED"  # its job ended (aborted) before it did


OPEN_STATES = (TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING)

ALLOWED = {
    TaskState.PENDING: {TaskState.QUEUED, TaskState.RUNNING, TaskState.FAILED,
                        TaskState.CANCELLED},
    TaskState.QUEUED: {TaskState.QUEUED, TaskState.RUNNING, TaskState.CANCELLED},
    TaskState.RUNNING: {TaskState.QUEUED, TaskState.RUNNING, TaskState.DONE, TaskState.PENDING,
                        TaskState.FAILED, TaskState.CANCELLED},
    TaskState.DONE: set(),
    TaskState.FAILED: set(),
    TaskState.CANCELLED: set(),
}  # fmt: skip


class TaskKind(StrEnum):
    SNAPSHOT = "SNAPSHOT"  # runs on a source backend's queue
    # Writes a snapshot's files where the job puts them: a target replica (a replication: on
    # the target backend's queue), or the repository (a backup: on the queue of the source
    # backend that holds them, whose files only its host can read).
    APPLY = "APPLY"

    @property
    def phases(self) -> tuple[JobState, ...]:
        """The job states in which tasks of this kind may run. A tablet's applies start as soon
        as its snapshot is taken, while other snapshots still run: the target does not sit idle
        for the slowest snapshot (measured: a third of a second of a 5-second 1 GiB job)."""
        if self is TaskKind.SNAPSHOT:
            return (JobState.SNAPSHOTING,)
        return (JobState.SNAPSHOTING, JobState.REPLICATING)

    @staticmethod
    def of_phase(state: JobState) -> TaskKind:
        """The kind whose completion ends the phase ``state``."""
        return TaskKind.SNAPSHOT if state is JobState.SNAPSHOTING else TaskKind.APPLY

    @staticmethod
    def open_in(state: JobState) -> tuple[TaskKind, ...]:
        """The kinds a job in ``state`` dispatches."""
        return tuple(k for k in TaskKind if state in k.phases)


@dataclass(frozen=True)
class Claimed:
    """A task this worker owns: ``attempt`` is the one its compare-and-sets must still see."""

    id: int
    attempt: int
    row: Any


_t = s.job_tasks
_now = sa.func.now()


def _secs(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def _lease_expired() -> sa.ColumnElement[bool]:
    return sa.and_(_t.c.state == TaskState.RUNNING, _t.c.lease_until < _now)


# -- creation (coordinator) -----------------------------------------------------------------


def insert(conn: sa.Connection, kind: TaskKind, rows: list[dict[str, Any]]) -> None:
    """New tasks of one kind, PENDING; a page at a time (the driver buffers a statement's
    parameters: 100,000 rows at once took the coordinator past 300 MB)."""
    for i in range(0, len(rows), 5000):
        conn.execute(sa.insert(_t), [r | {"kind": str(kind), "state": str(TaskState.PENDING)}
                                     for r in rows[i : i + 5000]])  # fmt: skip


# -- transitions the coordinator makes -------------------------------------------------------


def give_up(conn: sa.Connection, job_id: int, kind: TaskKind, max_attempts: int) -> int:
    """PENDING, or RUNNING with an expired lease, -> FAILED once out of attempts: a task that
    keeps killing its worker fails the job instead of looping for ever."""
    return int(
        conn.execute(
            sa.update(_t)
            .where(
                _t.c.job_id == job_id,
                _t.c.kind == kind,
                _t.c.attempts >= max_attempts,
                sa.or_(_t.c.state == TaskState.PENDING, _lease_expired()),
            )
            .values(
                state=TaskState.FAILED,
                error=sa.func.concat(
                    f"gave up after {max_attempts} attempts; last error: ",
                    sa.func.coalesce(_t.c.error, "worker lost"),
                ),
                updated_at=_now,
            )
        ).rowcount
    )


def due(t: Any, queued_timeout_sec: float) -> sa.ColumnElement[bool]:
    """A row of ``t`` (job_tasks or an alias) that needs a message now (see mark_due)."""
    return sa.or_(
        sa.and_(t.c.state == TaskState.PENDING, t.c.next_attempt_at <= _now),
        sa.and_(
            t.c.state == TaskState.QUEUED, t.c.dispatched_at < _now - _secs(queued_timeout_sec)
        ),
        sa.and_(t.c.state == TaskState.RUNNING, t.c.lease_until < _now),
    )


def mark_due(
    conn: sa.Connection, job_id: int, kind: TaskKind, queued_timeout_sec: float
) -> list[tuple[int, str]]:
    """-> QUEUED for every task that needs a message now: PENDING past its backoff, QUEUED for
    longer than ``queued_timeout_sec`` (the message was lost: Redis restarted, say), RUNNING
    with an expired lease (the worker died). Returns (task id, queue) to send."""
    rows = conn.execute(
        sa.update(_t)
        .where(_t.c.job_id == job_id, _t.c.kind == kind, due(_t, queued_timeout_sec))
        .values(state=TaskState.QUEUED, dispatched_at=_now, updated_at=_now)
        .returning(_t.c.id, _t.c.queue)
    ).all()
    return [(int(r[0]), str(r[1])) for r in rows]


# -- transitions a worker makes --------------------------------------------------------------


def claim(
    conn: sa.Connection,
    job_id: int,
    kind: TaskKind,
    task_ids: Sequence[int],
    *,
    worker: str,
    lease_sec: float,
    max_attempts: int,
) -> list[Claimed]:
    """-> RUNNING (attempt + 1, a fresh lease) for every task of ``task_ids`` that is free
    (PENDING, QUEUED, or RUNNING under an expired lease) and still has attempts left, while
    its job is in the phase this kind belongs to and not cancelled. One statement per batch."""
    job_ok = (
        sa.select(s.jobs.c.id)
        .where(
            s.jobs.c.id == job_id,
            s.jobs.c.state.in_([str(p) for p in kind.phases]),
            s.jobs.c.cancel_requested.is_(False),
        )
        .exists()
    )
    rows = conn.execute(
        sa.update(_t)
        .where(
            any_of(_t.c.id, task_ids),
            _t.c.job_id == job_id,
            _t.c.kind == kind,
            _t.c.attempts < max_attempts,
            sa.or_(_t.c.state.in_([TaskState.PENDING, TaskState.QUEUED]), _lease_expired()),
            job_ok,
        )
        .values(
            state=TaskState.RUNNING,
            attempts=_t.c.attempts + 1,
            lease_until=_now + _secs(lease_sec),
            worker=worker,
            updated_at=_now,
        )
        .returning(_t)
    ).all()
    return sorted((Claimed(r.id, r.attempts, r) for r in rows), key=lambda c: c.id)


def renew(
    conn: sa.Connection,
    job_id: int,
    claims: Iterable[Claimed],
    *,
    worker: str,
    lease_sec: float,
    current: Claimed | None = None,
    bytes_done: int | None = None,
) -> int:
    """Extend the leases of this worker's RUNNING tasks while the job is active and not
    cancelled; record the bytes of the task in flight. Returns how many leases are still ours:
    zero means stop (another attempt took over, or the job ended)."""
    job_alive = (
        sa.select(s.jobs.c.id)
        .where(
            s.jobs.c.id == job_id,
            s.jobs.c.cancel_requested.is_(False),
            s.jobs.c.state.in_([JobState.SNAPSHOTING, JobState.REPLICATING]),
        )
        .exists()
    )
    alive = conn.execute(
        sa.update(_t)
        .where(
            any_of(_t.c.id, [c.id for c in claims]),
            _t.c.state == TaskState.RUNNING,
            _t.c.worker == worker,
            job_alive,
        )
        .values(lease_until=_now + _secs(lease_sec), updated_at=_now)
    ).rowcount
    if current is not None and bytes_done is not None:
        conn.execute(
            sa.update(_t)
            .where(_t.c.id == current.id, _t.c.attempts == current.attempt)
            .values(bytes_done=bytes_done)
        )
    return int(alive)


def complete(conn: sa.Connection, done: list[dict[str, Any]], **columns: Any) -> int:
    """RUNNING -> DONE for each ``{"task_id", "attempt", <columns>...}``, only where the attempt
    is still the one claimed. ``columns`` names the extra columns to set and their SQL types."""
    if not done:
        return 0
    return int(
        conn.execute(
            sa.update(_t)
            .where(
                _t.c.id == sa.bindparam("task_id"),
                _t.c.attempts == sa.bindparam("attempt"),
                _t.c.state == TaskState.RUNNING,
            )
            .values(
                state=TaskState.DONE,
                lease_until=None,
                error=None,
                updated_at=_now,
                **{k: sa.bindparam(k, type_=v) for k, v in columns.items()},
            )
            .execution_options(preserve_rowcount=True),
            done,
        ).rowcount
    )


def fail(conn: sa.Connection, task: Claimed, error: str, retry_after: float | None) -> bool:
    """RUNNING -> PENDING after ``retry_after`` seconds, or -> FAILED when it is None; only
    where the attempt is still the one claimed. True if the row changed."""
    values: dict[str, Any] = {
        "error": redact(error)[:2000],
        "lease_until": None,
        "updated_at": _now,
    }
    if retry_after is None:
        values["state"] = TaskState.FAILED
    else:
        values |= {"state": TaskState.PENDING, "next_attempt_at": _now + _secs(retry_after)}
    return bool(
        conn.execute(
            sa.update(_t)
            .where(
                _t.c.id == task.id,
                _t.c.state == TaskState.RUNNING,
                _t.c.attempts == task.attempt,
            )
            .values(**values)
        ).rowcount
    )


# -- reading ---------------------------------------------------------------------------------


def counts(conn: sa.Connection, job_id: int, kind: TaskKind) -> tuple[TaskCounts, str | None]:
    """The state machine's view of one phase: total and done of ``kind``; failures of any kind
    (an apply may fail while snapshots still run), with the first one's error; and ``ready``,
    the snapshots taken whose tablets have no apply tasks yet (one snapshot task per tablet)."""
    of_kind = _t.c.kind == kind
    failed = _t.c.state == TaskState.FAILED
    row = conn.execute(
        sa.select(
            sa.func.count().filter(of_kind),
            sa.func.count().filter(of_kind, _t.c.state == TaskState.DONE),
            sa.func.count().filter(failed),
            sa.func.min(_t.c.error).filter(failed),
            sa.func.count().filter(_t.c.kind == TaskKind.SNAPSHOT, _t.c.state == TaskState.DONE),
            sa.func.count(sa.distinct(_t.c.dst_tablet_id)).filter(_t.c.kind == TaskKind.APPLY),
        ).where(_t.c.job_id == job_id)
    ).one()
    ready = max(row[4] - row[5], 0)
    return TaskCounts(row[0], row[1], row[2], ready), row[3]


def any_not_done(conn: sa.Connection, job_id: int, kind: TaskKind) -> bool:
    """Whether a task of ``kind`` is not DONE yet (none: the phase is complete). Every task
    message asks when it ends: the states are named (an index range each) and the first row
    found answers, where counting ``state <> DONE`` read every DONE row of the job (0.5 s a
    message at 100,000 tablets)."""
    not_done = [str(x) for x in TaskState if x is not TaskState.DONE]
    return bool(
        conn.execute(
            sa.select(
                sa.exists().where(
                    _t.c.job_id == job_id, _t.c.kind == kind, _t.c.state.in_(not_done)
                )
            )
        ).scalar_one()
    )


# Everything a reader may see of a task row: the download token is not for show.
_SHOWN = [c for c in _t.c if c.name != "transfer_token"]


def of_job(
    conn: sa.Connection, job_id: int, kind: TaskKind | None = None, *, with_token: bool = False
) -> list[Any]:
    """The job's task rows, by id; the download token only for the coordinator's own use."""
    q = sa.select(*(_t.c if with_token else _SHOWN)).where(_t.c.job_id == job_id).order_by(_t.c.id)
    if kind is not None:
        q = q.where(_t.c.kind == kind)
    return list(conn.execute(q))


def snapshot_targets(job_id: int, *, full_only: bool = False) -> sa.Select[Any]:
    """A subquery: the job's target tablets (with ``full_only``, those whose snapshot is full,
    so that their old rowsets go stale at the commit)."""
    q = sa.select(_t.c.dst_tablet_id).where(_t.c.job_id == job_id, _t.c.kind == TaskKind.SNAPSHOT)
    return q.where(_t.c.incremental.is_(False)) if full_only else q


def forget_tokens(conn: sa.Connection, job_id: int, page: int = 5000) -> None:
    """The job has ended: its download tokens are of no more use to anyone. A page of rows a
    statement: each row is rewritten whole (manifest and all), and 200,000 at once took 13 s."""
    with_token = (
        sa.select(_t.c.id)
        .where(_t.c.job_id == job_id, _t.c.transfer_token.is_not(None))
        .limit(page)
        .scalar_subquery()
    )
    while conn.execute(
        sa.update(_t).where(_t.c.id.in_(with_token)).values(transfer_token=None)
    ).rowcount:
        pass


def cancel_open(conn: sa.Connection, job_id: int) -> int:
    """Every open task of an aborted job -> CANCELLED: nothing will ever finish them, and a late
    worker's compare-and-set (which expects RUNNING) then changes nothing."""
    return int(
        conn.execute(
            sa.update(_t)
            .where(_t.c.job_id == job_id, _t.c.state.in_(OPEN_STATES))
            .values(state=TaskState.CANCELLED, lease_until=None, updated_at=_now)
        ).rowcount
    )
