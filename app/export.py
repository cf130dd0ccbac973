"""Export: a table's partitions, at their visible version or an older one still kept, as one
Parquet file, without the reader touching rowset files.

The plan is read from the catalog in one transaction that also places holds on the chosen
rowsets (their rows locked FOR SHARE until then, as a replication snapshot does), so compaction
and GC cannot delete files while they are read; the holds are released at the end. Each tablet
is read from one replica only - the first whose files all match their recorded size and
checksum - so replicas are never mixed or counted twice.

An older version V of a partition is readable while its visible rowsets still describe it: V
lies between the oldest visible rowset's start and the visible version, and no rowset merged by
compaction covers V without ending at it. Versions before an overwrite or a full replication,
or merged away, are gone: asking for one is a UserError naming the versions that are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.cluster import Cluster
from app.errors import InvalidRequest, NotFound, SourceDataGone, StorageUnavailable, VersionConflict
from app.outfile import AtomicParquet, check_target
from app.storage import holds
from app.storage.checksum import FileMeta
from app.storage.client import StorageClient, rowset_dir, storage_for
from app.storage.rowsets import RowsetState, verify_file

METADATA_KEY = b"olap_replicator.export"


@dataclass(frozen=True)
class PartitionExport:
    name: str
    version: int
    rows: int


@dataclass(frozen=True)
class ExportResult:
    path: str
    rows: int
    bytes: int
    partitions: list[PartitionExport]


@dataclass
class _Part:
    info: model.PartitionInfo
    version: int
    tablets: list[model.TabletInfo] = field(default_factory=list)


@dataclass
class _Plan:
    table: model.TableInfo
    parts: list[_Part]
    rowsets: dict[int, list[model.RowsetInfo]]  # per tablet: those of the chosen version
    backends: dict[int, model.Backend]

    def rowset_ids(self) -> list[str]:
        return [r.id for rs in self.rowsets.values() for r in rs]


def export(
    cluster: Cluster,
    full_name: str,
    path: str | os.PathLike[str],
    *,
    partitions: list[str] | None = None,
    version: int | None = None,
    force: bool = False,
) -> ExportResult:
    """Write ``full_name``'s rows (``partitions``, default all) at each partition's visible
    version, or at ``version``, to the Parquet file ``path``. Bad input raises a UserError
    before anything is written; a failure later leaves no file (and an older one as it was)."""
    out = check_target(path, force)
    if version is not None and version < 1:
        raise InvalidRequest(f"version must be at least 1, got {version}")
    owner = f"export:{cluster.name}:{uuid.uuid4().hex}"
    lease = cluster.settings.hold_lease_sec
    with cluster.engine.begin() as conn:
        plan = _plan(conn, cluster.name, full_name, partitions, version)
        holds.place(conn, plan.rowset_ids(), owner, lease)
    try:
        done = _write(cluster, plan, out, force, owner)
    finally:
        # Best effort: a hold that cannot be released now (Postgres away) ends with its lease.
        with contextlib.suppress(Exception), cluster.engine.begin() as conn:
            holds.release(conn, owner)
    return ExportResult(str(out), sum(p.rows for p in done), out.stat().st_size, done)


def _write(
    cluster: Cluster, plan: _Plan, out: Path, force: bool, owner: str
) -> list[PartitionExport]:
    """Copy every chosen tablet's rows into one new file at ``out``, partition by partition."""
    schema = plan.table.arrow_schema.with_metadata({METADATA_KEY: _describe(cluster, plan)})
    done: list[PartitionExport] = []
    renewed = time.monotonic()
    lease = cluster.settings.hold_lease_sec
    with AtomicParquet(out, schema, force) as w:
        for part in plan.parts:
            before = w.rows
            for tablet in part.tablets:
                _copy_tablet(w, schema, plan.rowsets[tablet.id], _replica(tablet, plan))
                if time.monotonic() - renewed > lease / 3:  # a long export keeps its holds
                    with cluster.engine.begin() as conn:
                        holds.renew(conn, owner, lease)
                    renewed = time.monotonic()
            done.append(PartitionExport(part.info.name, part.version, w.rows - before))
    return done


def _describe(cluster: Cluster, plan: _Plan) -> bytes:
    """What the file holds, kept in its Parquet metadata."""
    return json.dumps(
        {
            "cluster": cluster.name,
            "table": plan.table.full_name,
            "schema_hash": plan.table.schema_hash,
            "versions": {p.info.name: p.version for p in plan.parts},
        },
        sort_keys=True,
    ).encode()


def _copy_tablet(
    w: AtomicParquet, schema: pa.Schema, rowsets: list[model.RowsetInfo], storage: StorageClient
) -> None:
    for r in rowsets:
        for f in r.files:
            with storage.open_read(f"{rowset_dir(r.tablet_id, r.id)}/{f['name']}") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=65536):
                    w.write(pa.RecordBatch.from_arrays(batch.columns, schema=schema))


def _replica(tablet: model.TabletInfo, plan: _Plan) -> StorageClient:
    """The first replica of ``tablet`` whose files of the chosen rowsets are all intact."""
    unreachable: list[str] = []
    damaged: list[str] = []
    for backend_id in tablet.backend_ids:
        backend = plan.backends[backend_id]
        storage = storage_for(backend.storage_root)
        try:
            intact = all(
                verify_file(
                    storage, f"{rowset_dir(r.tablet_id, r.id)}/{f['name']}", FileMeta.from_json(f)
                )
                for r in plan.rowsets[tablet.id]
                for f in r.files
            )
        except StorageUnavailable:
            unreachable.append(backend.name)
            continue
        if intact:
            return storage
        damaged.append(backend.name)
    if unreachable:
        raise StorageUnavailable(
            f"tablet {tablet.id}: replicas {', '.join(unreachable)} cannot be reached and "
            f"{', '.join(damaged) or 'no other'} lacks intact files; try again later"
        )
    raise SourceDataGone(
        f"tablet {tablet.id}: no replica holds intact files (tried {', '.join(damaged)})"
    )


# -- the plan ------------------------------------------------------------------------------


def _plan(
    conn: sa.Connection,
    cluster: str,
    full_name: str,
    names: list[str] | None,
    version: int | None,
) -> _Plan:
    """The chosen partitions, their tablets and the rowsets of the version to read, with those
    rowsets' rows locked FOR SHARE until the caller's transaction ends."""
    table = model.get_table(conn, full_name, cluster)
    parts = [_Part(p, p.visible_version) for p in _selected(conn, table, names)]
    by_id = {p.info.id: p for p in parts}
    for t in model.list_tablets(conn, table.id):
        if t.partition_id in by_id:
            by_id[t.partition_id].tablets.append(t)
    visible = _visible_rowsets(conn, [t.id for p in parts for t in p.tablets])
    rowsets: dict[int, list[model.RowsetInfo]] = {}
    for part in parts:
        mine = [r for t in part.tablets for r in visible.get(t.id, [])]
        if version is not None:
            part.version = _readable(table, part.info, mine, version)
        for t in part.tablets:
            rowsets[t.id] = [
                r for r in visible.get(t.id, []) if (r.end_version or 0) <= part.version
            ]
    return _Plan(table, parts, rowsets, model.list_backends(conn))


def _selected(
    conn: sa.Connection, table: model.TableInfo, names: list[str] | None
) -> list[model.PartitionInfo]:
    partitions = model.list_partitions(conn, table.id)
    if names is None:
        return partitions
    known = {p.name: p for p in partitions}
    missing = [n for n in dict.fromkeys(names) if n not in known]
    if missing:
        raise NotFound(
            f"partition(s) {', '.join(missing)} do not exist in {table.full_name} "
            f"(it has {', '.join(known)})"
        )
    return [known[n] for n in dict.fromkeys(names)]


def _visible_rowsets(
    conn: sa.Connection, tablet_ids: list[int]
) -> dict[int, list[model.RowsetInfo]]:
    out: dict[int, list[model.RowsetInfo]] = {}
    if not tablet_ids:
        return out
    for r in conn.execute(
        sa.select(s.rowsets)
        .where(any_of(s.rowsets.c.tablet_id, tablet_ids), s.rowsets.c.state == RowsetState.VISIBLE)
        .order_by(s.rowsets.c.tablet_id, s.rowsets.c.start_version)
        .with_for_update(read=True)
    ):
        out.setdefault(r.tablet_id, []).append(model.rowset_from_row(r._mapping))
    return out


def _readable(
    table: model.TableInfo, part: model.PartitionInfo, rowsets: list[model.RowsetInfo], v: int
) -> int:
    """``v`` if partition ``part`` can be read at it; otherwise a VersionConflict naming the
    versions it can be read at."""
    where = f"partition {part.name} of {table.full_name}"
    if v > part.visible_version:
        raise VersionConflict(
            f"version {v} is above the visible version {part.visible_version} of {where}; "
            "export a version it has, or choose other partitions"
        )
    kept = kept_versions(
        part.visible_version, [(r.start_version or 0, r.end_version or 0) for r in rowsets]
    )
    if not any(lo <= v <= hi for lo, hi in kept):
        raise VersionConflict(
            f"version {v} of {where} is no longer kept (merged by compaction or replaced); "
            f"it can be exported at version {format_ranges(kept)}"
        )
    return v


def kept_versions(visible: int, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The versions, as inclusive ranges, that visible rowsets covering ``spans`` (their
    [start, end] versions) can still be read at: from the oldest start to ``visible``, less
    the versions a merged rowset covers without ending at them."""
    if not spans:
        return [(visible, visible)]
    out: list[tuple[int, int]] = []
    cur = min(start for start, _ in spans)
    for start, end in sorted(spans):
        if end > start:  # start .. end-1 were merged into end
            if start > cur:
                out.append((cur, start - 1))
            cur = max(cur, end)
    if cur <= visible:
        out.append((cur, visible))
    return out


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
