"""Submitting replication jobs and reading them back."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import AdmissionRefused, InvalidRequest, LabelConflict, NotFound, TableBusy
from app.replication import taskrows
from app.replication.coordinator import record_event
from app.replication.plan import Plan, TablePair, create_target_like, make_plan
from app.replication.progress import KindProgress
from app.replication.progress import progress as task_progress
from app.replication.state import ACTIVE_STATES, JobState
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

    @property
    def ref(self) -> str:
        return f"{self.cluster}:{self.id}"


def parse_ref(ref: str) -> tuple[str, int]:
    cluster, sep, num = ref.partition(":")
    if not sep or not num.isdigit():
        raise InvalidRequest(
            f"job {ref!r} must be written CLUSTER:ID (e.g. dr:12), as `jobs` lists it"
        )
    return cluster, int(num)


def _digest(pair: TablePair, options: dict[str, Any]) -> str:
    body = json.dumps({"pair": pair.__dict__, "options": options}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def submit(
    settings: Settings,
    src: str,
    dst: str,
    *,
    partitions: list[str] | None = None,
    label: str | None = None,
    create_target: bool = False,
    replication_num: int | None = None,
    timeout_sec: int | None = None,
    overwrite: bool = False,
) -> tuple[str, int, bool]:
    """Validate, plan and record a job. Returns (cluster, job id, created).

    Bad input raises a UserError and leaves nothing behind. An up-to-date table gives a job
    that is COMMITTED at once, saying so.
    """
    pair = TablePair.parse(src, dst)
    src_c = Cluster(settings, pair.src_cluster)
    dst_c = Cluster(settings, pair.dst_cluster)
    src_c.ensure_ready()
    dst_c.ensure_ready()
    options: dict[str, Any] = {
        "partitions": sorted(partitions) if partitions is not None else None,
        "create_target": create_target,
        "replication_num": replication_num,
        "timeout_sec": timeout_sec,
    }
    if overwrite:  # only when asked, so that earlier jobs' labels keep their digest
        options["overwrite"] = True
    if timeout_sec is not None and timeout_sec < 1:
        raise InvalidRequest(f"timeout_sec must be at least 1, got {timeout_sec}")
    digest = _digest(pair, options)
    label = label or f"job-{uuid.uuid4().hex[:12]}"
    existing = _by_label(dst_c, label)
    if existing is not None:
        if existing[1] != digest:
            raise LabelConflict(
                f"label {label!r} already names job {pair.dst_cluster}:{existing[0]} with other "
                "arguments; use a new label"
            )
        return pair.dst_cluster, existing[0], False
    plan = make_plan(
        src_c, dst_c, pair, partitions=partitions, create_target=create_target, overwrite=overwrite
    )
    if plan.dst is None:
        with src_c.engine.connect() as conn:
            src_parts = model.list_partitions(conn, plan.src.id)
        create_target_like(dst_c, pair, plan.src, src_parts, replication_num)
        plan = make_plan(src_c, dst_c, pair, partitions=partitions)
    assert plan.dst is not None
    return _insert_job(settings, dst_c, pair, plan, label, digest, options)


def _insert_job(
    settings: Settings,
    dst_c: Cluster,
    pair: TablePair,
    plan: Plan,
    label: str,
    digest: str,
    options: dict[str, Any],
) -> tuple[str, int, bool]:
    """Admit and insert the job row, or say why not."""
    replicas = sum(len(t.dst_backend_ids) for t in plan.tablets)
    with dst_c.engine.begin() as conn:
        # Admission and the duplicate-table check must see every other submit's job row.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274002)"))
        if not plan.up_to_date:
            _admit(conn, settings, replicas, plan.data_size)
        _refuse_if_busy(conn, pair)
        up_to_date = plan.up_to_date
        message = (
            f"nothing to replicate: {pair.dst_cluster}:{pair.dst_table} is up to date with "
            f"{pair.src_cluster}:{pair.src_table}"
            if up_to_date
            else None
        )
        try:
            with conn.begin_nested():
                job_id = conn.execute(
                    sa.insert(s.jobs)
                    .values(
                        label=label,
                        state=str(JobState.COMMITTED if up_to_date else JobState.INITIALIZING),
                        src_cluster=pair.src_cluster,
                        src_table=pair.src_table,
                        dst_table=pair.dst_table,
                        options=options | {"replicas": replicas, "data_size": plan.data_size},
                        args_digest=digest,
                        message=message,
                        finished_at=sa.func.now() if up_to_date else None,
                    )
                    .returning(s.jobs.c.id)
                ).scalar_one()
        except sa.exc.IntegrityError:
            raced = _by_label(dst_c, label)
            if raced is None or raced[1] != digest:
                raise LabelConflict(f"label {label!r} was just taken by another job") from None
            return pair.dst_cluster, raced[0], False
        record_event(conn, job_id, None, JobState.INITIALIZING, "submitted", "client")
        if message is not None:
            record_event(conn, job_id, JobState.INITIALIZING, JobState.COMMITTED, message, "client")
    return pair.dst_cluster, job_id, True


def _refuse_if_busy(conn: sa.Connection, pair: TablePair) -> None:
    busy = conn.execute(
        sa.select(s.jobs.c.id, s.jobs.c.label).where(
            s.jobs.c.dst_table == pair.dst_table,
            s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]),
        )
    ).first()
    if busy is not None:
        raise TableBusy(
            f"{pair.dst_cluster}:{pair.dst_table} is already being replicated by job "
            f"{pair.dst_cluster}:{busy.id} ({busy.label}); wait for it or cancel it"
        )


def _admit(conn: sa.Connection, settings: Settings, replicas: int, data_size: int) -> None:
    active = (
        conn.execute(
            sa.select(s.jobs.c.options).where(s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]))
        )
        .scalars()
        .all()
    )
    limit = settings.replication_max_parallel_table_count
    if len(active) >= limit:
        raise AdmissionRefused(
            f"{len(active)} replication jobs are running, the limit is {limit} "
            "(replication_max_parallel_table_count); submit again when one has finished"
        )
    running_replicas = sum(int(o.get("replicas", 0)) for o in active)
    limit = settings.replication_max_parallel_replica_count
    if running_replicas + replicas > limit:
        raise AdmissionRefused(
            f"this job needs {replicas} tablet replicas and running jobs hold {running_replicas}; "
            f"the limit is {limit} (replication_max_parallel_replica_count). Submit again later "
            "or replicate fewer partitions at a time"
        )
    running_mb = sum(int(o.get("data_size", 0)) for o in active) / 2**20
    limit_mb = settings.replication_max_parallel_data_size_mb
    if running_mb + data_size / 2**20 > limit_mb:
        raise AdmissionRefused(
            f"this job moves {data_size / 2**20:.1f} MB and running jobs {running_mb:.1f} MB; the "
            f"limit is {limit_mb} MB (replication_max_parallel_data_size_mb). Submit again later "
            "or replicate fewer partitions at a time"
        )


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


def _by_label(dst: Cluster, label: str) -> tuple[int, str] | None:
    with dst.engine.connect() as conn:
        row = conn.execute(
            sa.select(s.jobs.c.id, s.jobs.c.args_digest).where(s.jobs.c.label == label)
        ).first()
    return (row.id, row.args_digest) if row else None


def get(settings: Settings, cluster: str, job_id: int) -> JobRecord:
    dst = Cluster(settings, cluster)
    with dst.engine.connect() as conn:
        row = conn.execute(sa.select(s.jobs).where(s.jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"job {cluster}:{job_id} does not exist (see `replicator jobs`)")
    return _record(cluster, row)


def _record(cluster: str, row: Any) -> JobRecord:
    return JobRecord(
        cluster=cluster,
        id=row.id,
        label=row.label,
        state=JobState(row.state),
        src=f"{row.src_cluster}:{row.src_table}",
        dst=f"{cluster}:{row.dst_table}",
        options=row.options,
        txn_id=row.txn_id,
        cancel_requested=row.cancel_requested,
        message=row.message,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def list_jobs(
    settings: Settings, cluster: str, states: list[str] | None = None, limit: int = 100
) -> list[JobRecord]:
    dst = Cluster(settings, cluster)
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
