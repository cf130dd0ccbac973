"""Which source replica takes each tablet's snapshot: the one whose queue holds the least
snapshot work, counting what other jobs have already put there, not only the tablet's order.

Tablet order alone (a rotation over each tablet's replicas) spreads one job evenly, but a second
job placed the same way piles onto a backend that is already behind with the first; the queue
depth read here is every open snapshot task of this catalog's jobs, per queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa

from app.backup.view import is_view
from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.queues import queue_name
from app.replication import taskrows
from app.replication.plan import Plan, TabletPair
from app.replication.taskrows import OPEN_STATES, TaskKind


def queue_depths(conn: sa.Connection, queues: Sequence[str]) -> dict[str, int]:
    """Open (not yet done) snapshot tasks per queue, over every job of this catalog."""
    t = s.job_tasks.c
    rows = conn.execute(
        sa.select(t.queue, sa.func.count())
        .where(t.kind == TaskKind.SNAPSHOT, t.state.in_(OPEN_STATES), t.queue.in_(queues))
        .group_by(t.queue)
    ).all()
    return {q: 0 for q in queues} | {q: int(n) for q, n in rows}


def place(
    tablets: Sequence[TabletPair], queue_of: Callable[[int], str], depths: dict[str, int]
) -> list[list[int]]:
    """Per tablet, its source backends in the order to try: the least loaded first (ties go to
    the tablet's turn in a rotation, so an idle cluster alternates replicas), then the others
    in rotation order as fallbacks. Each choice adds one to its queue's load."""
    load = dict(depths)
    out = []
    for i, t in enumerate(tablets):
        order = rotate(sorted(t.src_backend_ids), i)
        if not order:
            out.append(order)
            continue
        best = min(order, key=lambda b: load.get(queue_of(b), 0))  # first of the least loaded
        load[queue_of(best)] = load.get(queue_of(best), 0) + 1
        out.append([best, *(b for b in order if b != best)])
    return out


def rotate(items: list[int], n: int) -> list[int]:
    if not items:
        return items
    k = n % len(items)
    return items[k:] + items[:k]


def record_plan(conn: sa.Connection, job_id: int, plan: Plan, src: Cluster, dst_name: str) -> None:
    """The plan's partitions (job_partitions) and a snapshot task per tablet, on the queue of
    the least loaded source replica. A restore's source (a repository seen as a cluster) has
    no workers of its own: its snapshots, which only read the catalog and ask the repository
    what it holds, run on the target's backends' queues instead, spread over them."""
    conn.execute(
        sa.insert(s.job_partitions),
        [
            {
                "job_id": job_id,
                "partition_name": p.name,
                "src_partition_id": p.src_partition_id,
                "dst_partition_id": p.dst_partition_id,
                "src_version": p.src_version,
                "src_epoch": p.src_epoch,
                "dst_version": p.dst_version,
                "dst_epoch": p.dst_epoch,
                "mode": p.mode,
            }
            for p in plan.partitions
        ],
    )
    with src.engine.connect() as sconn:
        src_backends = model.list_backends(sconn)

    def queue_of(backend_id: int) -> str:
        return queue_name(src.name, src_backends[backend_id].name)

    depths = queue_depths(conn, [queue_of(b) for b in src_backends])
    here = []
    if is_view(src.name):
        here = [queue_name(dst_name, b.name) for b in model.list_backends(conn).values()
                if b.state == "ACTIVE"]  # fmt: skip
    rows: list[dict[str, object]] = []
    for t, candidates in zip(plan.tablets, place(plan.tablets, queue_of, depths), strict=True):
        rows.append(
            {
                "job_id": job_id,
                "partition_name": t.partition,
                "bucket": t.bucket,
                "src_tablet_id": t.src_tablet_id,
                "dst_tablet_id": t.dst_tablet_id,
                "src_backend_ids": candidates,
                "queue": queue_of(candidates[0]) if not here else here[len(rows) % len(here)],
            }
        )
    taskrows.insert(conn, TaskKind.SNAPSHOT, rows)
