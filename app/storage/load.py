"""Loads: stream rows into a table as one transaction.

Rows are routed to partitions and hashed to buckets; every touched tablet gets one rowset (one
Parquet file, or several when its file had to be closed to keep open files bounded) written to
each of its replicas, with size and checksum recorded; one Postgres commit then makes
version v visible on every touched partition. Before that commit nothing is visible, and a crash
leaves only PENDING rows and files that garbage collection removes once the transaction expires.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.catalog.model import Backend, TableInfo
from app.catalog.names import check_label
from app.cluster import Cluster, new_epoch
from app.errors import InvalidRequest, LabelConflict, StorageUnavailable
from app.rowhash import ContentChecksum, bucket_of
from app.schema import conform, file_schema
from app.storage import sinks as sinks_module
from app.storage.client import rowset_dir, storage_for
from app.storage.inputs import LoadSource as LoadSource
from app.storage.inputs import check_source
from app.storage.inputs import read_batches as read_batches
from app.storage.routing import PartitionRouter as PartitionRouter
from app.storage.rowsets import RowsetState, RowsetWriter, new_rowset_id
from app.storage.sinks import OpenFiles, TabletSink, shed
from app.sync import fence


@dataclass
class LoadResult:
    label: str
    txn_id: int
    rows: int
    bytes: int
    files: int
    versions: dict[str, int] = field(default_factory=dict)
    already_loaded: bool = False


# -- the load ------------------------------------------------------------------------------


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
        check_label(label)
        check_source(source, fmt)  # a missing file or unknown format begins no transaction
        with self.engine.connect() as conn:
            table = model.get_table(conn, full_name, self.cluster.name)
            existing = txns.find_by_label(conn, table.db_id, label)
        if existing is not None:
            return self._relabelled(table, existing, source, label, overwrite, fmt)
        with self.engine.begin() as conn:
            txns.refuse_if_replicating(conn, table, "load")
            fence.refuse_if_fenced(conn, table, "load")
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
        sinks: dict[int, TabletSink] = {}
        files = OpenFiles(sinks_module.MAX_OPEN_FILES)
        checksum = ContentChecksum()
        total_pending = 0
        try:
            for raw in read_batches(source, schema, fmt):
                batch = conform(raw, schema)
                if batch.num_rows == 0:
                    continue
                checksum.add(batch)
                parts = list(_split_by_tablet(batch, router, by_key))
                new = [tablet for tablet, _ in parts if tablet.id not in sinks]
                if new:
                    sinks |= self._new_sinks(
                        txn_id, new, file_schema(table.columns), backends, files
                    )
                for tablet, part in parts:
                    total_pending += sinks[tablet.id].add(part)
                total_pending = shed(sinks, total_pending)
            if checksum.rows == 0:
                raise InvalidRequest("nothing to load: the input has no rows")
            return self._finish(sinks, files, _Staged(checksum))
        except BaseException:
            for sink in sinks.values():
                with contextlib.suppress(Exception):
                    sink.writer.abandon()
            raise

    def _finish(self, sinks: dict[int, TabletSink], files: OpenFiles, staged: _Staged) -> _Staged:
        """Close every tablet's rowset (checksummed, copied to every replica) and record its
        size, rows and files on its PENDING row."""
        rows_update = []
        for sink in sinks.values():
            sink.flush()
            metas = files.finish(sink.writer)
            size = sum(m.size for m in metas)
            staged.bytes += size
            staged.files += len(metas)
            rows_update.append(
                {
                    "rid": sink.writer.rowset_id,
                    "num_rows": sink.writer.num_rows,
                    "data_size": size,
                    "files": [m.to_json() for m in metas],
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

    def _new_sinks(
        self,
        txn_id: int,
        tablets: list[model.TabletInfo],
        schema: pa.Schema,
        backends: dict[int, Backend],
        files: OpenFiles,
    ) -> dict[int, TabletSink]:
        """Sinks for tablets this load had not touched yet. Their rows come first, committed
        on their own (one statement for the lot), so GC always knows the files exist."""
        ids = {tablet.id: new_rowset_id() for tablet in tablets}
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(s.rowsets),
                [{"id": ids[t.id], "tablet_id": t.id, "txn_id": txn_id} for t in tablets],
            )
        return {
            t.id: TabletSink(
                RowsetWriter(t.id, ids[t.id], schema, [backends[b] for b in t.backend_ids]),
                files,
            )
            for t in tablets
        }

    def _digest(self, table: TableInfo, overwrite: bool, checksum: ContentChecksum) -> str:
        mode = "overwrite" if overwrite else "append"
        return f"{table.full_name}|{mode}|{checksum.rows}|{checksum.hexdigest}"

    def commit(
        self, table: TableInfo, txn_id: int, *, overwrite: bool, digest: str
    ) -> dict[str, int]:
        with self.engine.begin() as conn:
            txns.lock_open(conn, txn_id)
            txns.refuse_if_replicating(conn, table, "load")
            fence.refuse_if_fenced(conn, table, "load")
            conn.execute(
                sa.update(s.transactions)
                .where(s.transactions.c.id == txn_id)
                .values(content_digest=digest)
            )
            touched = _touched_partitions(conn, txn_id)
            versions: dict[str, int] = {}
            for p in _lock_partitions(conn, table.id):
                if p.id not in touched and not overwrite:
                    continue
                versions[p.name] = _publish_partition(conn, p, txn_id, overwrite=overwrite)
            txns.mark_visible(conn, txn_id)
            return versions

    def discard(self, txn_id: int) -> None:
        """Best-effort removal of an aborted load's files; GC removes whatever is left."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(s.rowsets.c.id, s.rowsets.c.tablet_id).where(
                    s.rowsets.c.txn_id == txn_id, s.rowsets.c.state == RowsetState.STALE
                )
            ).all()
            backends = model.list_backends(conn)
            replica_rows = conn.execute(
                sa.select(s.replicas.c.tablet_id, s.replicas.c.backend_id).where(
                    any_of(s.replicas.c.tablet_id, [r.tablet_id for r in rows])
                )
            ).all()
        holders: dict[int, list[int]] = {}  # tablet -> its backends (not a scan per rowset)
        for rep in replica_rows:
            holders.setdefault(rep.tablet_id, []).append(rep.backend_id)
        for r in rows:
            for backend_id in holders.get(r.tablet_id, []):
                # An unreachable backend keeps the files; the orphan sweep of GC removes them.
                with contextlib.suppress(StorageUnavailable):
                    storage_for(backends[backend_id].storage_root).delete_tree(
                        rowset_dir(r.tablet_id, r.id)
                    )
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(s.rowsets)
                .where(any_of(s.rowsets.c.id, [r.id for r in rows]))
                .values(state=RowsetState.DELETED)
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
        if existing.state != txns.TxnState.VISIBLE or existing.content_digest is None:
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


def _split_by_tablet(
    batch: pa.RecordBatch, router: PartitionRouter, by_key: dict[tuple[int, int], model.TabletInfo]
) -> Iterator[tuple[model.TabletInfo, pa.RecordBatch]]:
    """The rows of ``batch`` grouped by the tablet they belong to (partition, then bucket)."""
    table, partitions = router.table, router.partitions
    pidx = router.route(batch)
    bucket = bucket_of(batch, table.distribution_columns, table.buckets)
    key = pidx * table.buckets + bucket
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    for chunk in np.split(order, cuts):
        k = int(key[chunk[0]])
        tablet = by_key[(partitions[k // table.buckets].id, k % table.buckets)]
        yield tablet, batch.take(pa.array(chunk))


def _touched_partitions(conn: sa.Connection, txn_id: int) -> set[int]:
    """Partitions with a rowset of this transaction."""
    return set(
        conn.execute(
            sa.select(s.tablets.c.partition_id)
            .join(s.rowsets, s.rowsets.c.tablet_id == s.tablets.c.id)
            .where(s.rowsets.c.txn_id == txn_id)
            .distinct()
        ).scalars()
    )


def _lock_partitions(conn: sa.Connection, table_id: int) -> list[Any]:
    """Every partition row of the table, locked for update, in id order."""
    return list(
        conn.execute(
            sa.select(s.partitions)
            .where(s.partitions.c.table_id == table_id)
            .order_by(s.partitions.c.id)
            .with_for_update()
        ).all()
    )


def _publish_partition(conn: sa.Connection, p: Any, txn_id: int, *, overwrite: bool) -> int:
    """Make the transaction's rowsets of partition ``p`` visible at its next version (an
    overwrite first makes the partition's visible rowsets STALE); returns that version."""
    v = p.visible_version + 1
    epoch = p.version_epoch
    if overwrite or p.version_txn_kind == "REPLICATION":
        epoch = new_epoch()
    tablet_ids = sa.select(s.tablets.c.id).where(s.tablets.c.partition_id == p.id)
    if overwrite:
        conn.execute(
            sa.update(s.rowsets)
            .where(s.rowsets.c.tablet_id.in_(tablet_ids), s.rowsets.c.state == RowsetState.VISIBLE)
            .values(state=RowsetState.STALE, stale_at=sa.func.now())
        )
    conn.execute(
        sa.update(s.rowsets)
        .where(s.rowsets.c.txn_id == txn_id, s.rowsets.c.tablet_id.in_(tablet_ids))
        .values(state=RowsetState.VISIBLE, start_version=v, end_version=v)
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
    return v
