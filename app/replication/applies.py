"""Starting the applies: an apply task per target replica of every tablet whose snapshot is
taken, as soon as it is taken (the coordinator's START_APPLY, in either phase)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.queues import queue_name
from app.replication import placement, taskrows
from app.replication.taskrows import TaskKind, TaskState

_t = s.job_tasks


def start_applies(conn: sa.Connection, job_id: int, cluster: str) -> int:
    """Apply tasks for every taken snapshot that has none, a page of snapshots at a time (a
    job of 100,000 tablets must not hold all its manifests at once); returns how many."""
    after = 0
    started = 0
    backends = model.list_backends(conn)
    while snaps := snapshots_ready(conn, job_id, after):
        started += _applies_for(conn, job_id, cluster, snaps, backends)
        after = snaps[-1].id
    return started


def snapshots_ready(
    conn: sa.Connection, job_id: int, after_id: int = 0, limit: int = 2000
) -> list[Any]:
    """The DONE snapshot tasks (with their manifests and tokens) whose tablets have no apply
    tasks yet, by id past ``after_id``, at most ``limit``: a caller takes them a page at a time
    (100,000 manifests at once held the coordinator at 650 MB)."""
    a = _t.alias("applies")
    # NOT IN, which Postgres runs as one hash of the job's applied tablets whatever its row
    # estimates: as NOT EXISTS, a table just filled (no statistics yet) got a nested loop,
    # every snapshot against every apply: 10,000 tablets took 10-50 s (bench.huge).
    applied = sa.select(a.c.dst_tablet_id).where(a.c.job_id == job_id, a.c.kind == TaskKind.APPLY)
    ready = sa.and_(
        _t.c.job_id == job_id,
        _t.c.kind == TaskKind.SNAPSHOT,
        _t.c.state == TaskState.DONE,
        _t.c.id > after_id,
        _t.c.dst_tablet_id.not_in(applied),
    )
    return list(conn.execute(sa.select(_t).where(ready).order_by(_t.c.id).limit(limit)))


def _applies_for(
    conn: sa.Connection,
    job_id: int,
    cluster: str,
    snaps: list[Any],
    backends: dict[int, model.Backend],
) -> int:
    replicas: dict[int, list[int]] = defaultdict(list)
    for r in conn.execute(
        sa.select(s.replicas.c.tablet_id, s.replicas.c.backend_id)
        .where(any_of(s.replicas.c.tablet_id, [t.dst_tablet_id for t in snaps]))
        .order_by(s.replicas.c.id)
    ):
        replicas[r.tablet_id].append(r.backend_id)
    rows = []
    for snap in snaps:
        manifest = snap.manifest
        sources = list(manifest["src_backend_ids"])
        fallback = list(manifest.get("fallback_backend_ids", []))
        for i, backend_id in enumerate(replicas[snap.dst_tablet_id]):
            rows.append(
                {
                    "job_id": job_id,
                    "partition_name": snap.partition_name,
                    "bucket": snap.bucket,
                    "src_tablet_id": snap.src_tablet_id,
                    "dst_tablet_id": snap.dst_tablet_id,
                    "dst_backend_id": backend_id,
                    # Spread the replicas of one tablet over different source replicas.
                    "src_backend_ids": placement.rotate(sources, i) + fallback,
                    "queue": queue_name(cluster, backends[backend_id].name),
                    "manifest": manifest,
                    "incremental": snap.incremental,
                    "bytes_total": snap.bytes_total,
                    "transfer_token": snap.transfer_token,
                }
            )
    taskrows.insert(conn, TaskKind.APPLY, rows)
    return len(rows)
