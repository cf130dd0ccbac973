"""Submitting a replication job: validate, plan, admit, create the target if asked, record.

Bad input raises a UserError and leaves nothing behind: every check runs before the target
table is created, and the creation and the job's insert happen under one lock per target
cluster, so a racing submit finds the other's job rather than a table it did not expect.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from typing import Any

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.catalog.names import check_label, check_table_name
from app.cluster import Cluster
from app.config import Settings
from app.errors import AdmissionRefused, InvalidRequest, LabelConflict, TableBusy
from app.replication.coordinator import record_event
from app.replication.plan import (
    Plan,
    TablePair,
    create_target_like,
    make_plan,
    target_replication_num,
)
from app.replication.state import ACTIVE_STATES, JobState


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
    repair: list[str] | None = None,
    schema_changes: list[dict[str, Any]] | None = None,
    restore: dict[str, Any] | None = None,
) -> tuple[str, int, bool]:
    """Validate, plan and record a job; returns (cluster, job id, created). Bad input: a
    UserError, nothing left behind (see above). ``repair``, ``schema_changes``: app/sync;
    ``restore``: app/backup/restore.py."""
    pair = TablePair.parse(src, dst)
    _check_arguments(label, replication_num, timeout_sec)
    src_c, dst_c = Cluster(settings, pair.src_cluster), Cluster(settings, pair.dst_cluster)
    src_c.ensure_ready()
    dst_c.ensure_ready()
    options = {
        "partitions": sorted(partitions) if partitions is not None else None,
        "create_target": create_target,
        "replication_num": replication_num,
        "timeout_sec": timeout_sec,
    } | _flags(overwrite, repair, schema_changes, restore)
    digest = _digest(pair, options)
    label = label or f"job-{uuid.uuid4().hex[:12]}"

    plan_now = functools.partial(
        make_plan, src_c, dst_c, pair, partitions=partitions, create_target=create_target,
        overwrite=overwrite, repair=repair, schema_changes=schema_changes,
    )  # fmt: skip
    with dst_c.engine.connect() as conn:
        known = _by_label(conn, label) is not None
    # Planning reads both catalogs: done before the lock, so that concurrent submits plan at
    # once (the plan only sizes and validates the job; the coordinator plans again). The same
    # label again returns its job, whatever the tables are now: no plan for it.
    plan = None if known else plan_now()
    with dst_c.engine.begin() as conn:
        # Every submit to this cluster holds this lock from its checks to its insert: admission,
        # the busy check and the label see every other submit's job row, and a racing submit
        # of the same target finds the other's job, not a table it did not expect.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274002)"))
        existing = _by_label(conn, label)
        if existing is not None:
            return pair.dst_cluster, _same_job(pair, label, existing, digest), False
        plan = plan or plan_now()
        if plan.dst is None:
            plan = _create_target(
                conn, settings, (src_c, dst_c), pair, plan, partitions, replication_num
            )
        else:
            _admit_and_refuse_busy(conn, settings, pair, plan, _replicas(plan))
        job_id = _insert_job(conn, pair, plan, label, digest, options)
    return pair.dst_cluster, job_id, True


def _flags(
    overwrite: bool,
    repair: list[str] | None,
    schema_changes: list[dict[str, Any]] | None,
    restore: dict[str, Any] | None,
) -> dict[str, Any]:
    """Options present only when asked for, so that earlier jobs' labels keep their digest.
    ``schema_changes``: the source's alters the job replays on the target at its commit;
    ``restore``: the repository, backup and versions a restore reads."""
    return (
        ({"overwrite": True} if overwrite else {})
        | ({"repair": sorted(repair)} if repair else {})
        | ({"schema_changes": schema_changes} if schema_changes else {})
        | ({"restore": restore} if restore else {})
    )


def _check_arguments(label: str | None, replication_num: int | None, timeout: int | None) -> None:
    if label is not None:
        check_label(label)
    if replication_num is not None and replication_num < 1:
        raise InvalidRequest(f"replication_num must be at least 1, got {replication_num}")
    if timeout is not None and timeout < 1:
        raise InvalidRequest(f"timeout_sec must be at least 1, got {timeout}")


def _replicas(plan: Plan) -> int:
    return sum(len(t.dst_backend_ids) for t in plan.tablets)


def _create_target(
    conn: sa.Connection,
    settings: Settings,
    clusters: tuple[Cluster, Cluster],
    pair: TablePair,
    plan: Plan,
    partitions: list[str] | None,
    replication_num: int | None,
) -> Plan:
    """Create the missing target once everything else was checked; returns the new plan."""
    src_c, dst_c = clusters
    check_table_name(pair.dst_table)
    copies = target_replication_num(dst_c, plan.src, replication_num)
    replicas = len(plan.partitions) * plan.src.buckets * copies
    _admit_and_refuse_busy(conn, settings, pair, plan, replicas)
    with src_c.engine.connect() as src_conn:
        src_parts = model.list_partitions(src_conn, plan.src.id)
    create_target_like(dst_c, pair, plan.src, src_parts, replication_num)
    return make_plan(src_c, dst_c, pair, partitions=partitions)


def _admit_and_refuse_busy(
    conn: sa.Connection, settings: Settings, pair: TablePair, plan: Plan, replicas: int
) -> None:
    if not plan.up_to_date:
        _admit(conn, settings, replicas, plan.data_size)
    _refuse_if_busy(conn, pair)


def _insert_job(
    conn: sa.Connection,
    pair: TablePair,
    plan: Plan,
    label: str,
    digest: str,
    options: dict[str, Any],
) -> int:
    """Insert the job row (and its first events); the caller holds the submit lock."""
    up_to_date = plan.up_to_date
    message = (
        f"nothing to replicate: {pair.dst_cluster}:{pair.dst_table} is up to date with "
        f"{pair.src_cluster}:{pair.src_table}"
        if up_to_date
        else None
    )
    job_id = conn.execute(
        sa.insert(s.jobs)
        .values(
            label=label,
            state=str(JobState.COMMITTED if up_to_date else JobState.INITIALIZING),
            src_cluster=pair.src_cluster,
            src_table=pair.src_table,
            dst_table=pair.dst_table,
            options=options | {"replicas": _replicas(plan), "data_size": plan.data_size},
            args_digest=digest,
            message=message,
            finished_at=sa.func.now() if up_to_date else None,
        )
        .returning(s.jobs.c.id)
    ).scalar_one()
    record_event(conn, job_id, None, JobState.INITIALIZING, "submitted", "client")
    if message is not None:
        record_event(conn, job_id, JobState.INITIALIZING, JobState.COMMITTED, message, "client")
    return int(job_id)


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
    # One row, summed in Postgres: fetching every active job's options made each submit cost
    # more with every job already running (1,000 jobs submitted at once: 35 ms a submit).
    options = s.jobs.c.options
    running, running_replicas, running_bytes = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(options["replicas"].as_integer()), 0),
            sa.func.coalesce(sa.func.sum(options["data_size"].as_numeric(30, 0)), 0),
        ).where(s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]))
    ).one()
    limit = settings.replication_max_parallel_table_count
    if running >= limit:
        raise AdmissionRefused(
            f"{running} replication jobs are running, the limit is {limit} "
            "(replication_max_parallel_table_count); submit again when one has finished"
        )
    limit = settings.replication_max_parallel_replica_count
    if running_replicas + replicas > limit:
        raise AdmissionRefused(
            f"this job needs {replicas} tablet replicas and running jobs hold {running_replicas}; "
            f"the limit is {limit} (replication_max_parallel_replica_count). Submit again later "
            "or replicate fewer partitions at a time"
        )
    running_mb = int(running_bytes) / 2**20
    limit_mb = settings.replication_max_parallel_data_size_mb
    if running_mb + data_size / 2**20 > limit_mb:
        raise AdmissionRefused(
            f"this job moves {data_size / 2**20:.1f} MB and running jobs {running_mb:.1f} MB; the "
            f"limit is {limit_mb} MB (replication_max_parallel_data_size_mb). Submit again later "
            "or replicate fewer partitions at a time"
        )


def _same_job(pair: TablePair, label: str, existing: tuple[int, str], digest: str) -> int:
    """The job the label names, if it was submitted with the same arguments."""
    if existing[1] != digest:
        raise LabelConflict(
            f"label {label!r} already names job {pair.dst_cluster}:{existing[0]} with other "
            "arguments; use a new label"
        )
    return existing[0]


def _by_label(conn: sa.Connection, label: str) -> tuple[int, str] | None:
    row = conn.execute(
        sa.select(s.jobs.c.id, s.jobs.c.args_digest).where(s.jobs.c.label == label)
    ).first()
    return (row.id, row.args_digest) if row else None
