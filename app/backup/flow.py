"""A backup job's coordinator actions: what PLAN, START_APPLY and COMMIT do for a backup.

The states, the edges and their reasons are the replication's (app/replication/state.py); a
backup differs only in what these three actions do:

- PLAN pins the table's partition versions, begins a BACKUP transaction on the table (its
  timeout bounds the backup, as a replication's does) and creates a snapshot task per tablet on
  the least loaded source replica's queue. The snapshots are a replication's: they choose the
  visible rowsets up to the pinned version and hold them against compaction and GC.
- START_APPLY gives each taken snapshot one upload task (kind APPLY) on the queue of the
  replica whose files it read: only that host can read them (app/backup/upload.py).
- COMMIT checks that every object the backup needs is in the repository, then writes the
  manifest, the last thing a backup writes, and makes the transaction visible.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from app import txn as txns
from app.backup import manifest as mf
from app.backup.repo import Repository, object_key
from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import NotFound, ReplicatorError, UserError
from app.queues import queue_name
from app.replication import placement, taskrows
from app.replication.applies import snapshots_ready
from app.replication.plan import PartitionPlan, Plan, TabletPair
from app.replication.state import Action, Outcome, Result
from app.replication.taskrows import TaskKind, TaskState
from app.storage.checksum import FileMeta

_t = s.job_tasks


def plan(settings: Settings, conn: sa.Connection, job: Any) -> Result:
    """Pin the versions, begin the transaction, create the snapshot tasks; or say why not."""
    try:
        table, the_plan = _plan(conn, job)
    except UserError as exc:
        return Result(Action.PLAN, Outcome.REFUSED, f"planning failed: {exc}")
    txn = txns.begin(
        conn,
        table,
        label=f"BACKUP_{table.db_name}_{table.name}_{job.id}",
        kind="BACKUP",
        timeout_sec=job.options.get("timeout_sec") or settings.replication_transaction_timeout_sec,
    )
    conn.execute(sa.update(s.jobs).where(s.jobs.c.id == job.id).values(txn_id=txn.id))
    placement.record_plan(
        conn, job.id, the_plan, Cluster(settings, job.src_cluster), job.src_cluster
    )
    versions = ", ".join(f"{p.name}=v{p.src_version}" for p in the_plan.partitions)
    return Result(
        Action.PLAN,
        Outcome.OK,
        f"planned backup {job.dst_table} of {len(the_plan.partitions)} partitions ({versions}), "
        f"{len(the_plan.tablets)} tablets; transaction {txn.label}",
    )


def _plan(conn: sa.Connection, job: Any) -> tuple[model.TableInfo, Plan]:
    table = model.find_table(conn, job.src_table)
    if table is None:
        raise NotFound(f"table {job.src_table} no longer exists in cluster {job.src_cluster!r}")
    parts = model.list_partitions(conn, table.id)
    wanted = job.options.get("partitions") or [p.name for p in parts]
    by_name = {p.name: p for p in parts}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise NotFound(f"table {table.full_name} has no partition {', '.join(missing)}")
    the_plan = Plan(table, table)
    chosen = {by_name[n].id: by_name[n] for n in wanted}
    for p in chosen.values():
        the_plan.partitions.append(
            PartitionPlan(p.name, p.id, p.id, p.visible_version, p.version_epoch, 0, 0, "FULL")
        )
    for t in model.list_tablets(conn, table.id):
        if t.partition_id in chosen:
            name = chosen[t.partition_id].name
            the_plan.tablets.append(TabletPair(name, t.bucket, t.id, t.id, t.backend_ids, ()))
    return table, the_plan


def start_uploads(conn: sa.Connection, job_id: int, cluster: str) -> int:
    """An upload task for every taken snapshot that has none, on the queue of the replica the
    snapshot found holding every file (its first source)."""
    after, started = 0, 0
    backends = model.list_backends(conn)
    while snaps := snapshots_ready(conn, job_id, after):
        rows = []
        for snap in snaps:
            holder = int(snap.manifest["src_backend_ids"][0])
            rows.append(
                {
                    "job_id": job_id,
                    "partition_name": snap.partition_name,
                    "bucket": snap.bucket,
                    "src_tablet_id": snap.src_tablet_id,
                    "dst_tablet_id": snap.dst_tablet_id,
                    "dst_backend_id": holder,
                    "src_backend_ids": [holder],
                    "queue": queue_name(cluster, backends[holder].name),
                    "manifest": snap.manifest,
                    "incremental": False,
                    "bytes_total": snap.bytes_total,
                }
            )
        taskrows.insert(conn, TaskKind.APPLY, rows)
        started += len(rows)
        after = snaps[-1].id
    return started


def commit(conn: sa.Connection, job: Any) -> Result:
    """Write the manifest once every object it names is in the repository. A repository that
    cannot be reached raises (StorageUnavailable): the tick is rolled back and retried until
    the transaction's timeout, as a commit must not abort on a passing outage."""
    try:
        txns.lock_open(conn, job.txn_id)
        manifest = build_manifest(conn, job)
    except ReplicatorError as exc:
        return Result(Action.COMMIT, Outcome.REFUSED, str(exc))
    repo = Repository(job.options["repo"])
    needed = manifest.objects()
    gone = [object_key(m) for m in repo.missing(list(needed.values()))]
    if gone:
        return Result(
            Action.COMMIT,
            Outcome.REFUSED,
            f"{len(gone)} objects the backup needs are not in the repository (first: {gone[0]}); "
            "a prune may have removed them meanwhile: run the backup again, it uploads only "
            "what is missing",
        )
    repo.write_manifest(manifest.name, manifest.to_text())
    txns.mark_visible(conn, job.txn_id)
    return Result(
        Action.COMMIT,
        Outcome.OK,
        f"backup {manifest.name} written: {len(manifest.partitions)} partitions, "
        f"{manifest.bytes} bytes in {len(needed)} objects, of which {manifest.uploaded_objects} "
        f"({manifest.uploaded_bytes} bytes) uploaded by this backup",
    )


def build_manifest(conn: sa.Connection, job: Any) -> mf.Manifest:
    table = model.find_table(conn, job.src_table)
    if table is None:
        raise NotFound(f"table {job.src_table} was dropped during its backup")
    parts = {p.id: p for p in model.list_partitions(conn, table.id)}
    plans = conn.execute(sa.select(s.job_partitions).where(s.job_partitions.c.job_id == job.id))
    tablets: dict[str, list[mf.Tablet]] = {}
    for snap in taskrows.of_job(conn, job.id, TaskKind.SNAPSHOT):
        tablets.setdefault(snap.partition_name, []).append(_tablet(snap))
    uploaded = conn.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(_t.c.manifest["uploaded_bytes"].as_integer()), 0),
            sa.func.coalesce(sa.func.sum(_t.c.manifest["uploaded_objects"].as_integer()), 0),
        ).where(_t.c.job_id == job.id, _t.c.kind == TaskKind.APPLY, _t.c.state == TaskState.DONE)
    ).one()
    partitions = []
    for p in plans:
        part = parts[p.src_partition_id]
        partitions.append(
            mf.Partition(
                name=p.partition_name,
                lower=part.lower,
                upper=part.upper,
                version=p.src_version,
                epoch=p.src_epoch,
                history=_history(conn, p.src_partition_id, p.src_version),
                tablets=tuple(sorted(tablets.get(p.partition_name, []), key=lambda t: t.bucket)),
            )
        )
    return mf.Manifest(
        name=job.dst_table,
        cluster=job.src_cluster,
        table=table.full_name,
        taken_at=job.created_at,
        job_id=job.id,
        columns=table.columns,
        partition_column=table.partition_column,
        distribution_columns=table.distribution_columns,
        buckets=table.buckets,
        replication_num=table.replication_num,
        partitions=tuple(sorted(partitions, key=lambda p: p.name)),
        uploaded_bytes=int(uploaded[0]),
        uploaded_objects=int(uploaded[1]),
    )


def _tablet(snap: Any) -> mf.Tablet:
    return mf.Tablet(
        snap.bucket,
        tuple(
            mf.Rowset(
                id=r["id"],
                start=int(r["start"]),
                end=int(r["end"]),
                num_rows=int(r["num_rows"]),
                data_size=int(r["data_size"]),
                files=tuple(FileMeta.from_json(f) for f in r["files"]),
            )
            for r in snap.manifest["rowsets"]
        ),
    )


def _history(
    conn: sa.Connection, partition_id: int, upto: int
) -> tuple[tuple[int, dt.datetime], ...]:
    """(version, committed at) of every version of the partition up to ``upto`` that the
    catalog still records: each rowset's transaction published its end version (the rows stay
    after compaction and GC), and version 1 is the partition's creation."""
    r, t, tb = s.rowsets, s.transactions, s.tablets
    rows = conn.execute(
        sa.select(r.c.end_version, sa.func.min(t.c.finished_at))
        .join(t, t.c.id == r.c.txn_id)
        .join(tb, tb.c.id == r.c.tablet_id)
        .where(
            tb.c.partition_id == partition_id,
            r.c.end_version.is_not(None),
            r.c.end_version <= upto,
            t.c.finished_at.is_not(None),
        )
        .group_by(r.c.end_version)
    ).all()
    created = conn.execute(
        sa.select(s.partitions.c.created_at).where(s.partitions.c.id == partition_id)
    ).scalar_one()
    seen = {1: created} | {int(v): at for v, at in rows}
    return tuple(sorted(seen.items()))
