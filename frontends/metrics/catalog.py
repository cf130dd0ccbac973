"""Reading one target catalog at scrape time: jobs, per-job task aggregates (cached once a job
has settled), and the partitions of every table that has had a job (for the lag)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.queues import queue_name
from app.replication.progress import StateStats
from app.replication.progress import stats as task_stats
from app.replication.state import JobKind
from app.replication.taskrows import TaskKind
from frontends.metrics.families import (
    ACTIVE_STATES,
    DURATION_BUCKETS,
    JOB_DURATION_BUCKETS,
    JOB_STATES,
    SETTLED_AFTER_SEC,
    TASK_KINDS,
)

Settled = dict[tuple[str, int], "JobAgg"]  # (cluster, job id) -> aggregates that no longer change

JOBS_SQL = sa.text(
    "SELECT id, kind, state, src_table, dst_table, "
    "extract(epoch FROM now() - created_at) AS age, "
    "extract(epoch FROM finished_at - created_at) AS took, "
    "extract(epoch FROM finished_at) AS finished, "
    "extract(epoch FROM now() - finished_at) AS since_finished FROM jobs"
)


@dataclass
class KindAgg:
    """Aggregates of one job's task rows of one kind."""

    by_state: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    retries: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_count: int = 0
    duration_sum: float = 0.0

    def add(self, other: KindAgg) -> None:
        for k, v in other.by_state.items():
            self.by_state[k] = self.by_state.get(k, 0) + v
        self.attempts += other.attempts
        self.retries += other.retries
        self.bytes_done += other.bytes_done
        self.bytes_total += other.bytes_total
        self.files_done += other.files_done
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.duration_count += other.duration_count
        self.duration_sum += other.duration_sum


@dataclass
class JobAgg:
    dst_table: str
    kinds: dict[str, KindAgg] = field(default_factory=dict)


LAG_TABLES_SQL = sa.text(
    """
    SELECT DISTINCT ON (dst_table) dst_table, src_cluster, src_table
    FROM jobs WHERE kind = 'REPLICATION' AND src_cluster NOT LIKE 'restore\\_%'
    ORDER BY dst_table, id DESC
    """
)

SYNC_SQL = sa.text(
    """
    SELECT p.name AS policy, t.dst_table, t.state, t.versions_behind, t.mismatches,
           coalesce(extract(epoch FROM now() - t.behind_since), 0) AS seconds
    FROM sync_tables t JOIN sync_policies p ON p.id = t.policy_id
    """
)

PARTITIONS_SQL = sa.text(
    """
    SELECT d.name || '.' || t.name AS full_name, p.name, p.visible_version,
           extract(epoch FROM now() - p.visible_at) AS age
    FROM partitions p
    JOIN tables t ON t.id = p.table_id
    JOIN databases d ON d.id = t.db_id
    WHERE d.name || '.' || t.name = ANY(:names)
    """
)


@dataclass
class ClusterScrape:
    name: str
    queues: set[str] = field(default_factory=set)
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    oldest_active_age: float = 0.0
    job_durations: dict[str, tuple[list[int], int, float]] = field(default_factory=dict)
    per_table: dict[str, KindAgg] = field(default_factory=dict)  # APPLY aggregates per dst table
    per_kind: dict[str, KindAgg] = field(default_factory=dict)  # all kept jobs
    active_kind: dict[str, KindAgg] = field(default_factory=dict)  # active jobs only
    active_jobs: list[tuple[int, str, KindAgg]] = field(default_factory=list)
    last_commit: dict[str, float] = field(default_factory=dict)
    lag_tables: list[tuple[str, str, str]] = field(default_factory=list)  # dst, src cluster, src
    dst_partitions: dict[str, dict[str, int]] = field(default_factory=dict)
    sync: list[Any] = field(default_factory=list)  # rows of SYNC_SQL
    # Backups (jobs of kind BACKUP: this cluster backed up): by state; upload bytes per table.
    backup_jobs: dict[str, int] = field(default_factory=dict)
    backup_bytes: dict[str, int] = field(default_factory=dict)


def _kind_agg(st: StateStats) -> KindAgg:
    return KindAgg(
        by_state={str(st.state): st.count},
        attempts=st.attempts,
        retries=st.retries,
        bytes_done=st.bytes_done,
        bytes_total=st.bytes_total,
        files_done=st.files_done,
        buckets=list(st.duration_buckets),
        duration_count=st.duration_count,
        duration_sum=st.duration_sum,
    )


def scrape_cluster(engine: Engine, name: str, settled: Settled) -> ClusterScrape:
    """Everything the exporter needs from one target catalog; ``settled`` is the cache of
    aggregates of finished jobs, updated here."""
    sc = ClusterScrape(name)
    with engine.connect() as conn:
        sc.queues = {
            queue_name(name, b) for (b,) in conn.execute(sa.text("SELECT name FROM backends"))
        }
        jobs = conn.execute(JOBS_SQL).all()
        sc.sync = list(conn.execute(SYNC_SQL))
        fresh = _job_aggs(conn, name, jobs, settled)
        sc.lag_tables = [
            (x.dst_table, x.src_cluster, x.src_table) for x in conn.execute(LAG_TABLES_SQL)
        ]
        if sc.lag_tables:
            for p in conn.execute(PARTITIONS_SQL, {"names": [t[0] for t in sc.lag_tables]}):
                sc.dst_partitions.setdefault(p.full_name, {})[p.name] = int(p.visible_version)
    _sum_up(sc, jobs, {j.id: settled.get((name, j.id)) or fresh[j.id] for j in jobs})
    return sc


def _job_aggs(
    conn: Connection, name: str, jobs: Sequence[Any], settled: Settled
) -> dict[int, JobAgg]:
    """Task aggregates of the jobs not cached yet; those of settled jobs go into the cache."""
    done = {
        j.id
        for j in jobs
        if j.state not in ACTIVE_STATES
        and (j.since_finished is None or j.since_finished > SETTLED_AFTER_SEC)
    }
    # Forget cached jobs that were purged from the catalog.
    live = {j.id for j in jobs}
    for key in [k for k in settled if k[0] == name and k[1] not in live]:
        del settled[key]
    todo = [j.id for j in jobs if (name, j.id) not in settled]
    tables = {j.id: j.dst_table for j in jobs}
    fresh: dict[int, JobAgg] = {}
    if todo:
        for st in task_stats(conn, todo, DURATION_BUCKETS):
            agg = fresh.setdefault(st.job_id, JobAgg(tables[st.job_id]))
            agg.kinds.setdefault(str(st.kind), KindAgg()).add(_kind_agg(st))
    for jid in todo:
        agg = fresh.get(jid) or JobAgg(tables[jid])
        if jid in done:
            settled[(name, jid)] = agg
        fresh[jid] = agg
    return fresh


def _sum_up(sc: ClusterScrape, jobs: Sequence[Any], aggs: dict[int, JobAgg]) -> None:
    sc.jobs_by_state = dict.fromkeys(JOB_STATES, 0)
    for kind in TASK_KINDS:
        sc.per_kind[kind] = KindAgg()
        sc.active_kind[kind] = KindAgg()
    sc.backup_jobs = dict.fromkeys(JOB_STATES, 0)
    for j in jobs:
        agg = aggs[j.id]
        apply = agg.kinds.get(TaskKind.APPLY, KindAgg())
        if j.kind == JobKind.BACKUP:  # its own families; a restore is a replication
            sc.backup_jobs[j.state] += 1
            sc.backup_bytes[j.src_table] = sc.backup_bytes.get(j.src_table, 0) + apply.bytes_done
            if j.state in ACTIVE_STATES:
                sc.active_jobs.append((j.id, f"backup {j.src_table}", apply))
            continue
        sc.jobs_by_state[j.state] = sc.jobs_by_state.get(j.state, 0) + 1
        sc.per_table.setdefault(j.dst_table, KindAgg()).add(apply)
        for kind, k in agg.kinds.items():
            sc.per_kind.setdefault(kind, KindAgg()).add(k)
            if j.state in ACTIVE_STATES:
                sc.active_kind.setdefault(kind, KindAgg()).add(k)
        if j.state in ACTIVE_STATES:
            sc.oldest_active_age = max(sc.oldest_active_age, float(j.age or 0))
            sc.active_jobs.append((j.id, j.dst_table, apply))
        elif j.took is not None:
            _add_duration(sc.job_durations, j.state, float(j.took))
        if j.state == "COMMITTED" and j.finished is not None:
            sc.last_commit[j.dst_table] = max(
                sc.last_commit.get(j.dst_table, 0.0), float(j.finished)
            )


def _add_duration(
    job_buckets: dict[str, tuple[list[int], int, float]], state: str, took: float
) -> None:
    counts, n, total = job_buckets.get(state, ([0] * len(JOB_DURATION_BUCKETS), 0, 0.0))
    counts = [c + (took <= b) for c, b in zip(counts, JOB_DURATION_BUCKETS, strict=True)]
    job_buckets[state] = (counts, n + 1, total + took)
