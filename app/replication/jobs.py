"""Replication jobs: submitting them (app.replication.submit) and reading them back."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.cluster import Cluster
from app.config import Settings
from app.errors import InvalidRequest, NotFound
from app.replication import taskrows
from app.replication.progress import KindProgress
from app.replication.progress import progress as task_progress
from app.replication.state import ACTIVE_STATES, JobKind, JobState
from app.replication.submit import Request as Request
from app.replication.submit import submit as submit
from app.replication.submit import submit_many as submit_many
from app.replication.taskrows import TaskKind


@dataclass(frozen=True)
class Progress:
    phase: str
    snapshots_done: int
    snapshots_total: int
    tablets_done: int  # target replicas applied
    tablets_total: int
    bytes_done: int
    bytes_total: int
    incremental_tablets: int
    full_tablets: int

    @property
    def fraction(self) -> float:
        if self.bytes_total:
            return self.bytes_done / self.bytes_total
        return self.tablets_done / self.tablets_total if self.tablets_total else 0.0


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    from_state: str | None
    to_state: str
    reason: str
    actor: str | None


@dataclass(frozen=True)
class JobRecord:
    cluster: str
    id: int
    label: str
    state: JobState
    src: str
    dst: str
    options: dict[str, Any]
    txn_id: int | None
    cancel_requested: bool
    message: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    kind: JobKind = JobKind.REPLICATION
    backup: str | None = None  # a backup job's backup name (its ``dst`` is the repository)

    @property
    def ref(self) -> str:
        return f"{self.cluster}:{self.id}"


BIGINT_MAX = 2**63 - 1


def parse_ref(ref: str) -> tuple[str, int]:
    cluster, sep, num = ref.partition(":")
    if not sep or not num.isdigit():
        raise InvalidRequest(
            f"job {ref!r} must be written CLUSTER:ID (e.g. dr:12), as `jobs` lists it"
        )
    return cluster, int(num)


def purge_history(settings: Settings, cluster: str) -> int:
    """Delete finished jobs older than history_job_keep_max_second (their tasks and events too)."""
    dst = Cluster(settings, cluster)
    keep = dt.timedelta(seconds=settings.history_job_keep_max_second)
    with dst.engine.begin() as conn:
        return conn.execute(
            sa.delete(s.jobs).where(
                s.jobs.c.state.in_([str(JobState.COMMITTED), str(JobState.ABORTED)]),
                s.jobs.c.finished_at < sa.func.now() - keep,
            )
        ).rowcount


def get(settings: Settings, cluster: str, job_id: int) -> JobRecord:
    engine = Cluster(settings, cluster).engine  # the cluster must exist before its jobs can
    row = None
    if 0 < job_id <= BIGINT_MAX:  # past it Postgres refuses the number itself
        with engine.connect() as conn:
            row = conn.execute(sa.select(s.jobs).where(s.jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"job {cluster}:{job_id} does not exist (see `replicator jobs`)")
    return _record(cluster, row)


def get_many(settings: Settings, cluster: str, job_ids: list[int]) -> dict[int, JobRecord]:
    """The records of these jobs of one cluster, by id, in one query (missing ones left out)."""
    with Cluster(settings, cluster).engine.connect() as conn:
        rows = conn.execute(sa.select(s.jobs).where(any_of(s.jobs.c.id, job_ids))).all()
    return {r.id: _record(cluster, r) for r in rows}


def _record(cluster: str, row: Any) -> JobRecord:
    kind = JobKind(row.kind)
    backup = kind is JobKind.BACKUP
    return JobRecord(
        cluster=cluster,
        id=row.id,
        label=row.label,
        state=JobState(row.state),
        src=f"{row.src_cluster}:{row.src_table}",
        dst=f"{row.options['repo']} {row.dst_table}" if backup else f"{cluster}:{row.dst_table}",
        options=row.options,
        txn_id=row.txn_id,
        cancel_requested=row.cancel_requested,
        message=row.message,
        created_at=row.created_at,
        finished_at=row.finished_at,
        kind=kind,
        backup=row.dst_table if backup else None,
    )


def list_jobs(
    settings: Settings, cluster: str, states: list[str] | None = None, limit: int = 100
) -> list[JobRecord]:
    dst = Cluster(settings, cluster)
    if limit < 1:
        raise InvalidRequest(f"limit must be at least 1, got {limit}")
    for state in states or []:
        if state not in JobState.__members__:
            raise InvalidRequest(
                f"unknown job state {state!r}: use one of {', '.join(JobState.__members__)}"
            )
    q = sa.select(s.jobs).order_by(s.jobs.c.id.desc()).limit(limit)
    if states:
        q = q.where(s.jobs.c.state.in_(states))
    with dst.engine.connect() as conn:
        return [_record(cluster, r) for r in conn.execute(q)]


def progress(settings: Settings, cluster: str, job_id: int) -> Progress:
    dst = Cluster(settings, cluster)
    with dst.engine.connect() as conn:
        state = conn.execute(sa.select(s.jobs.c.state).where(s.jobs.c.id == job_id)).scalar_one()
        by_kind = task_progress(conn, [job_id])
        snap = by_kind.get((job_id, TaskKind.SNAPSHOT), KindProgress())
        apply = by_kind.get((job_id, TaskKind.APPLY))
        replicas_planned = 0
        if apply is None:  # before the applies exist, count the replicas they will cover
            replicas_planned = int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(s.replicas)
                    .where(s.replicas.c.tablet_id.in_(taskrows.snapshot_targets(job_id)))
                ).scalar_one()
            )
    return Progress(
        phase=state,
        snapshots_done=snap.done,
        snapshots_total=snap.total,
        tablets_done=apply.done if apply else 0,
        tablets_total=apply.total if apply else replicas_planned,
        bytes_done=apply.bytes_done if apply else 0,
        bytes_total=apply.bytes_total if apply else 0,
        incremental_tablets=snap.incremental,
        full_tablets=snap.full,
    )


def events(settings: Settings, cluster: str, job_id: int) -> list[Event]:
    dst = Cluster(settings, cluster)
    with dst.engine.connect() as conn:
        rows = conn.execute(
            sa.select(s.job_events)
            .where(s.job_events.c.job_id == job_id)
            .order_by(s.job_events.c.id)
        ).all()
    return [Event(r.at, r.from_state, r.to_state, r.reason, r.actor) for r in rows]


def tasks(settings: Settings, cluster: str, job_id: int) -> list[Any]:
    dst = Cluster(settings, cluster)
    with dst.engine.connect() as conn:
        return taskrows.of_job(conn, job_id)


def partitions(settings: Settings, cluster: str, job_id: int) -> list[Any]:
    dst = Cluster(settings, cluster)
    with dst.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(s.job_partitions)
                .where(s.job_partitions.c.job_id == job_id)
                .order_by(s.job_partitions.c.partition_name)
            )
        )


def request_cancel(settings: Settings, cluster: str, job_id: int) -> bool:
    """Ask the coordinator to abort the job. False if it had already finished."""
    dst = Cluster(settings, cluster)
    get(settings, cluster, job_id)
    with dst.engine.begin() as conn:
        return bool(
            conn.execute(
                sa.update(s.jobs)
                .where(s.jobs.c.id == job_id, s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]))
                .values(cancel_requested=True, updated_at=sa.func.now())
            ).rowcount
        )
