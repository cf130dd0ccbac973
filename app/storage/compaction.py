"""Compaction: merge a tablet's consecutive visible rowsets [a..b] into one rowset [a, b].

The merged rowset is written to every replica, then one Postgres commit makes it VISIBLE and the
inputs STALE; GC deletes the inputs' files later, unless a hold covers them. Versions and the
table's content are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import sqlalchemy as sa

from app import txn as txns
from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.cluster import Cluster
from app.errors import InvalidRequest, TransactionConflict
from app.schema import file_schema
from app.storage.checksum import FileMeta
from app.storage.rowsets import RowsetState, RowsetWriter, new_rowset_id, read_rowset


@dataclass
class CompactionReport:
    tablets: int = 0
    rowsets_merged: int = 0
    rowsets_written: int = 0


@dataclass
class _Plan:
    """What to compact, read in one catalog snapshot."""

    table: model.TableInfo
    tablets: list[model.TabletInfo]
    rowsets: dict[int, list[model.RowsetInfo]]
    backends: dict[int, model.Backend]


def compact(
    cluster: Cluster,
    full_name: str,
    *,
    partitions: list[str] | None = None,
    min_rowsets: int = 2,
    up_to_version: int | None = None,
) -> CompactionReport:
    """Merge, in each tablet of the chosen partitions, the visible rowsets up to ``up_to_version``
    (default: all) into one."""
    if min_rowsets < 2:
        raise InvalidRequest("compaction needs at least 2 rowsets to merge")
    report = CompactionReport()
    with cluster.engine.connect() as conn:
        plan = _plan(conn, cluster, full_name, partitions, up_to_version)
    for tablet in plan.tablets:
        inputs = plan.rowsets[tablet.id]
        if len(inputs) < min_rowsets:
            continue
        replicas = [plan.backends[b] for b in tablet.backend_ids]
        _compact_tablet(cluster, plan.table, tablet, inputs, replicas)
        report.tablets += 1
        report.rowsets_merged += len(inputs)
        report.rowsets_written += 1
    return report


def _plan(
    conn: sa.Connection,
    cluster: Cluster,
    full_name: str,
    partitions: list[str] | None,
    up_to_version: int | None,
) -> _Plan:
    """The table, its tablets in the chosen partitions, and their visible rowsets up to the
    limit (a partition's visible version, or ``up_to_version`` when lower)."""
    table = model.get_table(conn, full_name, cluster.name)
    parts = {p.id: p for p in model.list_partitions(conn, table.id)}
    if partitions is not None:
        unknown = set(partitions) - {p.name for p in parts.values()}
        if unknown:
            raise InvalidRequest(f"partition(s) {', '.join(sorted(unknown))} not in {full_name}")
    tablets = [
        t
        for t in model.list_tablets(conn, table.id)
        if partitions is None or parts[t.partition_id].name in partitions
    ]
    limits = {
        t.id: min(parts[t.partition_id].visible_version, up_to_version or 2**62) for t in tablets
    }
    rowsets = model.visible_rowsets(conn, [t.id for t in tablets], limits)
    backends = model.list_backends(conn)
    return _Plan(table, tablets, rowsets, backends)


def _compact_tablet(
    cluster: Cluster,
    table: model.TableInfo,
    tablet: model.TabletInfo,
    inputs: list[model.RowsetInfo],
    replicas: list[model.Backend],
) -> None:
    """Merge one tablet's ``inputs`` under a COMPACTION transaction; abort it on any failure."""
    engine = cluster.engine
    txn, rowset_id = _begin(cluster, table, tablet)
    try:
        writer, metas = _write_merged(table, tablet, rowset_id, inputs, replicas)
        with engine.begin() as conn:
            _publish(conn, txn.id, tablet, rowset_id, inputs, writer.num_rows, metas)
    except BaseException as exc:
        txns.abort(engine, txn.id, f"compaction failed: {exc}")
        raise


def _begin(
    cluster: Cluster, table: model.TableInfo, tablet: model.TabletInfo
) -> tuple[txns.Txn, str]:
    """Open the transaction and record the output rowset, PENDING, before any file exists."""
    with cluster.engine.begin() as conn:
        txn = txns.begin(
            conn,
            table,
            label=f"COMPACTION_{tablet.id}_{new_rowset_id()[:12]}",
            kind="COMPACTION",
            timeout_sec=cluster.settings.load_transaction_timeout_sec,
        )
        rowset_id = new_rowset_id()
        conn.execute(sa.insert(s.rowsets).values(id=rowset_id, tablet_id=tablet.id, txn_id=txn.id))
    return txn, rowset_id


def _write_merged(
    table: model.TableInfo,
    tablet: model.TabletInfo,
    rowset_id: str,
    inputs: list[model.RowsetInfo],
    replicas: list[model.Backend],
) -> tuple[RowsetWriter, list[FileMeta]]:
    """Write the inputs' rows, in version order, as one rowset on every replica."""
    schema = table.arrow_schema
    writer = RowsetWriter(tablet.id, rowset_id, file_schema(table.columns), replicas)
    for rs in inputs:  # each read as the table is now, whatever schema wrote it
        batches = list(read_rowset(rs, replicas, table.columns))
        if batches:
            writer.write(pa.Table.from_batches(batches, schema=schema))
    return writer, writer.finish()


def _publish(
    conn: sa.Connection,
    txn_id: int,
    tablet: model.TabletInfo,
    rowset_id: str,
    inputs: list[model.RowsetInfo],
    num_rows: int,
    metas: list[FileMeta],
) -> None:
    """In one catalog commit: the inputs become STALE, the merged rowset VISIBLE over their
    versions. TransactionConflict if an input is no longer visible."""
    txns.lock_open(conn, txn_id)
    ids = [r.id for r in inputs]
    gone = conn.execute(
        sa.update(s.rowsets)
        .where(any_of(s.rowsets.c.id, ids), s.rowsets.c.state == RowsetState.VISIBLE)
        .values(state=RowsetState.STALE, stale_at=sa.func.now())
    ).rowcount
    if gone != len(ids):
        raise TransactionConflict(f"tablet {tablet.id} changed during compaction")
    conn.execute(
        sa.update(s.rowsets)
        .where(s.rowsets.c.id == rowset_id)
        .values(
            state=RowsetState.VISIBLE,
            start_version=inputs[0].start_version,
            end_version=inputs[-1].end_version,
            num_rows=num_rows,
            data_size=sum(m.size for m in metas),
            files=[m.to_json() for m in metas],
        )
    )
    txns.mark_visible(conn, txn_id)
