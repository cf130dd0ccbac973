"""Read-side views of catalog rows, and the queries that build them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.catalog.names import split_table_name as split_table_name
from app.errors import NotFound
from app.schema import ColumnDef, arrow_schema
from app.storage.rowsets import RowsetState


@dataclass(frozen=True)
class Backend:
    id: int
    name: str
    storage_root: str
    state: str
    transfer_url: str | None = None  # where other hosts download its files from


@dataclass(frozen=True)
class TableInfo:
    id: int
    db_id: int
    db_name: str
    name: str
    columns: tuple[ColumnDef, ...]
    schema_hash: int
    partition_column: str | None
    distribution_columns: tuple[str, ...]
    buckets: int
    replication_num: int

    @property
    def full_name(self) -> str:
        return f"{self.db_name}.{self.name}"

    @property
    def arrow_schema(self) -> pa.Schema:
        return arrow_schema(self.columns)

    def column(self, name: str) -> ColumnDef:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


@dataclass(frozen=True)
class PartitionInfo:
    id: int
    name: str
    lower: Any
    upper: Any
    visible_version: int
    version_epoch: int
    version_txn_kind: str
    visible_at: dt.datetime


@dataclass(frozen=True)
class TabletInfo:
    id: int
    partition_id: int
    bucket: int
    backend_ids: tuple[int, ...]


@dataclass(frozen=True)
class RowsetInfo:
    id: str
    tablet_id: int
    txn_id: int
    start_version: int | None
    end_version: int | None
    state: RowsetState
    num_rows: int
    data_size: int
    files: tuple[dict[str, Any], ...]


def find_table(conn: sa.Connection, full_name: str, cluster: str = "") -> TableInfo | None:
    return find_tables(conn, [full_name]).get(full_name)


def find_tables(conn: sa.Connection, full_names: list[str]) -> dict[str, TableInfo]:
    """The tables of these names that exist, by name: one query however many are asked."""
    wanted = {f"{d}.{t}" for d, t in map(split_table_name, full_names)}
    if not wanted:
        return {}
    rows = conn.execute(
        sa.select(s.tables, s.databases.c.name.label("db_name"))
        .join(s.databases, s.databases.c.id == s.tables.c.db_id)
        .where(any_of(s.databases.c.name + "." + s.tables.c.name, wanted))
    ).all()
    found = {f"{r.db_name}.{r.name}": table_from_row(r._mapping) for r in rows}
    return {n: found[n] for n in full_names if n in found}


def get_table(conn: sa.Connection, full_name: str, cluster: str = "") -> TableInfo:
    table = find_table(conn, full_name)
    if table is None:
        where = f" in cluster {cluster!r}" if cluster else ""
        raise NotFound(
            f"table {full_name}{where} does not exist "
            f"(see `replicator table list {cluster or 'CLUSTER'}`)"
        )
    return table


def table_by_id(conn: sa.Connection, table_id: int) -> TableInfo:
    row = conn.execute(
        sa.select(s.tables, s.databases.c.name.label("db_name"))
        .join(s.databases, s.databases.c.id == s.tables.c.db_id)
        .where(s.tables.c.id == table_id)
    ).first()
    if row is None:
        raise NotFound(f"table id {table_id} does not exist")
    return table_from_row(row._mapping)


def table_from_row(m: Any) -> TableInfo:
    return TableInfo(
        id=m["id"],
        db_id=m["db_id"],
        db_name=m["db_name"],
        name=m["name"],
        columns=tuple(ColumnDef.from_json(c) for c in m["columns"]),
        schema_hash=m["schema_hash"],
        partition_column=m["partition_column"],
        distribution_columns=tuple(m["distribution_columns"]),
        buckets=m["buckets"],
        replication_num=m["replication_num"],
    )


def list_tables(conn: sa.Connection) -> list[TableInfo]:
    rows = conn.execute(
        sa.select(s.tables, s.databases.c.name.label("db_name"))
        .join(s.databases, s.databases.c.id == s.tables.c.db_id)
        .order_by(s.databases.c.name, s.tables.c.name)
    ).all()
    return [table_from_row(r._mapping) for r in rows]


def list_partitions(conn: sa.Connection, table_id: int) -> list[PartitionInfo]:
    return partitions_of(conn, [table_id])[table_id]


def partitions_of(conn: sa.Connection, table_ids: list[int]) -> dict[int, list[PartitionInfo]]:
    """Each table's partitions, by id: one query however many tables."""
    out: dict[int, list[PartitionInfo]] = {t: [] for t in table_ids}
    rows = conn.execute(
        sa.select(s.partitions)
        .where(any_of(s.partitions.c.table_id, table_ids))
        .order_by(s.partitions.c.id)
    ).all()
    for r in rows:
        out[r.table_id].append(partition_from_row(r._mapping))
    return out


def partition_from_row(m: Any) -> PartitionInfo:
    return PartitionInfo(
        id=m["id"],
        name=m["name"],
        lower=m["lower"],
        upper=m["upper"],
        visible_version=m["visible_version"],
        version_epoch=m["version_epoch"],
        version_txn_kind=m["version_txn_kind"],
        visible_at=m["visible_at"],
    )


def list_tablets(conn: sa.Connection, table_id: int) -> list[TabletInfo]:
    return tablets_of(conn, [table_id])[table_id]


def tablets_of(conn: sa.Connection, table_ids: list[int]) -> dict[int, list[TabletInfo]]:
    """Each table's tablets with their replicas' backends, by table id: one query."""
    out: dict[int, list[TabletInfo]] = {t: [] for t in table_ids}
    rows = conn.execute(
        sa.select(
            s.partitions.c.table_id,
            s.tablets.c.id,
            s.tablets.c.partition_id,
            s.tablets.c.bucket,
            sa.func.array_agg(aggregate_order_by(s.replicas.c.backend_id, s.replicas.c.id)).label(
                "backend_ids"
            ),
        )
        .join(s.partitions, s.partitions.c.id == s.tablets.c.partition_id)
        .join(s.replicas, s.replicas.c.tablet_id == s.tablets.c.id)
        .where(any_of(s.partitions.c.table_id, table_ids))
        .group_by(s.partitions.c.table_id, s.tablets.c.id)
        .order_by(s.tablets.c.partition_id, s.tablets.c.bucket)
    ).all()
    for r in rows:
        out[r.table_id].append(TabletInfo(r.id, r.partition_id, r.bucket, tuple(r.backend_ids)))
    return out


def list_backends(conn: sa.Connection) -> dict[int, Backend]:
    rows = conn.execute(sa.select(s.backends).order_by(s.backends.c.id)).all()
    return {r.id: Backend(r.id, r.name, r.storage_root, r.state, r.transfer_url) for r in rows}


def visible_rowsets(
    conn: sa.Connection, tablet_ids: list[int], up_to_version: dict[int, int] | None = None
) -> dict[int, list[RowsetInfo]]:
    """VISIBLE rowsets per tablet, in version order."""
    out: dict[int, list[RowsetInfo]] = {t: [] for t in tablet_ids}
    if not tablet_ids:
        return out
    rows = conn.execute(
        sa.select(s.rowsets)
        .where(any_of(s.rowsets.c.tablet_id, tablet_ids), s.rowsets.c.state == RowsetState.VISIBLE)
        .order_by(s.rowsets.c.tablet_id, s.rowsets.c.start_version)
    ).all()
    for r in rows:
        info = rowset_from_row(r._mapping)
        limit = None if up_to_version is None else up_to_version.get(info.tablet_id)
        if limit is not None and (info.end_version or 0) > limit:
            continue
        out[info.tablet_id].append(info)
    return out


def rowset_from_row(m: Any) -> RowsetInfo:
    return RowsetInfo(
        id=m["id"],
        tablet_id=m["tablet_id"],
        txn_id=m["txn_id"],
        start_version=m["start_version"],
        end_version=m["end_version"],
        state=RowsetState(m["state"]),
        num_rows=m["num_rows"],
        data_size=m["data_size"],
        files=tuple(m["files"]),
    )
