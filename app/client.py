"""The Python API.

    from app.client import Replicator
    r = Replicator()                       # settings from replicator.toml / REPLICATOR_* env
    prod = r.cluster("prod")
    prod.init()
    prod.add_backend("be1", "/data/prod/be1")
    prod.create_table("sales.orders", ["id:int64", "day:date", "amount:float64"],
                      partition_by="day", partitions=[("p2024", "2024-01-01", "2025-01-01")],
                      buckets=8, replication_num=1)
    prod.load("sales.orders", "orders.parquet", label="orders-2024-06-01")
    prod.checksum("sales.orders")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from app import read
from app.catalog import model
from app.cluster import Cluster, PartitionSpec
from app.config import Settings, load_settings
from app.schema import ColumnDef
from app.storage import compaction, gc
from app.storage.load import Loader, LoadResult, LoadSource


class ClusterHandle:
    """Everything one can do to one cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self.name = cluster.name

    @property
    def catalog(self) -> Cluster:
        return self._cluster

    def init(self) -> tuple[bool, str | None, str]:
        return self._cluster.init()

    def add_backend(self, name: str, storage_root: str) -> model.Backend:
        return self._cluster.add_backend(name, storage_root)

    def backends(self) -> list[model.Backend]:
        return self._cluster.backends()

    def decommission_backend(self, name: str) -> model.Backend:
        return self._cluster.decommission_backend(name)

    def create_table(
        self,
        full_name: str,
        columns: Sequence[ColumnDef | str | tuple[str, str]],
        *,
        partition_by: str | None = None,
        partitions: Sequence[PartitionSpec | tuple[str, Any, Any]] = (),
        distributed_by: Sequence[str] = (),
        buckets: int = 1,
        replication_num: int = 1,
    ) -> model.TableInfo:
        return self._cluster.create_table(
            full_name,
            columns,
            partition_by=partition_by,
            partitions=partitions,
            distributed_by=distributed_by,
            buckets=buckets,
            replication_num=replication_num,
        )

    def table(self, full_name: str) -> model.TableInfo:
        return self._cluster.table(full_name)

    def tables(self) -> list[model.TableInfo]:
        return self._cluster.tables()

    def partitions(self, full_name: str) -> list[model.PartitionInfo]:
        return self._cluster.partitions(full_name)

    def load(
        self,
        full_name: str,
        source: LoadSource,
        *,
        label: str,
        overwrite: bool = False,
        format: str | None = None,
    ) -> LoadResult:
        return Loader(self._cluster).load(full_name, source, label=label, overwrite=overwrite, fmt=format)

    def compact(self, full_name: str, **kwargs: Any) -> compaction.CompactionReport:
        return compaction.compact(self._cluster, full_name, **kwargs)

    def gc(self, *, orphan_grace_sec: int | None = None) -> gc.GcReport:
        return gc.collect(self._cluster, orphan_grace_sec=orphan_grace_sec)

    def scan(self, full_name: str, partitions: list[str] | None = None) -> pa.Table:
        return read.scan(self._cluster, full_name, partitions)

    def checksum(
        self, full_name: str, partitions: list[str] | None = None
    ) -> list[read.PartitionChecksum]:
        return read.checksum(self._cluster, full_name, partitions)


class Replicator:
    """Entry point: built from settings, hands out clusters (and, later, replication jobs)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()

    def cluster(self, name: str) -> ClusterHandle:
        return ClusterHandle(Cluster(self.settings, name))
