"""Submitting a backup: validate, name it, record the job in the backed-up cluster's catalog.

Bad input raises a UserError and leaves nothing behind. The coordinator does the rest
(app/backup/flow.py). A backup's name is its time, its cluster and its job, so backups of many
clusters and tables can share one repository.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

import sqlalchemy as sa

from app.backup.repo import Repository
from app.catalog import model
from app.catalog import schema as s
from app.catalog.names import check_label
from app.cluster import Cluster
from app.config import Settings
from app.errors import InvalidRequest, LabelConflict, NotFound
from app.replication.coordinator import record_event
from app.replication.state import JobKind, JobState
from app.storage import roots


def split_spec(spec: str) -> tuple[str, str]:
    """``CLUSTER:DATABASE.TABLE`` -> (cluster, table)."""
    cluster, sep, table = spec.partition(":")
    if not sep or not cluster or not table:
        raise InvalidRequest(f"table {spec!r} must be written CLUSTER:DATABASE.TABLE")
    model.split_table_name(table)
    return cluster, table


def submit_backup(
    settings: Settings,
    spec: str,
    repo_url: str,
    *,
    partitions: list[str] | None = None,
    label: str | None = None,
    timeout_sec: int | None = None,
) -> tuple[str, int, bool]:
    """Validate and record a backup job; returns (cluster, job id, created)."""
    cluster_name, table_name = split_spec(spec)
    if label is not None:
        check_label(label)
    if timeout_sec is not None and (isinstance(timeout_sec, bool) or timeout_sec < 1):
        raise InvalidRequest(f"timeout {timeout_sec!r} must be a whole number of seconds >= 1")
    if partitions is not None and not partitions:
        raise InvalidRequest("an empty list of partitions backs up nothing: name one or more")
    repo = Repository(repo_url)
    cluster = Cluster(settings, cluster_name)
    _check_table(cluster, table_name, partitions)
    roots.check_repository(settings, cluster_name, repo.url)
    options: dict[str, Any] = {
        "repo": repo.url,
        "partitions": sorted(set(partitions)) if partitions else None,
        "timeout_sec": timeout_sec,
    }
    digest = hashlib.sha256(
        json.dumps({"table": table_name, **options}, sort_keys=True).encode()
    ).hexdigest()
    job_id, created = _insert(cluster, table_name, label, options, digest)
    return cluster_name, job_id, created


def _check_table(cluster: Cluster, table_name: str, partitions: list[str] | None) -> None:
    cluster.ensure_ready()
    with cluster.engine.connect() as conn:
        table = model.find_table(conn, table_name)
        if table is None:
            raise NotFound(f"table {table_name} does not exist in cluster {cluster.name!r}")
        known = {p.name for p in model.list_partitions(conn, table.id)}
    missing = sorted(set(partitions or ()) - known)
    if missing:
        raise NotFound(f"table {table_name} has no partition {', '.join(missing)}")


def _insert(
    cluster: Cluster, table_name: str, label: str | None, options: dict[str, Any], digest: str
) -> tuple[int, bool]:
    """The job row (the one a label already names, if submitted with the same arguments)."""
    label = label or f"backup-{uuid.uuid4().hex[:12]}"
    with cluster.engine.begin() as conn:
        row = conn.execute(
            sa.select(s.jobs.c.id, s.jobs.c.args_digest).where(s.jobs.c.label == label)
        ).first()
        if row is not None:
            if row.args_digest != digest:
                raise LabelConflict(
                    f"label {label!r} already names job {cluster.name}:{row.id} with other "
                    "arguments; use a new label"
                )
            return int(row.id), False
        now = dt.datetime.now(dt.UTC)
        name = f"{now:%Y%m%dT%H%M%SZ}-{cluster.name}-{table_name}-{uuid.uuid4().hex[:6]}"
        job_id = conn.execute(
            sa.insert(s.jobs)
            .values(
                label=label,
                kind=str(JobKind.BACKUP),
                state=str(JobState.INITIALIZING),
                src_cluster=cluster.name,
                src_table=table_name,
                dst_table=name,
                options=options,
                args_digest=digest,
            )
            .returning(s.jobs.c.id)
        ).scalar_one()
        record_event(
            conn, job_id, None, JobState.INITIALIZING, f"backup {name} submitted", "client"
        )
    return int(job_id), True
