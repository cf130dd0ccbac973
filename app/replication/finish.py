"""Commit and abort of a replication job's target transaction."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa

from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.errors import StorageUnavailable, TargetMoved
from app.replication import taskrows
from app.replication.taskrows import TaskKind
from app.storage import holds
from app.storage.client import rowset_dir, staging_dir, storage_for
from app.storage.rowsets import RowsetState

log = logging.getLogger(__name__)


# Target rowset ids are derived, not drawn: a rerun of the same task names the same rowsets,
# and an abort can find what an apply installed even before it was recorded.
ROWSET_NS = uuid.UUID("5b0c7f5e-9d1e-4a57-9a52-0f3c9b1f2e11")


def hold_owner(dst_cluster: str, job_id: int) -> str:
    return f"job:{dst_cluster}:{job_id}"


def target_rowset_id(job_id: int, dst_tablet_id: int, src_rowset_id: str) -> str:
    return uuid.uuid5(ROWSET_NS, f"{job_id}/{dst_tablet_id}/{src_rowset_id}").hex


def installed_dirs(task: Any) -> list[str]:
    """The rowset directories an apply task installs (or may have begun to) on its replica."""
    return [
        rowset_dir(task.dst_tablet_id, target_rowset_id(task.job_id, task.dst_tablet_id, r["id"]))
        for r in (task.manifest or {}).get("rowsets", [])
    ]


def commit(conn: sa.Connection, job_id: int, txn_id: int) -> dict[str, int]:
    """Make the job's pending rowsets visible and set partition versions, in the caller's
    transaction. Raises TargetMoved if a target partition moved since planning."""
    txns.lock_open(conn, txn_id)
    plans = conn.execute(
        sa.select(s.job_partitions).where(s.job_partitions.c.job_id == job_id)
    ).all()
    part_ids = [p.dst_partition_id for p in plans]
    current = {
        r.id: r
        for r in conn.execute(
            sa.select(s.partitions)
            .where(s.partitions.c.id.in_(part_ids))
            .order_by(s.partitions.c.id)
            .with_for_update()
        )
    }
    for p in plans:
        now = current[p.dst_partition_id]
        if (now.visible_version, now.version_epoch) != (p.dst_version, p.dst_epoch):
            raise TargetMoved(
                f"target partition {p.partition_name!r} moved from version {p.dst_version} to "
                f"{now.visible_version} during the job; nothing was applied"
            )
    full_tablets = taskrows.snapshot_targets(job_id, full_only=True)
    conn.execute(
        sa.update(s.rowsets)
        .where(s.rowsets.c.tablet_id.in_(full_tablets), s.rowsets.c.state == RowsetState.VISIBLE)
        .values(state=RowsetState.STALE, stale_at=sa.func.now())
    )
    conn.execute(
        sa.update(s.rowsets)
        .where(s.rowsets.c.txn_id == txn_id, s.rowsets.c.state == RowsetState.PENDING)
        .values(state=RowsetState.VISIBLE)
    )
    versions = {}
    for p in plans:
        conn.execute(
            sa.update(s.partitions)
            .where(s.partitions.c.id == p.dst_partition_id)
            .values(
                visible_version=p.src_version,
                version_epoch=p.src_epoch,
                version_txn_kind="REPLICATION",
                visible_at=sa.func.now(),
            )
        )
        versions[p.partition_name] = p.src_version
    txns.mark_visible(conn, txn_id)
    return versions


def abort_txn(conn: sa.Connection, txn_id: int | None, reason: str) -> None:
    if txn_id is not None:
        txns.abort(conn, txn_id, reason)


def clean_target(dst: Cluster, txn_id: int, job_id: int | None = None) -> int:
    """Delete the files an aborted job left on the target: staged, installed-but-pending, and
    installed by an apply that had not recorded them yet (named by ``target_rowset_id``)."""
    with dst.engine.begin() as conn:
        backends = model.list_backends(conn)
        applies = taskrows.of_job(conn, job_id, TaskKind.APPLY) if job_id is not None else []
        rows = conn.execute(
            sa.select(s.rowsets.c.id, s.rowsets.c.tablet_id).where(
                s.rowsets.c.txn_id == txn_id, s.rowsets.c.state == RowsetState.STALE
            )
        ).all()
        tablet_backends: dict[int, list[int]] = {}
        if rows:
            for rep in conn.execute(
                sa.select(s.replicas.c.tablet_id, s.replicas.c.backend_id).where(
                    s.replicas.c.tablet_id.in_({r.tablet_id for r in rows})
                )
            ):
                tablet_backends.setdefault(rep.tablet_id, []).append(rep.backend_id)
        for r in rows:
            for b in tablet_backends.get(r.tablet_id, []):
                _delete(backends[b], rowset_dir(r.tablet_id, r.id))
        if rows:
            conn.execute(
                sa.update(s.rowsets)
                .where(s.rowsets.c.id.in_([r.id for r in rows]))
                .values(state=RowsetState.DELETED)
            )
    for task in applies:
        for path in installed_dirs(task):
            _delete(backends[task.dst_backend_id], path)
    for backend in backends.values():
        _delete(backend, staging_dir(txn_id))
    return len(rows)


def _delete(backend: model.Backend, path: str) -> None:
    """Best effort: a backend that cannot be reached now keeps the files until GC's orphan
    sweep finds them (the catalog no longer names them)."""
    try:
        storage_for(backend.storage_root).delete_tree(path)
    except StorageUnavailable as exc:
        log.warning("cannot remove %s on backend %s now: %s", path, backend.name, exc)


def release_holds(src: Cluster, dst_cluster: str, job_id: int) -> int:
    with src.engine.begin() as conn:
        return holds.release(conn, hold_owner(dst_cluster, job_id))
