"""Verification after each commit of a synced table, and repair of only what differs.

Two looks, neither reading rows:
- the catalogs: per partition, the source's and the target's visible version and row count
  (one query a side);
- the target's files: each target backend re-hashes (xxh3) the files of the table's visible
  rowsets it holds and compares them with the checksums the catalog recorded when they were
  installed. That runs on the backend's own host (no other process sees its files): the
  sync beat asks for it with a check request per backend, and reads the answers
  (``sync_checks`` rows) at a later beat.
A partition found different in either look counts as a mismatch (a metric and the table's
``last_check``), and a repair job copies those partitions alone, in full.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.storage.checksum import FileMeta
from app.storage.client import rowset_dir, storage_for
from app.storage.rowsets import RowsetState, verify_file


@dataclass(frozen=True)
class CheckRequest:
    """Re-hash ``src_table``'s files on ``backend`` of ``cluster`` (the target) after a job."""

    cluster: str
    policy_id: int
    src_table: str
    dst_table: str  # DB.TABLE on the target
    job_id: int
    backend: str


def check_files(settings: Settings, req: CheckRequest) -> dict[str, Any]:
    """On the backend's host: re-hash its files of the table; record what differs."""
    dst = Cluster(settings, req.cluster)
    with dst.engine.connect() as conn:
        table = model.get_table(conn, req.dst_table, dst.name)
        backend = next(b for b in model.list_backends(conn).values() if b.name == req.backend)
        parts = {p.id: p.name for p in model.list_partitions(conn, table.id)}
        tablets = [t for t in model.list_tablets(conn, table.id) if backend.id in t.backend_ids]
        rowsets = model.visible_rowsets(conn, [t.id for t in tablets])
    storage = storage_for(backend.storage_root)
    bad: dict[str, list[str]] = defaultdict(list)
    files = size = 0
    for t in tablets:
        for r in rowsets[t.id]:
            for f in r.files:
                meta = FileMeta(f["name"], int(f["size"]), f["checksum"])
                path = f"{rowset_dir(t.id, r.id)}/{meta.name}"
                files, size = files + 1, size + meta.size
                if not verify_file(storage, path, meta):
                    bad[parts[t.partition_id]].append(path)
    with dst.engine.begin() as conn:
        conn.execute(
            pg_insert(s.sync_checks)
            .values(
                policy_id=req.policy_id, src_table=req.src_table, job_id=req.job_id,
                backend=req.backend, files=files, bytes=size, bad=dict(bad),
            )
            .on_conflict_do_nothing()
        )  # fmt: skip
    return {"files": files, "bytes": size, "bad": dict(bad)}


def holders(dst: Cluster, dst_table: str) -> list[str]:
    """The target backends holding a replica of the table: each checks its own files."""
    with dst.engine.connect() as conn:
        table = model.get_table(conn, dst_table, dst.name)
        backends = model.list_backends(conn)
        ids = {b for t in model.list_tablets(conn, table.id) for b in t.backend_ids}
    return sorted(backends[b].name for b in ids)


def answers(dst: Cluster, policy_id: int, src_table: str, job_id: int) -> list[Any]:
    c = s.sync_checks.c
    with dst.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(s.sync_checks).where(
                    c.policy_id == policy_id, c.src_table == src_table, c.job_id == job_id
                )
            )
        )


def rows_by_partition(cluster: Cluster, full_name: str) -> dict[str, tuple[int, int]]:
    """(visible version, rows) per partition, in one query."""
    p, t, r = s.partitions.c, s.tablets.c, s.rowsets.c
    with cluster.engine.connect() as conn:
        table = model.get_table(conn, full_name, cluster.name)
        q = (
            sa.select(p.name, p.visible_version, sa.func.coalesce(sa.func.sum(r.num_rows), 0))
            .select_from(s.partitions)
            .join(s.tablets, t.partition_id == p.id, isouter=True)
            .join(
                s.rowsets,
                sa.and_(r.tablet_id == t.id, r.state == RowsetState.VISIBLE),
                isouter=True,
            )
            .where(p.table_id == table.id)
            .group_by(p.name, p.visible_version)
        )
        return {name: (int(v), int(n)) for name, v, n in conn.execute(q)}
