"""Progress: the one query over task rows that every reader uses.

The client's ``Job.progress``, the CLI's ``jobs watch``, the metrics exporter and the demo all
read how far jobs are through ``stats`` (per job, kind and state) or ``progress`` (per job and
kind), so "done", "running" and "bytes" mean the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from app.replication.taskrows import TaskKind, TaskState


@dataclass(frozen=True)
class StateStats:
    """The task rows of one job, one kind and one state, summed."""

    job_id: int
    kind: TaskKind
    state: TaskState
    count: int
    attempts: int
    retries: int  # attempts beyond the first
    bytes_done: int
    bytes_total: int
    incremental: int  # rows whose snapshot is incremental
    full: int  # rows whose snapshot is full
    files_done: int  # files installed by DONE applies
    duration_count: int  # DONE rows with a dispatch time
    duration_sum: float  # seconds from dispatch to done
    duration_buckets: tuple[int, ...]  # cumulative counts, one per bound asked for


def stats(
    conn: sa.Connection, job_ids: Sequence[int], duration_bounds: Sequence[float] = ()
) -> list[StateStats]:
    """The one query over task rows that every reader uses (the client's progress, the CLI's
    watch, the metrics): per (job, kind, state), counts, attempts, bytes and durations."""
    if not job_ids:
        return []
    done = "t.state = :done AND t.dispatched_at IS NOT NULL"
    dur = "extract(epoch FROM t.updated_at - t.dispatched_at)"
    buckets = "".join(
        f", count(*) FILTER (WHERE {done} AND {dur} <= {float(b)!r})" for b in duration_bounds
    )
    rows = conn.execute(
        sa.text(
            f"""
            SELECT t.job_id, t.kind, t.state, count(*),
                   coalesce(sum(t.attempts), 0), coalesce(sum(greatest(t.attempts - 1, 0)), 0),
                   coalesce(sum(t.bytes_done), 0), coalesce(sum(t.bytes_total), 0),
                   count(*) FILTER (WHERE t.incremental), count(*) FILTER (WHERE NOT t.incremental),
                   coalesce(sum(f.files), 0),
                   count(*) FILTER (WHERE {done}), coalesce(sum({dur}) FILTER (WHERE {done}), 0)
                   {buckets}
            FROM job_tasks t
            LEFT JOIN LATERAL (
                SELECT sum(jsonb_array_length(coalesce(r -> 'files', '[]'::jsonb))) AS files
                FROM jsonb_array_elements(
                    CASE WHEN t.kind = :apply AND t.state = :done
                              AND jsonb_typeof(t.manifest -> 'rowsets') = 'array'
                         THEN t.manifest -> 'rowsets' ELSE '[]'::jsonb END) AS r
            ) f ON true
            WHERE t.job_id = ANY(:ids)
            GROUP BY t.job_id, t.kind, t.state
            """
        ),
        {"ids": list(job_ids), "done": TaskState.DONE, "apply": TaskKind.APPLY},
    ).all()
    return [
        StateStats(
            job_id=int(r[0]),
            kind=TaskKind(r[1]),
            state=TaskState(r[2]),
            count=int(r[3]),
            attempts=int(r[4]),
            retries=int(r[5]),
            bytes_done=int(r[6]),
            bytes_total=int(r[7]),
            incremental=int(r[8]),
            full=int(r[9]),
            files_done=int(r[10]),
            duration_count=int(r[11]),
            duration_sum=float(r[12]),
            duration_buckets=tuple(int(x) for x in r[13:]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class KindProgress:
    """One kind of task of one job, summed over its states."""

    total: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    incremental: int = 0
    full: int = 0
    attempts: int = 0
    retries: int = 0


def progress(
    conn: sa.Connection, job_ids: Sequence[int]
) -> dict[tuple[int, TaskKind], KindProgress]:
    """Per (job, kind): how far along it is."""
    out: dict[tuple[int, TaskKind], KindProgress] = {}
    for st in stats(conn, job_ids):
        p = out.get((st.job_id, st.kind), KindProgress())
        out[(st.job_id, st.kind)] = KindProgress(
            total=p.total + st.count,
            done=p.done + (st.count if st.state is TaskState.DONE else 0),
            failed=p.failed + (st.count if st.state is TaskState.FAILED else 0),
            running=p.running + (st.count if st.state is TaskState.RUNNING else 0),
            bytes_total=p.bytes_total + st.bytes_total,
            bytes_done=p.bytes_done + st.bytes_done,
            incremental=p.incremental + st.incremental,
            full=p.full + st.full,
            attempts=p.attempts + st.attempts,
            retries=p.retries + st.retries,
        )
    return out
