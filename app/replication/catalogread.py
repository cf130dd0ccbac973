"""What planning reads of a catalog: the tables, partitions, tablets and sizes of any number of
tables in a few grouped queries (a submit of 1,000 jobs read each catalog eight times a job)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.catalog.model import TableInfo
from app.cluster import Cluster
from app.storage.rowsets import RowsetState


@dataclass
class CatalogRead:
    """What planning reads of one catalog, for any number of tables at once: a submit of many
    jobs reads each catalog in a few grouped queries, not a few per job."""

    tables: dict[str, TableInfo]
    parts: dict[int, list[model.PartitionInfo]]
    tablets: dict[int, list[model.TabletInfo]]
    sizes: dict[int, dict[int, int]]  # table id -> partition id -> bytes (read on a source)
    backends: dict[int, model.Backend]

    @staticmethod
    def read(cluster: Cluster, names: list[str], sizes: bool) -> CatalogRead:
        with cluster.engine.connect() as conn:
            tables = model.find_tables(conn, names)
            ids = [t.id for t in tables.values()]
            return CatalogRead(
                tables,
                model.partitions_of(conn, ids),
                model.tablets_of(conn, ids),
                _sizes(conn, ids) if sizes else {},
                {} if sizes else model.list_backends(conn),
            )


def _sizes(conn: sa.Connection, table_ids: list[int]) -> dict[int, dict[int, int]]:
    """Bytes of visible rowsets per partition of each table (for admission by data size)."""
    rows = conn.execute(
        sa.select(
            s.partitions.c.table_id,
            s.tablets.c.partition_id,
            sa.func.coalesce(sa.func.sum(s.rowsets.c.data_size), 0),
        )
        .join(s.rowsets, s.rowsets.c.tablet_id == s.tablets.c.id)
        .join(s.partitions, s.partitions.c.id == s.tablets.c.partition_id)
        .where(any_of(s.partitions.c.table_id, table_ids), s.rowsets.c.state == RowsetState.VISIBLE)
        .group_by(s.partitions.c.table_id, s.tablets.c.partition_id)
    ).all()
    out: dict[int, dict[int, int]] = {}
    for table_id, partition_id, size in rows:
        out.setdefault(table_id, {})[partition_id] = int(size)
    return out
