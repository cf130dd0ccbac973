"""Loads: stream rows into a table as one transaction.

Rows are routed to partitions and hashed to buckets; every touched tablet gets one Parquet rowset
written to each of its replicas, with size and checksum recorded; one Postgres commit then makes
version v visible on every touched partition. Before that commit nothing is visible, and a crash
leaves only PENDING rows and files that garbage collection removes once the transaction expires.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.catalog.model import Backend, PartitionInfo, TableInfo
from app.cluster import Cluster, new_epoch
from app.errors import (
    InvalidRequest,
    LabelConflict,
    NotFound,
    RowsOutsidePartitions,
    StorageUnavailable,
)
from app.rowhash import ContentChecksum, bucket_of
from app.schema import conform
from app.storage.client import rowset_dir, storage_for
from app.storage.rowsets import RowsetWriter, new_rowset_id

BATCH_ROWS = 65536
FLUSH_TABLET_BYTES = 16 * 1024 * 1024
FLUSH_TOTAL_BYTES = 256 * 1024 * 1024

LoadSource: TypeAlias = (
    str
    | os.PathLike[str]
    | pa.Table
    | pa.RecordBatch
    | pa.RecordBatchReader
    | Iterable[Mapping[str, Any]]
)


@dataclass
class LoadResult:
    label: str
    txn_id: int
    rows: int
    bytes: int
    files: int
    versions: dict[str, int] = field(default_factory=dict)
    already_loaded: bool = False


# -- reading inputs ------------------------------------------------------------------------


def read_batches(
    source: LoadSource, schema: pa.Schema, fmt: str | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream the input as record batches, whatever its form. Never reads a file whole."""
    if isinstance(source, pa.Table):
        yield from source.to_batches(max_chunksize=BATCH_ROWS)
        return
    if isinstance(source, pa.RecordBatch):
        yield source
        return
    if isinstance(source, pa.RecordBatchReader):
        yield from source
        return
    if isinstance(source, str | os.PathLike):
        yield from _read_file(Path(source), schema, fmt)
        return
    rows = list(source)
    if rows:
        try:
            yield pa.Table.from_pylist(rows).combine_chunks().to_batches()[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidRequest(f"rows cannot be read as a table: {exc}") from None


def _read_file(path: Path, schema: pa.Schema, fmt: str | None) -> Iterator[pa.RecordBatch]:
    if not path.is_file():
        raise NotFound(f"input file {path} does not exist")
    kind = (fmt or path.suffix.lstrip(".")).lower()
    try:
        if kind in ("parquet", "pq"):
            with pq.ParquetFile(path) as pf:
                yield from pf.iter_batches(batch_size=BATCH_ROWS)
        elif kind in ("csv", "tbl", "txt"):
            convert = pacsv.ConvertOptions(
                column_types={f.name: f.type for f in schema}, strings_can_be_null=True
            )
            read = pacsv.ReadOptions(block_size=16 * 1024 * 1024)
            with pacsv.open_csv(path, read_options=read, convert_options=convert) as csv_reader:
                yield from csv_reader
        elif kind in ("arrow", "feather", "ipc", "arrows"):
            with pa.memory_map(str(path)) as mm:
                try:
                    ipc_file = pa.ipc.open_file(mm)
                    for i in range(ipc_file.num_record_batches):
                        yield ipc_file.get_batch(i)
                except pa.ArrowInvalid:
                    mm.seek(0)
                    yield from pa.ipc.open_stream(mm)
        else:
            raise InvalidRequest(
                f"cannot tell the format of {path}: name it .parquet, .csv or .arrow, "
                "or pass the format explicitly"
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidRequest(f"cannot read {path} as {kind}: {str(exc).splitlines()[0]}") from None


# -- routing -------------------------------------------------------------------------------


class PartitionRouter:
    """Maps partition-key values to partition indexes with one ``searchsorted``."""

    def __init__(self, table: TableInfo, partitions: list[PartitionInfo]) -> None:
        self.table = table
        self.partitions = partitions
        self.column = table.partition_column
        if self.column is None:
            return
        col_type = table.column(self.column).type
        self._kind = col_type
        order = sorted(
            range(len(partitions)),
            key=lambda i: (partitions[i].lower is not None, partitions[i].lower),
        )
        self._order = np.array(order, dtype=np.int64)
        lows = [partitions[i].lower for i in order]
        highs = [partitions[i].upper for i in order]
        self._lower = self._bounds(lows, low=True)
        self._upper = self._bounds(highs, low=False)
        self._unbounded = np.array([h is None for h in highs], dtype=bool)

    def _convert(self, value: Any) -> Any:
        if self._kind == "date":
            return (dt.date.fromisoformat(value) - dt.date(1970, 1, 1)).days
        if self._kind == "datetime":
            delta = dt.datetime.fromisoformat(value) - dt.datetime(1970, 1, 1)
            return delta // dt.timedelta(microseconds=1)
        return value

    def _bounds(self, values: list[Any], *, low: bool) -> np.ndarray:
        if self._kind == "string":
            big = "\U0010ffff" * 8
            return np.array(
                [("" if low else big) if v is None else v for v in values], dtype=object
            )
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        return np.array(
            [(lo if low else hi) if v is None else self._convert(v) for v in values], dtype=np.int64
        )

    def _keys(self, arr: pa.Array) -> np.ndarray:
        if self._kind == "string":
            return arr.to_numpy(zero_copy_only=False).astype(object)
        if self._kind == "date":
            return arr.cast(pa.int32()).cast(pa.int64()).to_numpy()
        return arr.cast(pa.int64()).to_numpy()

    def route(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.column is None:
            return np.zeros(batch.num_rows, dtype=np.int64)
        arr = batch.column(self.column)
        if arr.null_count:
            raise RowsOutsidePartitions(
                f"{arr.null_count} rows have a NULL {self.column}, which fits no partition of "
                f"{self.table.full_name}; nothing was loaded"
            )
        keys = self._keys(arr)
        pos = np.searchsorted(self._lower, keys, side="right") - 1
        safe = np.clip(pos, 0, len(self._lower) - 1)
        ok = (pos >= 0) & ((keys < self._upper[safe]) | self._unbounded[safe])
        if not ok.all():
            bad = int((~ok).sum())
            example = arr[int(np.flatnonzero(~ok)[0])].as_py()
            ranges = ", ".join(f"{p.name} [{p.lower}, {p.upper})" for p in self.partitions)
            raise RowsOutsidePartitions(
                f"{bad} rows fit no partition of {self.table.full_name} (e.g. {self.column}="
                f"{example}); partitions are {ranges}. Add a partition or filter the rows; "
                "nothing was loaded"
            )
        return self._order[safe]


# -- the load ------------------------------------------------------------------------------


class _TabletSink:
    def __init__(self, writer: RowsetWriter) -> None:
        self.writer = writer
        self.pending: list[pa.RecordBatch] = []
        self.pending_bytes = 0

    def flush(self) -> None:
        if self.pending:
            self.writer.write(pa.Table.from_batches(self.pending))
            self.pending = []
            self.pending_bytes = 0


class Loader:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.engine = cluster.engine

    def load(
        self,
        full_name: str,
        source: LoadSource,
        *,
        label: str,
        overwrite: bool = False,
        fmt: str | None = None,
    ) -> LoadResult:
        if not label or len(label) > 128:
            raise InvalidRequest("a load needs a label of 1 to 128 characters")
        with self.engine.connect() as conn:
            table = model.get_table(conn, full_name, self.cluster.name)
            existing = txns.find_by_label(conn, table.db_id, label)
        if existing is not None:
            return self._relabelled(table, existing, source, label, overwrite, fmt)
        with self.engine.begin() as conn:
            txns.refuse_if_replicating(conn, table, "load")
            kind = "OVERWRITE" if overwrite else "LOAD"
            txn = txns.begin(
                conn,
                table,
                label=label,
                kind=kind,
                timeout_sec=self.cluster.settings.load_transaction_timeout_sec,
            )
        try:
            staged = self.stage(table, txn.id, source, fmt)
            digest = self._digest(table, overwrite, staged.checksum)
            versions = self.commit(table, txn.id, overwrite=overwrite, digest=digest)
        except BaseException as exc:
            txns.abort(self.engine, txn.id, f"load failed: {exc}")
            self.discard(txn.id)
            raise
        return LoadResult(label, txn.id, staged.checksum.rows, staged.bytes, staged.files, versions)

    # Stage: write every touched tablet's rowset; nothing is visible yet.
    def stage(self, table: TableInfo, txn_id: int, source: LoadSource, fmt: str | None) -> _Staged:
        with self.engine.connect() as conn:
            partitions = model.list_partitions(conn, table.id)
            tablets = model.list_tablets(conn, table.id)
            backends = model.list_backends(conn)
        router = PartitionRouter(table, partitions)
        by_key = {(t.partition_id, t.bucket): t for t in tablets}
        schema = table.arrow_schema
        sinks: dict[int, _TabletSink] = {}
        checksum = ContentChecksum()
        total_pending = 0
        try:
            for raw in read_batches(source, schema, fmt):
                batch = conform(raw, schema)
                if batch.num_rows == 0:
                    continue
                checksum.add(batch)
                pidx = router.route(batch)
                bucket = bucket_of(batch, table.distribution_columns, table.buckets)
                key = pidx * table.buckets + bucket
                order = np.argsort(key, kind="stable")
                sorted_keys = key[order]
                cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
                for chunk in np.split(order, cuts):
                    k = int(key[chunk[0]])
                    tablet = by_key[(partitions[k // table.buckets].id, k % table.buckets)]
                    sink = sinks.get(tablet.id)
                    if sink is None:
                        sink = self._open_sink(txn_id, tablet, schema, backends)
                        sinks[tablet.id] = sink
                    part = batch.take(pa.array(chunk))
                    sink.pending.append(part)
                    sink.pending_bytes += part.nbytes
                    total_pending += part.nbytes
                    if sink.pending_bytes >= FLUSH_TABLET_BYTES:
                        total_pending -= sink.pending_bytes
                        sink.flush()
                while total_pending > FLUSH_TOTAL_BYTES:
                    biggest = max(sinks.values(), key=lambda x: x.pending_bytes)
                    total_pending -= biggest.pending_bytes
                    biggest.flush()
            if checksum.rows == 0:
                raise InvalidRequest("nothing to load: the input has no rows")
            staged = _Staged(checksum)
            rows_update = []
            for sink in sinks.values():
                sink.flush()
                meta = sink.writer.finish()
                staged.bytes += meta.size
                staged.files += 1
                rows_update.append(
                    {
                        "rid": sink.writer.rowset_id,
                        "num_rows": sink.writer.num_rows,
                        "data_size": meta.size,
                        "files": [meta.to_json()],
                    }
                )
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(s.rowsets)
                    .where(s.rowsets.c.id == sa.bindparam("rid"))
                    .values(
                        num_rows=sa.bindparam("num_rows"),
                        data_size=sa.bindparam("data_size"),
                        files=sa.bindparam("files", type_=s.rowsets.c.files.type),
                    ),
                    rows_update,
                )
            return staged
        except BaseException:
            for sink in sinks.values():
                with contextlib.suppress(Exception):
                    sink.writer.abandon()
            raise

    def _open_sink(
        self, txn_id: int, tablet: model.TabletInfo, schema: pa.Schema, backends: dict[int, Backend]
    ) -> _TabletSink:
        rowset_id = new_rowset_id()
        # The row comes first, committed on its own, so GC always knows the files exist.
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(s.rowsets).values(id=rowset_id, tablet_id=tablet.id, txn_id=txn_id)
            )
        replicas = [backends[b] for b in tablet.backend_ids]
        return _TabletSink(RowsetWriter(tablet.id, rowset_id, schema, replicas))

    def _digest(self, table: TableInfo, overwrite: bool, checksum: ContentChecksum) -> str:
        mode = "overwrite" if overwrite else "append"
        return f"{table.full_name}|{mode}|{checksum.rows}|{checksum.hexdigest}"

    def commit(
        self, table: TableInfo, txn_id: int, *, overwrite: bool, digest: str
    ) -> dict[str, int]:
        with self.engine.begin() as conn:
            txns.lock_open(conn, txn_id)
            txns.refuse_if_replicating(conn, table, "load")
            conn.execute(
                sa.update(s.transactions)
                .where(s.transactions.c.id == txn_id)
                .values(content_digest=digest)
            )
            touched = set(
                conn.execute(
                    sa.select(s.tablets.c.partition_id)
                    .join(s.rowsets, s.rowsets.c.tablet_id == s.tablets.c.id)
                    .where(s.rowsets.c.txn_id == txn_id)
                    .distinct()
                ).scalars()
            )
            all_parts = conn.execute(
                sa.select(s.partitions)
                .where(s.partitions.c.table_id == table.id)
                .order_by(s.partitions.c.id)
                .with_for_update()
            ).all()
            versions: dict[str, int] = {}
            for p in all_parts:
                if p.id not in touched and not overwrite:
                    continue
                v = p.visible_version + 1
                epoch = p.version_epoch
                if overwrite or p.version_txn_kind == "REPLICATION":
                    epoch = new_epoch()
                tablet_ids = sa.select(s.tablets.c.id).where(s.tablets.c.partition_id == p.id)
                if overwrite:
                    conn.execute(
                        sa.update(s.rowsets)
                        .where(
                            s.rowsets.c.tablet_id.in_(tablet_ids), s.rowsets.c.state == "VISIBLE"
                        )
                        .values(state="STALE", stale_at=sa.func.now())
                    )
                conn.execute(
                    sa.update(s.rowsets)
                    .where(s.rowsets.c.txn_id == txn_id, s.rowsets.c.tablet_id.in_(tablet_ids))
                    .values(state="VISIBLE", start_version=v, end_version=v)
                )
                conn.execute(
                    sa.update(s.partitions)
                    .where(
                        s.partitions.c.id == p.id,
                        s.partitions.c.visible_version == p.visible_version,
                    )
                    .values(
                        visible_version=v,
                        version_epoch=epoch,
                        version_txn_kind="OVERWRITE" if overwrite else "LOAD",
                        visible_at=sa.func.now(),
                    )
                )
                versions[p.name] = v
            txns.mark_visible(conn, txn_id)
            return versions

    def discard(self, txn_id: int) -> None:
        """Best-effort removal of an aborted load's files; GC removes whatever is left."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(s.rowsets.c.id, s.rowsets.c.tablet_id).where(
                    s.rowsets.c.txn_id == txn_id, s.rowsets.c.state == "STALE"
                )
            ).all()
            backends = model.list_backends(conn)
            replica_rows = conn.execute(
                sa.select(s.replicas.c.tablet_id, s.replicas.c.backend_id).where(
                    s.replicas.c.tablet_id.in_([r.tablet_id for r in rows])
                )
            ).all()
        for r in rows:
            for rep in replica_rows:
                # An unreachable backend keeps the files; the orphan sweep of GC removes them.
                if rep.tablet_id == r.tablet_id:
                    with contextlib.suppress(StorageUnavailable):
                        storage_for(backends[rep.backend_id].storage_root).delete_tree(
                            rowset_dir(r.tablet_id, r.id)
                        )
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(s.rowsets)
                .where(s.rowsets.c.id.in_([r.id for r in rows]))
                .values(state="DELETED")
            )

    def _relabelled(
        self,
        table: TableInfo,
        existing: txns.Txn,
        source: LoadSource,
        label: str,
        overwrite: bool,
        fmt: str | None,
    ) -> LoadResult:
        if existing.state != "VISIBLE" or existing.content_digest is None:
            raise LabelConflict(
                f"label {label!r} belongs to a {existing.kind} transaction that is "
                f"{existing.state}; wait for it to finish or use another label"
            )
        checksum = ContentChecksum()
        schema = table.arrow_schema
        for raw in read_batches(source, schema, fmt):
            checksum.add(conform(raw, schema))
        if self._digest(table, overwrite, checksum) != existing.content_digest:
            raise LabelConflict(
                f"label {label!r} was already used to load other data into database "
                f"{table.db_name}; use a new label for new data"
            )
        return LoadResult(label, existing.id, checksum.rows, 0, 0, {}, already_loaded=True)


@dataclass
class _Staged:
    checksum: ContentChecksum
    bytes: int = 0
    files: int = 0
