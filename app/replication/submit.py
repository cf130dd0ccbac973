"""Submitting replication jobs: validate, plan, admit, create the target if asked, record.

Bad input raises a UserError and leaves nothing behind: every check runs before the target
table is created, and the creation and the jobs' inserts happen under one lock per target
cluster, so a racing submit finds the other's job rather than a table it did not expect.

Jobs go in as a batch (one job is a batch of one), all or none: each catalog is read in a few
grouped queries for the whole batch, the admission and busy checks are one query each, and the
jobs are one insert. One by one, 1,000 jobs cost 35 ms of client time each (sixteen statements
a job); see bench/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.catalog.names import check_label, check_table_name
from app.cluster import Cluster
from app.config import Settings
from app.errors import InvalidRequest, LabelConflict, redact
from app.replication.admission import Admission, refuse_busy
from app.replication.catalogread import CatalogRead
from app.replication.plan import (
    Plan,
    TablePair,
    create_target_like,
    make_plan,
    plan_from,
    target_replication_num,
)
from app.replication.state import JobState


@dataclass(frozen=True)
class Request:
    """One job to submit: ``src`` is ``CLUSTER:DB.TABLE``, ``dst`` ``CLUSTER[:DB.TABLE]``.
    ``repair``, ``schema_changes``: app/sync; ``restore``: app/backup/restore.py."""

    src: str
    dst: str
    partitions: list[str] | None = None
    label: str | None = None
    create_target: bool = False
    replication_num: int | None = None
    timeout_sec: int | None = None
    overwrite: bool = False
    repair: list[str] | None = None
    schema_changes: list[dict[str, Any]] | None = None
    restore: dict[str, Any] | None = None


@dataclass
class _Job:
    """A request checked and about to be recorded."""

    request: Request
    pair: TablePair
    label: str
    options: dict[str, Any]
    digest: str
    plan: Plan | None = None
    existing: int | None = None  # the job its label already names
    plan_options: dict[str, Any] = field(default_factory=dict)


def _digest(pair: TablePair, options: dict[str, Any]) -> str:
    body = json.dumps({"pair": pair.__dict__, "options": options}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def submit(settings: Settings, src: str, dst: str, **options: Any) -> tuple[str, int, bool]:
    """Validate, plan and record a job; returns (cluster, job id, created). ``options``: those
    of :class:`Request`. Bad input: a UserError, nothing left behind (see above)."""
    return submit_many(settings, [Request(src, dst, **options)])[0]


def submit_many(settings: Settings, requests: list[Request]) -> list[tuple[str, int, bool]]:
    """Submit every request, all or none, to one target cluster; returns (cluster, job id,
    created) for each, in order. A label that names a job already returns that job (created
    False). Any request refused refuses the batch, naming it, and nothing is recorded."""
    if not requests:
        return []
    jobs = [_check(r) for r in requests]
    clusters = {j.pair.dst_cluster for j in jobs}
    if len(clusters) > 1:
        raise InvalidRequest(
            "a batch of jobs goes to one target cluster, this one names "
            f"{', '.join(sorted(clusters))}: submit one batch per target cluster"
        )
    _refuse_duplicates(jobs)
    dst_c = Cluster(settings, jobs[0].pair.dst_cluster)
    sources = {j.pair.src_cluster: Cluster(settings, j.pair.src_cluster) for j in jobs}
    for c in (*sources.values(), dst_c):
        c.ensure_ready()
    with dst_c.engine.connect() as conn:
        known = _by_labels(conn, [j.label for j in jobs])
    # Planning reads both catalogs: done before the lock, so that concurrent submits plan at
    # once (the plan only sizes and validates the job; the coordinator plans again). The same
    # label again returns its job, whatever the tables are now: no plan for it.
    _plan_all([j for j in jobs if j.label not in known], sources, dst_c)
    with dst_c.engine.begin() as conn:
        # Every submit to this cluster holds this lock from its checks to its insert: admission,
        # the busy check and the label see every other submit's job row, and a racing submit
        # of the same target finds the other's job, not a table it did not expect.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274002)"))
        existing = _by_labels(conn, [j.label for j in jobs])
        for j in jobs:
            if j.label in existing:
                j.existing = _same_job(j.pair, j.label, existing[j.label], j.digest)
        new = [j for j in jobs if j.existing is None]
        for j in new:
            j.plan = j.plan or make_plan(
                sources[j.pair.src_cluster], dst_c, j.pair, **j.plan_options
            )
        _admit_and_refuse_busy(conn, settings, dst_c, new)
        for j in new:  # every check passed: the missing targets are created now
            if _plan(j).dst is None:
                j.plan = _create_target(sources[j.pair.src_cluster], dst_c, j)
        ids = _insert_jobs(conn, new)
    cluster = dst_c.name
    return [
        (cluster, j.existing, False) if j.existing is not None else (cluster, ids[j.label], True)
        for j in jobs
    ]


def _check(r: Request) -> _Job:
    """The request's own checks (no catalog read yet), its options and their digest."""
    pair = TablePair.parse(r.src, r.dst)
    _check_arguments(r.label, r.replication_num, r.timeout_sec)
    options = {
        "partitions": sorted(r.partitions) if r.partitions is not None else None,
        "create_target": r.create_target,
        "replication_num": r.replication_num,
        "timeout_sec": r.timeout_sec,
    } | _flags(r.overwrite, r.repair, r.schema_changes, r.restore)
    plan_options = {
        "partitions": r.partitions,
        "create_target": r.create_target,
        "overwrite": r.overwrite,
        "repair": r.repair,
        "schema_changes": r.schema_changes,
    }
    label = r.label or f"job-{uuid.uuid4().hex[:12]}"
    return _Job(r, pair, label, options, _digest(pair, options), plan_options=plan_options)


def _refuse_duplicates(jobs: list[_Job]) -> None:
    """Two requests of one batch for one label, or for one target table: refused up front."""
    for what, key in (("label", lambda j: j.label), ("target table", lambda j: j.pair.dst_table)):
        twice = [k for k, n in Counter(map(key, jobs)).items() if n > 1]
        if twice:
            raise InvalidRequest(
                f"this batch names the {what} {twice[0]!r} more than once: one job per {what}"
            )


def _plan_all(jobs: list[_Job], sources: dict[str, Cluster], dst_c: Cluster) -> None:
    """Plan every job from each catalog read once (grouped queries, however many jobs)."""
    if not jobs:
        return
    target = CatalogRead.read(dst_c, [j.pair.dst_table for j in jobs], sizes=False)
    for name, src_c in sources.items():
        mine = [j for j in jobs if j.pair.src_cluster == name]
        if not mine:
            continue
        source = CatalogRead.read(src_c, [j.pair.src_table for j in mine], sizes=True)
        for j in mine:
            j.plan = plan_from(source, target, j.pair, **j.plan_options)


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


def _plan(job: _Job) -> Plan:
    assert job.plan is not None, "planned before the checks"
    return job.plan


def _replicas(plan: Plan) -> int:
    return sum(len(t.dst_backend_ids) for t in plan.tablets)


def _admit_and_refuse_busy(
    conn: sa.Connection, settings: Settings, dst_c: Cluster, jobs: list[_Job]
) -> None:
    """The busy check of every target table, then each job's admission in turn: a job whose
    target is missing counts the replicas it will create (its name is checked first)."""
    if not jobs:
        return
    refuse_busy(conn, dst_c.name, [j.pair.dst_table for j in jobs])
    admission = Admission(conn, settings)
    for j in jobs:
        plan = _plan(j)
        if plan.up_to_date:
            continue
        replicas = _replicas(plan)
        if plan.dst is None:
            check_table_name(j.pair.dst_table)
            copies = target_replication_num(dst_c, plan.src, j.request.replication_num)
            replicas = len(plan.partitions) * plan.src.buckets * copies
        admission.admit(replicas, plan.data_size)


def _create_target(src_c: Cluster, dst_c: Cluster, job: _Job) -> Plan:
    """Create the missing target once everything was checked; returns the new plan. (In a
    batch, a creation that fails keeps the tables created before it: submitting the batch
    again finds them and replicates into them.)"""
    plan = _plan(job)
    with src_c.engine.connect() as src_conn:
        src_parts = model.list_partitions(src_conn, plan.src.id)
    create_target_like(dst_c, job.pair, plan.src, src_parts, job.request.replication_num)
    return make_plan(src_c, dst_c, job.pair, partitions=job.request.partitions)


def _insert_jobs(conn: sa.Connection, jobs: list[_Job]) -> dict[str, int]:
    """Insert the job rows (and their first events) in one statement each; the caller holds
    the submit lock. Returns the new ids by label."""
    if not jobs:
        return {}
    rows, done = [], {}
    for j in jobs:
        plan, pair = _plan(j), j.pair
        if plan.up_to_date:
            done[j.label] = (
                f"nothing to replicate: {pair.dst_cluster}:{pair.dst_table} is up to date with "
                f"{pair.src_cluster}:{pair.src_table}"
            )
        rows.append(
            {
                "label": j.label,
                "state": str(JobState.COMMITTED if plan.up_to_date else JobState.INITIALIZING),
                "src_cluster": pair.src_cluster,
                "src_table": pair.src_table,
                "dst_table": pair.dst_table,
                "options": j.options | {"replicas": _replicas(plan), "data_size": plan.data_size},
                "args_digest": j.digest,
                "message": done.get(j.label),
                "finished_at": sa.func.now() if plan.up_to_date else None,
            }
        )
    inserted = conn.execute(sa.insert(s.jobs).values(rows).returning(s.jobs.c.id, s.jobs.c.label))
    ids = {label: int(job_id) for job_id, label in inserted}
    init, committed = str(JobState.INITIALIZING), str(JobState.COMMITTED)
    events = [
        {"job_id": ids[j.label], "from_state": None, "to_state": init, "reason": "submitted"}
        for j in jobs
    ] + [
        {"job_id": ids[label], "from_state": init, "to_state": committed, "reason": redact(why)}
        for label, why in done.items()
    ]
    conn.execute(sa.insert(s.job_events).values(actor="client"), events)
    return ids


def _same_job(pair: TablePair, label: str, existing: tuple[int, str], digest: str) -> int:
    """The job the label names, if it was submitted with the same arguments."""
    if existing[1] != digest:
        raise LabelConflict(
            f"label {label!r} already names job {pair.dst_cluster}:{existing[0]} with other "
            "arguments; use a new label"
        )
    return existing[0]


def _by_labels(conn: sa.Connection, labels: list[str]) -> dict[str, tuple[int, str]]:
    """(id, argument digest) of the jobs these labels name already."""
    rows = conn.execute(
        sa.select(s.jobs.c.label, s.jobs.c.id, s.jobs.c.args_digest).where(
            any_of(s.jobs.c.label, labels)
        )
    ).all()
    return {r.label: (r.id, r.args_digest) for r in rows}
