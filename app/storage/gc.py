"""Garbage collection of a cluster's storage.

Deletes the files of STALE rowsets (replaced by compaction, overwrite or a full replication, or
left by aborted transactions) unless an unexpired hold covers them; aborts transactions past their
timeout first, drops expired holds, and removes files no catalog row mentions once they are older
than the grace period (a crash between writing a file and recording it).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.cluster import Cluster
from app.errors import StorageUnavailable
from app.storage import holds
from app.storage.client import StorageClient, rowset_dir, storage_for
from app.storage.marker import owner_of
from app.storage.rowsets import RowsetState

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    aborted_transactions: int = 0
    deleted_rowsets: int = 0
    kept_by_holds: int = 0
    expired_holds: int = 0
    orphan_files: int = 0
    staging_dirs: int = 0
    foreign_roots: list[str] = field(default_factory=list)  # skipped: not marked as ours


def collect(
    cluster: Cluster, *, backend: str | None = None, orphan_grace_sec: int | None = None
) -> GcReport:
    """Collect the cluster's garbage. ``backend``: only that backend's root, the share of the
    backend's own host (a root is visible on its host only; the beat sends one such run to
    every backend's queue). The catalog steps run either way: they are idempotent.

    A run over every backend deletes each stale rowset's copies and marks it DELETED. A run
    over one backend deletes only its copies and leaves the row STALE, since the other replicas'
    hosts may not have run yet; ``collect_catalog`` marks it DELETED ``SETTLE_SEC`` after it
    went stale. A copy left then (its backend was down) is an orphan, swept once it is back."""
    report = collect_catalog(cluster)
    grace = cluster.settings.orphan_file_grace_sec if orphan_grace_sec is None else orphan_grace_sec
    with cluster.engine.begin() as conn:
        held = holds.held_rowsets_subquery()
        report.kept_by_holds = _count_held_stale(conn, held)
        backends = model.list_backends(conn)
        if backend is not None:
            backends = {i: b for i, b in backends.items() if b.name == backend}
        ours = _own_roots(cluster.name, backends, report)
        report.deleted_rowsets += _delete_stale_rowsets(
            conn, held, backends, ours, mark=backend is None
        )
        live = set(
            conn.execute(
                sa.select(s.rowsets.c.id).where(s.rowsets.c.state != RowsetState.DELETED)
            ).scalars()
        )
        open_txns = set(
            conn.execute(
                sa.select(s.transactions.c.id).where(s.transactions.c.state.in_(txns.OPEN_STATES))
            ).scalars()
        )
    cutoff = time.time() - grace
    for b in backends.values():
        if b.id not in ours:
            continue
        storage = storage_for(b.storage_root)
        # A backend that cannot be reached is swept by a later run, once it is back.
        with contextlib.suppress(StorageUnavailable):
            _sweep_orphans(storage, live, cutoff, report)
            _sweep_staging(storage, open_txns, report)
    return report


# Long enough for every backend's run to come by (the beat sends them every 300 s).
SETTLE_SEC = 1800


def collect_catalog(cluster: Cluster) -> GcReport:
    """The steps that touch no file: abort transactions past their timeout, drop expired
    holds, mark DELETED the stale rowsets no hold covers once every backend's run has had time
    to remove their copies. Run by the coordinator's beat, and by every collection."""
    report = GcReport()
    report.aborted_transactions = len(txns.abort_expired(cluster.engine))
    with cluster.engine.begin() as conn:
        report.expired_holds = conn.execute(
            sa.delete(s.holds).where(s.holds.c.expires_at <= sa.func.now())
        ).rowcount
        settled = s.rowsets.c.stale_at < sa.func.now() - sa.text(f"interval '{SETTLE_SEC} s'")
        report.deleted_rowsets = conn.execute(
            sa.update(s.rowsets)
            .where(
                s.rowsets.c.state == RowsetState.STALE,
                settled,
                s.rowsets.c.id.not_in(holds.held_rowsets_subquery()),
            )
            .values(state=RowsetState.DELETED)
        ).rowcount
    return report


def backend_names(cluster: Cluster) -> list[str]:
    with cluster.engine.connect() as conn:
        return sorted(b.name for b in model.list_backends(conn).values())


def _count_held_stale(conn: sa.Connection, held: sa.Select[tuple[str]]) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(s.rowsets)
            .where(s.rowsets.c.state == RowsetState.STALE, s.rowsets.c.id.in_(held))
        ).scalar_one()
    )


def _own_roots(cluster: str, backends: dict[int, model.Backend], report: GcReport) -> set[int]:
    """The backends whose root carries this cluster's own marker: GC deletes nothing anywhere
    else (a root shared with, or nested in, another cluster's would lose that one's files)."""
    ours = set()
    for b in backends.values():
        if owner_of(b.storage_root) == (cluster, b.name):
            ours.add(b.id)
        else:
            report.foreign_roots.append(b.storage_root)
            log.warning(
                "gc of %s skips backend %s: its root %s is not marked as its own "
                "(run `replicator backend add` for it again if it really is)",
                cluster,
                b.name,
                b.storage_root,
            )
    return ours


def _delete_stale_rowsets(
    conn: sa.Connection,
    held: sa.Select[tuple[str]],
    backends: dict[int, model.Backend],
    ours: set[int],
    *,
    mark: bool,
) -> int:
    """Delete the files of STALE rowsets no hold covers (in this cluster's own roots among
    ``backends``); with ``mark``, also mark them DELETED. Returns how many were collected."""
    # FOR UPDATE keeps a new hold (whose insert locks the row FOR KEY SHARE) from landing on a
    # rowset while its files go. A run that marks skips rows another run holds; one backend's
    # run waits for them instead (in id order: no deadlock), since the rows stay STALE and its
    # own copies still have to go (measured: two backends' runs at once, one deleted nothing).
    doomed = conn.execute(
        sa.select(s.rowsets.c.id, s.rowsets.c.tablet_id)
        .where(s.rowsets.c.state == RowsetState.STALE, s.rowsets.c.id.not_in(held))
        .order_by(s.rowsets.c.id)
        .with_for_update(skip_locked=mark)
    ).all()
    replica_rows = conn.execute(sa.select(s.replicas.c.tablet_id, s.replicas.c.backend_id)).all()
    by_tablet: dict[int, list[int]] = {}
    for rep in replica_rows:
        by_tablet.setdefault(rep.tablet_id, []).append(rep.backend_id)
    for r in doomed:
        # Replicated rowsets may also sit on a former replica backend; try them all.
        for b in by_tablet.get(r.tablet_id, backends.keys()):
            if b not in ours:
                continue
            # An unreachable backend keeps the files: once the row is DELETED they are
            # orphans, which the sweep removes when the backend is back.
            with contextlib.suppress(StorageUnavailable):
                storage_for(backends[b].storage_root).delete_tree(rowset_dir(r.tablet_id, r.id))
    if doomed and mark:
        conn.execute(
            sa.update(s.rowsets)
            .where(any_of(s.rowsets.c.id, [r.id for r in doomed]))
            .values(state=RowsetState.DELETED)
        )
    return len(doomed)


def _sweep_orphans(storage: StorageClient, live: set[str], cutoff: float, report: GcReport) -> None:
    """Delete rowset directories that no live catalog row names and whose newest file is older
    than ``cutoff`` (a crash between writing a file and recording it)."""
    for tablet_dir in storage.list_dirs("data"):
        for rowset_id in storage.list_dirs(f"data/{tablet_dir}"):
            if rowset_id in live:
                continue
            path = f"data/{tablet_dir}/{rowset_id}"
            newest = max((m for _p, m in storage.walk_files(path)), default=0.0)
            if newest < cutoff:
                storage.delete_tree(path)
                report.orphan_files += 1


def _sweep_staging(storage: StorageClient, open_txns: set[int], report: GcReport) -> None:
    """Delete the staging directories of transactions that are no longer open."""
    for txn_dir in storage.list_dirs("staging"):
        if txn_dir.isdigit() and int(txn_dir) in open_txns:
            continue
        storage.delete_tree(f"staging/{txn_dir}")
        report.staging_dirs += 1
