"""Which active jobs the beat ticks: one query per cluster names those a tick would move now.

Ticking every open job one after another cost 28 ms a job (700 jobs: 20 s a beat) though most
were only waiting on their workers. The beat asks this query instead, and ticks the other open
jobs a slice a beat in turn (sweep.py), so a need not foreseen here waits about a round. The
conditions follow the state machine (app/replication/state.py): what makes ``step`` decide
something other than "wait".
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.catalog import schema as s
from app.config import Settings
from app.replication import taskrows
from app.replication.state import ACTIVE_STATES, JobState
from app.replication.taskrows import TaskKind, TaskState
from app.txn import TxnState


def due_jobs(engine: Engine, settings: Settings) -> list[int]:
    """Active jobs being planned, cancelled, whose transaction ended, expired or is missing,
    or whose task rows need the coordinator (:func:`tasks_need_coordinator`), by id."""
    j, t = s.jobs, s.transactions
    phase_kind = sa.case(
        (j.c.state == str(JobState.SNAPSHOTING), str(TaskKind.SNAPSHOT)),
        else_=str(TaskKind.APPLY),
    )
    txn_open = sa.select(t.c.id).where(
        t.c.id == j.c.txn_id, t.c.state == TxnState.PREPARE, t.c.deadline >= sa.func.now()
    )
    query = (
        sa.select(j.c.id)
        .where(
            j.c.state.in_([str(x) for x in ACTIVE_STATES]),
            sa.or_(
                j.c.state == str(JobState.INITIALIZING),
                j.c.cancel_requested.is_(True),
                ~txn_open.exists(),
                tasks_need_coordinator(j.c.id, phase_kind, settings.task_queued_timeout_sec),
            ),
        )
        .order_by(j.c.id)
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def tasks_need_coordinator(
    job_id: sa.ColumnElement[Any], phase_kind: sa.ColumnElement[Any], queued_timeout_sec: float
) -> sa.ColumnElement[bool]:
    """The job's task rows give the coordinator something to do: a task failed or is due a
    message (taskrows.due); its phase (tasks of ``phase_kind``) has no task left open; or a
    snapshot is taken whose tablet has no applies yet."""
    rows = s.job_tasks
    task, open_, snap = (rows.alias(n) for n in ("task", "open_task", "taken"))
    wants = sa.or_(task.c.state == TaskState.FAILED, taskrows.due(task, queued_timeout_sec))
    # Snapshots taken whose tablets have no applies: more DONE snapshots than tablets with
    # applies (applies are made only for taken snapshots), counted in one pass over the job's
    # rows. As a NOT EXISTS inside an EXISTS, a table just filled (no statistics yet) got a
    # nested loop of every snapshot against every apply: 20 s a beat at 10,000 tablets.
    ready = (
        sa.select(
            sa.func.count().filter(snap.c.kind == TaskKind.SNAPSHOT, snap.c.state == TaskState.DONE)
            > sa.func.count(sa.distinct(snap.c.dst_tablet_id)).filter(snap.c.kind == TaskKind.APPLY)
        )
        .where(snap.c.job_id == job_id)
        .scalar_subquery()
    )
    return sa.or_(
        sa.exists().where(task.c.job_id == job_id, wants),
        # Not-DONE states by name (an index range each), not ``<> DONE``: that read every DONE
        # row of the job (taskrows.any_not_done).
        ~sa.exists().where(
            open_.c.job_id == job_id,
            open_.c.kind == phase_kind,
            open_.c.state.in_([str(x) for x in TaskState if x is not TaskState.DONE]),
        ),
        sa.and_(phase_kind == TaskKind.SNAPSHOT, ready),
    )
