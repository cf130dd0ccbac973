"""Adding a partition to an existing table: a new, empty range (version 1, a fresh epoch) with
its tablets placed like the table's others."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.catalog.names import check_name
from app.cluster import Cluster, _insert_partition, _place_replicas, _replica_counts
from app.errors import AlreadyExists, InvalidRequest
from app.schema import parse_value
from app.sync import fence


def add_partition(
    cluster: Cluster,
    full_name: str,
    name: str,
    lower: Any,
    upper: Any,
    *,
    by_sync: str | None = None,
) -> model.PartitionInfo:
    """Add partition ``name`` covering [lower, upper). Refused if it overlaps another, and on
    the target of a sync policy unless that policy (``by_sync``) adds it."""
    check_name("partition", name)
    with cluster.engine.begin() as conn:
        table = model.get_table(conn, full_name, cluster.name)
        conn.execute(sa.select(s.tables.c.id).where(s.tables.c.id == table.id).with_for_update())
        if by_sync is None or fence.policy_of(conn, table) != by_sync:
            fence.refuse_if_fenced(conn, table, "adding a partition")
        if table.partition_column is None:
            raise InvalidRequest(f"table {full_name} is not partitioned: it has one partition")
        col = table.column(table.partition_column)
        lo, hi = parse_value(col.type, lower), parse_value(col.type, upper)
        if lo is not None and hi is not None and lo >= hi:
            raise InvalidRequest(f"partition {name!r}: lower bound {lo} must be below {hi}")
        for p in model.list_partitions(conn, table.id):
            if p.name == name:
                raise AlreadyExists(f"table {full_name} already has a partition {name!r}")
            if (p.upper is None or lo is None or lo < p.upper) and (
                hi is None or p.lower is None or p.lower < hi
            ):
                raise InvalidRequest(
                    f"partition {name!r} [{lo}, {hi}) overlaps {p.name!r} [{p.lower}, {p.upper})"
                )
        index_id = conn.execute(
            sa.select(s.indexes.c.id).where(s.indexes.c.table_id == table.id, s.indexes.c.is_base)
        ).scalar_one()
        active = [b for b in model.list_backends(conn).values() if b.state == "ACTIVE"]
        tablets = _insert_partition(conn, table.id, index_id, name, lo, hi, table.buckets)
        rows: list[dict[str, int]] = []
        copies = min(table.replication_num, len(active))
        _place_replicas(
            tablets, [b.id for b in active], _replica_counts(conn, active), copies, rows
        )
        conn.execute(sa.insert(s.replicas), rows)
        return next(p for p in model.list_partitions(conn, table.id) if p.name == name)
