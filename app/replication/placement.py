"""Which source replica takes each tablet's snapshot: the one whose queue holds the least
snapshot work, counting what other jobs have already put there, not only the tablet's order.

Tablet order alone (a rotation over each tablet's replicas) spreads one job evenly, but a second
job placed the same way piles onto a backend that is already behind with the first; the queue
depth read here is every open snapshot task of this catalog's jobs, per queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa

from app.catalog import schema as s
from app.replication.plan import TabletPair
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
