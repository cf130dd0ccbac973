"""Commit and abort of a replication job's target transaction."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import sqlalchemy as sa

from app import evolve
from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.cluster import Cluster
from app.errors import StorageUnavailable, TargetMoved
from app.replication import taskrows
from app.replication.taskrows import TaskKind
from app.storage import holds
from app.storage.client import rowset_dir, staging_dir, storage_for
from app.storage.marker import check_marker
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
            .where(any_of(s.partitions.c.id, part_ids))
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


def replay_schema(conn: sa.Connection, txn_id: int, specs: list[dict[str, Any]] | None) -> None:
    """A sync job's schema changes (the source's alters since the target's schema), made in the
    commit's transaction: the target's new schema and the rows that need it become visible
    together."""
    if not specs:
        return
    table_id = conn.execute(
        sa.select(s.transactions.c.table_id).where(s.transactions.c.id == txn_id)
    ).scalar_one()
    for spec in specs:
        evolve.apply_change(conn, table_id, evolve.change_from(spec))


def abort_txn(conn: sa.Connection, txn_id: int | None, reason: str) -> None:
    if txn_id is not None:
        txns.abort(conn, txn_id, reason)


def forget_target(dst: Cluster, txn_id: int) -> int:
    """The catalog side of an abort: the rowsets the job recorded (STALE since the abort) are
    DELETED; their files go with the clean-up each target backend runs (``clean_backend``)."""
    with dst.engine.begin() as conn:
        return int(
            conn.execute(
                sa.update(s.rowsets)
                .where(s.rowsets.c.txn_id == txn_id, s.rowsets.c.state == RowsetState.STALE)
                .values(state=RowsetState.DELETED)
            ).rowcount
        )


def clean_backend(dst: Cluster, backend_name: str, job_id: int) -> int:
    """Run on the target backend's own host after its job aborted: remove the job's staged
    files there and every rowset directory its applies installed (recorded or not). Only in a
    root marked as this backend's own. Returns the directories removed."""
    with dst.engine.connect() as conn:
        backend = next(
            (b for b in model.list_backends(conn).values() if b.name == backend_name), None
        )
        txn_id = conn.execute(sa.select(s.jobs.c.txn_id).where(s.jobs.c.id == job_id)).scalar()
        applies = taskrows.of_job(conn, job_id, TaskKind.APPLY)
    if backend is None or txn_id is None:
        return 0
    check_marker(backend.storage_root, dst.name, backend.name)
    paths = [p for t in applies if t.dst_backend_id == backend.id for p in installed_dirs(t)]
    for path in [*paths, staging_dir(txn_id)]:
        _delete(backend, path)
    return len(paths)


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
