"""A restore's source: a backup seen as a cluster, so that a restore is a replication job.

``build`` writes a small catalog of its own (cluster ``restore_<id>``) from a manifest: the
table, the partitions being restored at the versions chosen, their rowsets up to those versions
as VISIBLE, and one backend whose root is the repository (``repo+<URL>``). The replication job
then plans, snapshots, fetches (app/replication/sources.py reads the repository's objects by
their content), verifies and commits exactly as from a live cluster: one transaction on the
target, atomic, aborted cleanly. The catalog is a disposable copy of what the manifest says;
the coordinator drops it when the job ends (``drop``).
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from app.backup.choose import Choice
from app.backup.manifest import Partition
from app.backup.repo import VIEW_PREFIX, Repository
from app.catalog import schema as s
from app.catalog.engine import drop_database
from app.cluster import Cluster, PartitionSpec
from app.config import Settings
from app.storage.rowsets import RowsetState

VIEW_CLUSTER_PREFIX = "restore_"


def is_view(cluster: str) -> bool:
    return cluster.startswith(VIEW_CLUSTER_PREFIX)


def build(settings: Settings, repo: Repository, choice: Choice) -> tuple[str, str]:
    """A new source catalog holding what ``choice`` restores; returns (cluster, table)."""
    m = choice.manifest
    view = Cluster(settings, f"{VIEW_CLUSTER_PREFIX}{uuid.uuid4().hex[:12]}")
    view.init()
    try:
        with view.engine.begin() as conn:
            conn.execute(
                sa.insert(s.backends).values(name="repository", storage_root=VIEW_PREFIX + repo.url)
            )
        parts = [p for p in m.partitions if p.name in choice.versions]
        table = view.create_table(
            m.table,
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
            _fill(conn, table.id, table.db_id, choice)
    except BaseException:
        drop(settings, view.name)
        raise
    return view.name, m.table


def _fill(conn: sa.Connection, table_id: int, db_id: int, choice: Choice) -> None:
    """Versions, epochs and rowsets of the partitions, as the backup recorded them; and the
    table's replication_num (a target created by the restore gets the backed-up table's)."""
    conn.execute(
        sa.update(s.tables)
        .where(s.tables.c.id == table_id)
        .values(replication_num=choice.manifest.replication_num)
    )
    txn_id = conn.execute(
        sa.insert(s.transactions)
        .values(
            db_id=db_id,
            table_id=table_id,
            label=f"RESTORE_{choice.manifest.name}",
            kind="RESTORE",
            state="VISIBLE",
            timeout_sec=1,
            deadline=sa.func.now(),
            finished_at=sa.func.now(),
        )
        .returning(s.transactions.c.id)
    ).scalar_one()
    tablets = {
        (r.name, r.bucket): r.id
        for r in conn.execute(
            sa.select(s.partitions.c.name, s.tablets.c.bucket, s.tablets.c.id)
            .join(s.tablets, s.tablets.c.partition_id == s.partitions.c.id)
            .where(s.partitions.c.table_id == table_id)
        )
    }
    rows: list[dict[str, Any]] = []
    for p in choice.manifest.partitions:
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
        rows += _rowsets(
            p, version, {t.bucket: tablets[(name, t.bucket)] for t in p.tablets}, txn_id
        )
    for i in range(0, len(rows), 5000):
        conn.execute(sa.insert(s.rowsets), rows[i : i + 5000])


def _rowsets(
    p: Partition, version: int, tablet_of: dict[int, int], txn_id: int
) -> list[dict[str, Any]]:
    """The partition's rowsets up to ``version`` (later ones are not part of it then)."""
    return [
        {
            "id": r.id,
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


def drop(settings: Settings, cluster: str) -> None:
    """Remove a restore's source catalog (only ever one named ``restore_...``)."""
    if not is_view(cluster):
        raise AssertionError(f"{cluster} is not a restore's source catalog")
    drop_database(settings.dsn(cluster))
