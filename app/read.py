"""Reads at the visible version, and the per-partition proof of content."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from app.catalog import model
from app.cluster import Cluster
from app.errors import NotFound
from app.rowhash import ContentChecksum
from app.storage.rowsets import read_rowset


@dataclass(frozen=True)
class PartitionChecksum:
    partition: str
    version: int
    epoch: int
    rows: int
    checksum: str

    def content(self) -> tuple[str, int, int, str]:
        """What must be equal on two clusters holding the same data."""
        return (self.partition, self.version, self.rows, self.checksum)


def _selected(
    partitions: list[model.PartitionInfo], names: list[str] | None, table: model.TableInfo
) -> list[model.PartitionInfo]:
    if names is None:
        return partitions
    known = {p.name: p for p in partitions}
    missing = [n for n in names if n not in known]
    if missing:
        raise NotFound(
            f"partition(s) {', '.join(missing)} do not exist in {table.full_name} "
            f"(it has {', '.join(known)})"
        )
    return [known[n] for n in names]


def iter_partition(cluster: Cluster, full_name: str, partition: str) -> Iterator[pa.RecordBatch]:
    with cluster.engine.connect() as conn:
        table = model.get_table(conn, full_name, cluster.name)
        part = _selected(model.list_partitions(conn, table.id), [partition], table)[0]
        tablets = [t for t in model.list_tablets(conn, table.id) if t.partition_id == part.id]
        rowsets = model.visible_rowsets(
            conn, [t.id for t in tablets], {t.id: part.visible_version for t in tablets}
        )
        backends = model.list_backends(conn)
    for tablet in tablets:
        replicas = [backends[b] for b in tablet.backend_ids]
        for rowset in rowsets[tablet.id]:
            yield from read_rowset(rowset, replicas, table.columns)


def scan(cluster: Cluster, full_name: str, partitions: list[str] | None = None) -> pa.Table:
    table = cluster.table(full_name)
    names = [p.name for p in _selected(cluster.partitions(full_name), partitions, table)]
    batches = [b for name in names for b in iter_partition(cluster, full_name, name)]
    return pa.Table.from_batches(batches, schema=table.arrow_schema)


def checksum(
    cluster: Cluster, full_name: str, partitions: list[str] | None = None
) -> list[PartitionChecksum]:
    table = cluster.table(full_name)
    out = []
    for part in _selected(cluster.partitions(full_name), partitions, table):
        digest = ContentChecksum()
        for batch in iter_partition(cluster, full_name, part.name):
            digest.add(batch)
        out.append(
            PartitionChecksum(
                part.name, part.visible_version, part.version_epoch, digest.rows, digest.hexdigest
            )
        )
    return out
