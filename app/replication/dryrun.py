"""What a replication would do now, changing nothing: per partition skip, incremental, full or
create, the bytes and files each would move, and a time estimate from this link's past jobs.

It plans exactly as a submit does (``make_plan``: the same checks, the same UserErrors) and
then asks, per tablet, the snapshot's own question (``choose_rowsets``): so an incremental
partition whose source has compacted the versions the target lacks shows as the full copy it
would become. It reads both catalogs and writes nothing, not even a job row.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import ReplicatorError
from app.replication.plan import PartitionPlan, Plan, TablePair, make_plan, target_replication_num
from app.replication.snapshot import choose_rowsets
from app.replication.state import JobState
from app.replication.taskrows import TaskKind

# The estimate's basis: the most recent committed jobs of this link that moved at least this.
RECENT_JOBS = 10
MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class PartitionPreview:
    name: str
    action: str  # SKIP | INCREMENTAL | FULL | CREATE (a full copy into a partition to create)
    src_version: int
    dst_version: int | None  # None: the partition does not exist yet
    bytes: int  # one copy; every target replica receives it
    files: int
    replicas: int
    note: str = ""

    @property
    def bytes_moved(self) -> int:
        return self.bytes * self.replicas


@dataclass(frozen=True)
class DryRun:
    src: str
    dst: str
    create_table: bool
    partitions: list[PartitionPreview] = field(default_factory=list)
    link_bytes_per_sec: float | None = None
    basis: str = ""

    @property
    def bytes_moved(self) -> int:
        return sum(p.bytes_moved for p in self.partitions)

    @property
    def files(self) -> int:
        return sum(p.files * p.replicas for p in self.partitions)

    @property
    def estimate_sec(self) -> float | None:
        if self.link_bytes_per_sec is None:
            return None
        return self.bytes_moved / self.link_bytes_per_sec


def dry_run(
    settings: Settings,
    src: str,
    dst: str,
    *,
    partitions: list[str] | None = None,
    create_target: bool = False,
    replication_num: int | None = None,
    overwrite: bool = False,
) -> DryRun:
    """Preview ``replicate(src, dst, ...)``: the same arguments, the same refusals."""
    pair = TablePair.parse(src, dst)
    src_c, dst_c = Cluster(settings, pair.src_cluster), Cluster(settings, pair.dst_cluster)
    src_c.ensure_ready()
    dst_c.ensure_ready()
    plan = make_plan(
        src_c, dst_c, pair, partitions=partitions, create_target=create_target, overwrite=overwrite
    )
    copies = target_replication_num(dst_c, plan.src, replication_num) if plan.dst is None else 0
    previews = _previews(src_c, dst_c, plan, copies)
    rate, basis = link_rate(dst_c, pair.src_cluster)
    return DryRun(
        src=f"{pair.src_cluster}:{pair.src_table}",
        dst=f"{pair.dst_cluster}:{pair.dst_table}",
        create_table=plan.dst is None,
        partitions=previews,
        link_bytes_per_sec=rate,
        basis=basis,
    )


def _previews(src_c: Cluster, dst_c: Cluster, plan: Plan, copies: int) -> list[PartitionPreview]:
    with src_c.engine.connect() as conn:
        src_parts = {p.name: p for p in model.list_partitions(conn, plan.src.id)}
        planned = {p.src_partition_id for p in plan.partitions}
        by_part: dict[int, list[int]] = defaultdict(list)
        for t in model.list_tablets(conn, plan.src.id):
            if t.partition_id in planned:
                by_part[t.partition_id].append(t.id)
        rowsets = model.visible_rowsets(conn, [t for ids in by_part.values() for t in ids])
    dst_parts: dict[str, int] = {}
    if plan.dst is not None:
        with dst_c.engine.connect() as conn:
            dst_parts = {
                p.name: p.visible_version for p in model.list_partitions(conn, plan.dst.id)
            }
    replicas = {t.src_tablet_id: len(t.dst_backend_ids) for t in plan.tablets}
    out = []
    for pp in plan.partitions:
        tablets = by_part[pp.src_partition_id]
        n = copies or max((replicas.get(t, 0) for t in tablets), default=0)
        out.append(_preview(pp, [rowsets[t] for t in tablets], plan.dst is None, n))
    for name in plan.skipped:
        out.append(
            PartitionPreview(
                name, "SKIP", src_parts[name].visible_version, dst_parts.get(name), 0, 0, 0,
                "up to date" if name in dst_parts else "nothing loaded on either side",
            )
        )  # fmt: skip
    order = {name: i for i, name in enumerate(src_parts)}
    return sorted(out, key=lambda p: order[p.name])


def _preview(
    pp: PartitionPlan, tablets: list[list[model.RowsetInfo]], create: bool, replicas: int
) -> PartitionPreview:
    """One planned partition: the rowsets each tablet's snapshot would choose."""
    size = files = full_tablets = 0
    note = ""
    for rowsets in tablets:
        try:
            chosen, incremental = choose_rowsets(
                rowsets, pp.dst_version, pp.src_version, pp.mode == "INCREMENTAL"
            )
        except ReplicatorError as exc:  # what the snapshot would refuse, said now
            note = str(exc)
            continue
        size += sum(r.data_size for r in chosen)
        files += sum(len(r.files) for r in chosen)
        full_tablets += pp.mode == "INCREMENTAL" and not incremental
    if full_tablets:
        note = (
            f"{full_tablets} of {len(tablets)} tablets copied in full: the source no longer "
            "holds the versions the target lacks as separate rowsets"
        )
    action = "CREATE" if create else pp.mode
    if action == "INCREMENTAL" and full_tablets == len(tablets):
        action = "FULL"
    dst_version = None if create else pp.dst_version
    return PartitionPreview(
        pp.name, action, pp.src_version, dst_version, size, files, replicas, note
    )


def link_rate(dst_c: Cluster, src_cluster: str) -> tuple[float | None, str]:
    """Bytes per second of the recent committed jobs from ``src_cluster`` into this cluster,
    submit to COMMITTED (fixed costs included, as a user waits for them), and what it rests on."""
    j, t = s.jobs.c, s.job_tasks.c
    moved = (
        sa.select(sa.func.coalesce(sa.func.sum(t.bytes_done), 0))
        .where(t.job_id == j.id, t.kind == str(TaskKind.APPLY))
        .scalar_subquery()
    )
    recent = (
        sa.select(moved.label("moved"), (j.finished_at - j.created_at).label("took"))
        .where(j.src_cluster == src_cluster, j.state == str(JobState.COMMITTED))
        .where(j.finished_at.is_not(None), moved >= MIN_BYTES)
        .order_by(j.finished_at.desc())
        .limit(RECENT_JOBS)
        .subquery()
    )
    with dst_c.engine.connect() as conn:
        n, total, secs = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.sum(recent.c.moved),
                sa.func.sum(sa.func.extract("epoch", recent.c.took)),
            )
        ).one()
    if not n or not secs:
        return None, (
            f"no estimate: no job from {src_cluster} into {dst_c.name} has moved "
            f"{MIN_BYTES >> 20} MiB or more yet"
        )
    rate = int(total) / float(secs)
    return rate, (
        f"{rate / 2**20:.1f} MB/s, from the last {n} committed job{'s' if n != 1 else ''} "
        f"{src_cluster} -> "
        f"{dst_c.name} ({int(total) / 2**20:.1f} MB in {float(secs):.1f} s, fixed costs included)"
    )
