"""A restore's source: a backup seen as a cluster, so that a restore is a replication job.

``build`` writes, from a manifest, a table of its own into the catalog ``restore_sources``: the
partitions being restored at the versions chosen, their rowsets up to those versions as
VISIBLE, on the one backend of that catalog whose root is the repository (``repo+<URL>``, one
backend per repository). The replication job then plans, snapshots, fetches
(app/replication/sources.py reads the repository's objects by their content), verifies and
commits exactly as from a live cluster: one transaction on the target, atomic, aborted cleanly.

The table is a disposable copy of what the manifest says; the coordinator drops it when the job
ends (``drop``). One catalog serves every restore, each in a database of its own (``r<id>``):
a catalog database per restore cost 0.3-0.4 s to create, a third of a one-partition restore's
time (bench/backup.py). Rowsets get ids of their own there (two restores of one backup must not
share rows); the files are found by their content, not by rowset id.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa
import xxhash
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.backup.choose import Choice
from app.backup.manifest import Partition
from app.backup.repo import VIEW_PREFIX, Repository
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.cluster import Cluster, PartitionSpec
from app.config import Settings
from app.errors import NotFound
from app.storage.rowsets import RowsetState

VIEW_CLUSTER = "restore_sources"
_ROWSET_NS = uuid.UUID("6f1d9a52-8d0b-4a43-9a55-2b7c3e0d4a11")


def is_view(cluster: str) -> bool:
    return cluster == VIEW_CLUSTER


def _catalog(settings: Settings) -> Cluster:
    """The views' catalog, made (or migrated) by the first restore that needs it."""
    view = Cluster(settings, VIEW_CLUSTER)
    try:
        view.ensure_ready()
    except NotFound:
        try:
            view.init()
        except Exception:  # another restore's first init at the same moment: use its catalog
            time.sleep(1.0)
            view = Cluster(settings, VIEW_CLUSTER)
            view.ensure_ready()
    return view


def build(settings: Settings, repo: Repository, choice: Choice) -> tuple[str, str]:
    """A source table holding what ``choice`` restores; returns (cluster, table)."""
    m = choice.manifest
    view = _catalog(settings)
    backend_id = _backend(view, repo)
    table_name = f"r{uuid.uuid4().hex[:12]}.{m.table.split('.', 1)[1]}"
    parts = [p for p in m.partitions if p.name in choice.versions]
    try:
        table = view.create_table(
            table_name,
            list(m.columns),
            partition_by=m.partition_column,
            partitions=[PartitionSpec(p.name, p.lower, p.upper) for p in parts]
            if m.partition_column
            else [],
            distributed_by=list(m.distribution_columns),
            buckets=m.buckets,
            replication_num=1,
        )
        with view.engine.begin() as conn:
            _fill(conn, table.id, table.db_id, backend_id, choice)
    except BaseException:
        drop(settings, VIEW_CLUSTER, table_name)
        raise
    return VIEW_CLUSTER, table_name


def _backend(view: Cluster, repo: Repository) -> int:
    """The backend that reads ``repo`` (made the first time a restore reads it)."""
    name = f"repo-{xxhash.xxh3_64(repo.url.encode()).hexdigest()[:16]}"
    with view.engine.begin() as conn:
        conn.execute(
            pg_insert(s.backends)
            .values(name=name, storage_root=VIEW_PREFIX + repo.url)
            .on_conflict_do_nothing()
        )
        return int(
            conn.execute(sa.select(s.backends.c.id).where(s.backends.c.name == name)).scalar_one()
        )


def _fill(conn: sa.Connection, table_id: int, db_id: int, backend_id: int, choice: Choice) -> None:
    """Replicas on the repository's backend; versions, epochs and rowsets of the partitions as
    the backup recorded them; the table's replication_num (a target the restore creates gets
    the backed-up table's)."""
    m = choice.manifest
    conn.execute(
        sa.update(s.tables)
        .where(s.tables.c.id == table_id)
        .values(replication_num=m.replication_num)
    )
    tablets = {
        (r.name, r.bucket): r.id
        for r in conn.execute(
            sa.select(s.partitions.c.name, s.tablets.c.bucket, s.tablets.c.id)
            .join(s.tablets, s.tablets.c.partition_id == s.partitions.c.id)
            .where(s.partitions.c.table_id == table_id)
        )
    }
    conn.execute(
        sa.update(s.replicas)
        .where(any_of(s.replicas.c.tablet_id, list(tablets.values())))
        .values(backend_id=backend_id)
    )
    txn_id = conn.execute(
        sa.insert(s.transactions)
        .values(db_id=db_id, table_id=table_id, label=f"RESTORE_{m.name}", kind="RESTORE",
                state="VISIBLE", timeout_sec=1, deadline=sa.func.now(), finished_at=sa.func.now())
        .returning(s.transactions.c.id)
    ).scalar_one()  # fmt: skip
    rows: list[dict[str, Any]] = []
    for p in m.partitions:
        version = choice.versions.get(p.name)
        if version is None:
            continue
        # An unpartitioned table's one partition is named after its table on both sides.
        name = p.name if (p.name, 0) in tablets else next(iter(tablets))[0]
        conn.execute(
            sa.update(s.partitions)
            .where(s.partitions.c.table_id == table_id, s.partitions.c.name == name)
            .values(visible_version=version, version_epoch=p.epoch, version_txn_kind="RESTORE")
        )
        of_bucket = {t.bucket: tablets[(name, t.bucket)] for t in p.tablets}
        rows += _rowsets(p, version, of_bucket, txn_id, table_id)
    for i in range(0, len(rows), 5000):
        conn.execute(sa.insert(s.rowsets), rows[i : i + 5000])


def _rowsets(
    p: Partition, version: int, tablet_of: dict[int, int], txn_id: int, table_id: int
) -> list[dict[str, Any]]:
    """The partition's rowsets up to ``version`` (later ones are not part of it then)."""
    return [
        {
            "id": uuid.uuid5(_ROWSET_NS, f"{table_id}/{r.id}").hex,
            "tablet_id": tablet_of[t.bucket],
            "txn_id": txn_id,
            "start_version": r.start,
            "end_version": r.end,
            "state": RowsetState.VISIBLE,
            "num_rows": r.num_rows,
            "data_size": r.data_size,
            "files": [f.to_json() for f in r.files],
        }
        for t in p.tablets
        for r in t.rowsets
        if r.end <= version
    ]


def drop(settings: Settings, cluster: str, table: str) -> None:
    """Remove a restore's source table (its rowsets, holds and transaction go with it)."""
    if not is_view(cluster):
        raise AssertionError(f"{cluster} is not the restores' source catalog")
    db = table.split(".", 1)[0]
    with Cluster(settings, cluster).engine.begin() as conn:
        db_id = sa.select(s.databases.c.id).where(s.databases.c.name == db).scalar_subquery()
        tables = sa.select(s.tables.c.id).where(s.tables.c.db_id == db_id)
        tablets = (
            sa.select(s.tablets.c.id)
            .join(s.partitions, s.partitions.c.id == s.tablets.c.partition_id)
            .where(s.partitions.c.table_id.in_(tables))
        )
        # The rowsets first: they name the table's transaction, which goes with the table.
        conn.execute(sa.delete(s.rowsets).where(s.rowsets.c.tablet_id.in_(tablets)))
        conn.execute(sa.delete(s.tables).where(s.tables.c.db_id == db_id))
        conn.execute(sa.delete(s.databases).where(s.databases.c.name == db))
