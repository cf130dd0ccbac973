"""Prometheus metrics, read at scrape time from the catalogs (the truth) and the broker.

    replicator metrics serve --port 9808            # every cluster the DSN template finds
    replicator metrics serve --cluster dr           # only these target clusters

Nothing is counted in this process: every scrape reads Postgres and Redis, so any number of
exporters can run, restart, or be scaled to zero without losing or double-counting anything.

What is read, per scrape:

* each target catalog: jobs by state, per-job task aggregates (bytes, files, attempts, durations;
  those of jobs finished more than a minute ago are cached, since their rows no longer change),
  partitions of every table that has had a job, and, for the lag, the partitions of its source
  table in the source catalog;
* Redis: ``LLEN`` of every ``be.*`` queue, ``coordinator``, and their kombu priority sub-lists
  (``<queue>\\x06\\x16<n>``), and the size of the ``unacked`` hash;
* workers: Celery's ``inspect active_queues`` broadcast (1 s timeout), cached for
  ``consumers_ttl`` seconds because a broadcast always waits for its timeout.

"Counters" here are sums over the job rows the catalog still keeps: when a finished job is
purged (``history_job_keep_max_second``) its bytes leave the sum, which Prometheus sees as a
counter reset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from app.catalog.engine import discover_clusters
from app.config import Settings
from app.replication.state import ACTIVE_STATES as _ACTIVE
from app.replication.state import JobState

log = logging.getLogger(__name__)

JOB_STATES = tuple(str(s) for s in JobState)
ACTIVE_STATES = tuple(str(s) for s in _ACTIVE)
TASK_KINDS = ("SNAPSHOT", "APPLY")
TASK_STATES = ("PENDING", "QUEUED", "RUNNING", "DONE", "FAILED")
# The coordinator's queues (nudges, and the beat's periodic work).
COORDINATOR_QUEUES = ("coordinator", "coordinator.beat")
QUEUE_PATTERN = "be.*"
# kombu's Redis transport keeps priorities 3, 6, 9 in sub-lists named <queue><sep><priority>.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# Finished jobs whose rows are this old are taken as settled and their aggregates cached.
SETTLED_AFTER_SEC = 60.0

# name (as exposed, without _total/_bucket suffixes) -> (type, help, label names)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "replicator_up": ("gauge", "1 when the last scrape read every catalog and the broker.", ()),
    "replicator_scrape_duration_seconds": ("gauge", "Time this scrape took.", ()),
    "replicator_catalog_up": (
        "gauge",
        "1 if the cluster's catalog could be read in this scrape, else 0.",
        ("cluster",),
    ),
    "replicator_broker_up": ("gauge", "1 if the Redis broker answered in this scrape.", ()),
    "replicator_jobs": (
        "gauge",
        "Replication jobs kept in the target cluster's catalog, by state.",
        ("cluster", "state"),
    ),
    "replicator_job_oldest_active_age_seconds": (
        "gauge",
        "Age of the oldest job not yet COMMITTED or ABORTED (0 if none).",
        ("cluster",),
    ),
    "replicator_active_job_bytes": (
        "gauge",
        "Bytes of a running job's apply tasks: done and total (total known once "
        "snapshots are done).",
        ("cluster", "job_ref", "table", "kind"),
    ),
    "replicator_active_job_replicas": (
        "gauge",
        "Target replicas of a running job: applied and total.",
        ("cluster", "job_ref", "table", "kind"),
    ),
    "replicator_replicated_bytes": (
        "counter",
        "Bytes installed on target replicas (sum of bytes_done of APPLY tasks).",
        ("cluster", "table"),
    ),
    "replicator_replicated_files": (
        "counter",
        "Files installed on target replicas (from manifests of DONE APPLY tasks).",
        ("cluster", "table"),
    ),
    "replicator_tasks": (
        "gauge",
        "Task rows of active jobs, by kind and state.",
        ("cluster", "kind", "state"),
    ),
    "replicator_task_attempts": (
        "counter",
        "Task attempts started (sum of job_tasks.attempts).",
        ("cluster", "kind"),
    ),
    "replicator_task_retries": (
        "counter",
        "Task attempts beyond the first (sum of attempts - 1).",
        ("cluster", "kind"),
    ),
    "replicator_task_failures": (
        "counter",
        "Tasks that ended FAILED (out of attempts or unrecoverable).",
        ("cluster", "kind"),
    ),
    "replicator_task_duration_seconds": (
        "histogram",
        "DONE tasks: from their last dispatch to done (includes queue wait).",
        ("cluster", "kind"),
    ),
    "replicator_job_duration_seconds": (
        "histogram",
        "Finished jobs: from submission to COMMITTED or ABORTED.",
        ("cluster", "state"),
    ),
    "replicator_table_version_lag": (
        "gauge",
        "Source visible_version minus target visible_version, per partition.",
        ("cluster", "table", "src_cluster", "src_table", "partition"),
    ),
    "replicator_table_lag_seconds": (
        "gauge",
        "Seconds since the source partition's visible version appeared, where the target "
        "is behind it; 0 where it is not.",
        ("cluster", "table", "src_cluster", "src_table", "partition"),
    ),
    "replicator_table_last_commit_timestamp_seconds": (
        "gauge",
        "Unix time the last COMMITTED job of the target table finished.",
        ("cluster", "table"),
    ),
    "replicator_queue_length": (
        "gauge",
        "Messages waiting in a broker queue (LLEN, priority sub-lists included).",
        ("queue",),
    ),
    "replicator_broker_unacked_messages": (
        "gauge",
        "Messages delivered to workers and not yet acknowledged (unacked hash).",
        (),
    ),
    "replicator_queue_consumers": (
        "gauge",
        "Worker nodes consuming the queue (Celery inspect active_queues, cached).",
        ("queue",),
    ),
    "replicator_workers_online": (
        "gauge",
        "Worker nodes that answered the last inspect broadcast.",
        (),
    ),
}


def family_names() -> set[str]:
    """Every sample name this exporter can produce (with _total/_bucket/_sum/_count)."""
    names = set()
    for name, (kind, _h, _l) in FAMILIES.items():
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def _new(name: str) -> Metric:
    kind, help_text, labels = FAMILIES[name]
    if kind == "gauge":
        return GaugeMetricFamily(name, help_text, labels=list(labels))
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=list(labels))
    return HistogramMetricFamily(name, help_text, labels=list(labels))


# -- reading one target catalog ----------------------------------------------------------------


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


def _task_agg_sql() -> sa.TextClause:
    dur = "extract(epoch FROM t.updated_at - t.dispatched_at)"
    done = "t.state = 'DONE' AND t.dispatched_at IS NOT NULL"
    buckets = ",\n".join(
        f"count(*) FILTER (WHERE {done} AND {dur} <= {b}) AS b{i}"
        for i, b in enumerate(DURATION_BUCKETS)
    )
    return sa.text(
        f"""
        SELECT t.job_id, t.kind, t.state, count(*) AS n,
               coalesce(sum(t.attempts), 0) AS attempts,
               coalesce(sum(greatest(t.attempts - 1, 0)), 0) AS retries,
               coalesce(sum(t.bytes_done), 0) AS bytes_done,
               coalesce(sum(t.bytes_total), 0) AS bytes_total,
               coalesce(sum(f.files), 0) AS files,
               count(*) FILTER (WHERE {done}) AS dur_n,
               coalesce(sum({dur}) FILTER (WHERE {done}), 0) AS dur_sum,
               {buckets}
        FROM job_tasks t
        LEFT JOIN LATERAL (
            SELECT sum(jsonb_array_length(coalesce(r -> 'files', '[]'::jsonb))) AS files
            FROM jsonb_array_elements(
                CASE WHEN t.kind = 'APPLY' AND t.state = 'DONE'
                          AND jsonb_typeof(t.manifest -> 'rowsets') = 'array'
                     THEN t.manifest -> 'rowsets' ELSE '[]'::jsonb END) AS r
        ) f ON true
        WHERE t.job_id = ANY(:ids)
        GROUP BY t.job_id, t.kind, t.state
        """
    )


TASK_AGG_SQL = _task_agg_sql()

LAG_TABLES_SQL = sa.text(
    """
    SELECT DISTINCT ON (dst_table) dst_table, src_cluster, src_table
    FROM jobs ORDER BY dst_table, id DESC
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


class ReplicatorCollector(Collector):
    """Reads the catalogs and the broker at every ``collect()``; thread safe (serialised)."""

    def __init__(
        self,
        settings: Settings,
        clusters: Sequence[str] | None = None,
        *,
        consumers_ttl: float = 15.0,
        inspect_timeout: float = 1.0,
    ) -> None:
        self.settings = settings
        self.clusters = list(clusters) if clusters else None
        self.consumers_ttl = consumers_ttl
        self.inspect_timeout = inspect_timeout
        self._lock = threading.Lock()
        self._settled: dict[tuple[str, int], JobAgg] = {}
        self._consumers: tuple[float, dict[str, int] | None, int] = (0.0, None, 0)
        self._celery: Any = None
        self._redis: Any = None
        self._engines: dict[str, Engine] = {}

    def _engine(self, cluster: str) -> Engine:
        # No pool: a scrape every 15-30 s must not hold a connection to every catalog between
        # scrapes (an exporter over many clusters would eat into max_connections for nothing).
        dsn = self.settings.dsn(cluster)
        engine = self._engines.get(dsn)
        if engine is None:
            engine = sa.create_engine(dsn, poolclass=NullPool)
            self._engines[dsn] = engine
        return engine

    # prometheus_client calls describe() at registration; answering it avoids a scrape then.
    def describe(self) -> Iterable[Metric]:
        return [_new(name) for name in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(self._collect())

    # -- the scrape ---------------------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        fam: dict[str, Any] = {name: _new(name) for name in FAMILIES}
        ok = True
        try:
            names = self.clusters or discover_clusters(
                self.settings.dsn_template, list(self.settings.clusters)
            )
        except Exception as exc:
            log.warning("cannot list clusters: %s", exc)
            names, ok = [], False
        scrapes: list[ClusterScrape] = []
        for name in names:
            try:
                scrapes.append(self._scrape_cluster(name))
                fam["replicator_catalog_up"].add_metric([name], 1)
            except Exception as exc:
                log.warning("cannot read catalog of cluster %s: %s", name, exc)
                fam["replicator_catalog_up"].add_metric([name], 0)
                ok = False
        down = {name for name in names if name not in {s.name for s in scrapes}}
        for sc in scrapes:
            self._emit_cluster(fam, sc)
        ok &= self._emit_lag(fam, scrapes, down)
        queues = set(COORDINATOR_QUEUES) | {q for sc in scrapes for q in sc.queues}
        ok &= self._emit_broker(fam, queues)
        fam["replicator_up"].add_metric([], 1 if ok else 0)
        fam["replicator_scrape_duration_seconds"].add_metric([], time.monotonic() - started)
        yield from fam.values()

    def _scrape_cluster(self, name: str) -> ClusterScrape:
        sc = ClusterScrape(name)
        engine = self._engine(name)
        with engine.connect() as conn:
            sc.queues = {
                f"be.{name}.{b}" for (b,) in conn.execute(sa.text("SELECT name FROM backends"))
            }
            jobs = conn.execute(
                sa.text(
                    "SELECT id, state, dst_table, "
                    "extract(epoch FROM now() - created_at) AS age, "
                    "extract(epoch FROM finished_at - created_at) AS took, "
                    "extract(epoch FROM finished_at) AS finished, "
                    "extract(epoch FROM now() - finished_at) AS since_finished FROM jobs"
                )
            ).all()
            settled = {
                j.id
                for j in jobs
                if j.state not in ACTIVE_STATES
                and (j.since_finished is None or j.since_finished > SETTLED_AFTER_SEC)
            }
            # Forget cached jobs that were purged from the catalog.
            live = {j.id for j in jobs}
            for key in [k for k in self._settled if k[0] == name and k[1] not in live]:
                del self._settled[key]
            todo = [j.id for j in jobs if (name, j.id) not in self._settled]
            tables = {j.id: j.dst_table for j in jobs}
            fresh: dict[int, JobAgg] = {}
            if todo:
                for r in conn.execute(TASK_AGG_SQL, {"ids": todo}).mappings():
                    agg = fresh.setdefault(r["job_id"], JobAgg(tables[r["job_id"]]))
                    k = agg.kinds.setdefault(r["kind"], KindAgg())
                    k.add(_kind_agg(r))
            for jid in todo:
                agg = fresh.get(jid) or JobAgg(tables[jid])
                if jid in settled:
                    self._settled[(name, jid)] = agg
                fresh[jid] = agg
            sc.lag_tables = [
                (x.dst_table, x.src_cluster, x.src_table) for x in conn.execute(LAG_TABLES_SQL)
            ]
            if sc.lag_tables:
                for p in conn.execute(PARTITIONS_SQL, {"names": [t[0] for t in sc.lag_tables]}):
                    sc.dst_partitions.setdefault(p.full_name, {})[p.name] = int(p.visible_version)
        # Sum it up.
        sc.jobs_by_state = dict.fromkeys(JOB_STATES, 0)
        for kind in TASK_KINDS:
            sc.per_kind[kind] = KindAgg()
            sc.active_kind[kind] = KindAgg()
        job_buckets: dict[str, tuple[list[int], int, float]] = {}
        for j in jobs:
            sc.jobs_by_state[j.state] = sc.jobs_by_state.get(j.state, 0) + 1
            agg = self._settled.get((name, j.id)) or fresh[j.id]
            apply = agg.kinds.get("APPLY", KindAgg())
            sc.per_table.setdefault(j.dst_table, KindAgg()).add(apply)
            for kind, k in agg.kinds.items():
                sc.per_kind.setdefault(kind, KindAgg()).add(k)
                if j.state in ACTIVE_STATES:
                    sc.active_kind.setdefault(kind, KindAgg()).add(k)
            if j.state in ACTIVE_STATES:
                sc.oldest_active_age = max(sc.oldest_active_age, float(j.age or 0))
                sc.active_jobs.append((j.id, j.dst_table, apply))
            elif j.took is not None:
                counts, n, total = job_buckets.get(
                    j.state, ([0] * len(JOB_DURATION_BUCKETS), 0, 0.0)
                )
                took = float(j.took)
                counts = [
                    c + (took <= b) for c, b in zip(counts, JOB_DURATION_BUCKETS, strict=True)
                ]
                job_buckets[j.state] = (counts, n + 1, total + took)
            if j.state == "COMMITTED" and j.finished is not None:
                sc.last_commit[j.dst_table] = max(
                    sc.last_commit.get(j.dst_table, 0.0), float(j.finished)
                )
        sc.job_durations = job_buckets
        return sc

    def _emit_cluster(self, fam: dict[str, Any], sc: ClusterScrape) -> None:
        c = sc.name
        for state, n in sc.jobs_by_state.items():
            fam["replicator_jobs"].add_metric([c, state], n)
        fam["replicator_job_oldest_active_age_seconds"].add_metric([c], sc.oldest_active_age)
        for jid, table, apply in sc.active_jobs:
            job = f"{c}:{jid}"
            fam["replicator_active_job_bytes"].add_metric([c, job, table, "done"], apply.bytes_done)
            fam["replicator_active_job_bytes"].add_metric(
                [c, job, table, "total"], apply.bytes_total
            )
            total = sum(apply.by_state.values())
            fam["replicator_active_job_replicas"].add_metric(
                [c, job, table, "done"], apply.by_state.get("DONE", 0)
            )
            fam["replicator_active_job_replicas"].add_metric([c, job, table, "total"], total)
        for table, k in sorted(sc.per_table.items()):
            fam["replicator_replicated_bytes"].add_metric([c, table], k.bytes_done)
            fam["replicator_replicated_files"].add_metric([c, table], k.files_done)
        for table, at in sorted(sc.last_commit.items()):
            fam["replicator_table_last_commit_timestamp_seconds"].add_metric([c, table], at)
        for kind in sorted(sc.per_kind):
            k = sc.per_kind[kind]
            fam["replicator_task_attempts"].add_metric([c, kind], k.attempts)
            fam["replicator_task_retries"].add_metric([c, kind], k.retries)
            fam["replicator_task_failures"].add_metric([c, kind], k.by_state.get("FAILED", 0))
            fam["replicator_task_duration_seconds"].add_metric(
                [c, kind], _buckets(DURATION_BUCKETS, k.buckets, k.duration_count), k.duration_sum
            )
            active = sc.active_kind.get(kind, KindAgg())
            for state in TASK_STATES:
                fam["replicator_tasks"].add_metric([c, kind, state], active.by_state.get(state, 0))
        for state in ("COMMITTED", "ABORTED"):
            jcounts, jn, jsum = sc.job_durations.get(
                state, ([0] * len(JOB_DURATION_BUCKETS), 0, 0.0)
            )
            fam["replicator_job_duration_seconds"].add_metric(
                [c, state], _buckets(JOB_DURATION_BUCKETS, jcounts, jn), jsum
            )

    def _emit_lag(self, fam: dict[str, Any], scrapes: list[ClusterScrape], down: set[str]) -> bool:
        ok = True
        wanted: dict[str, set[str]] = defaultdict(set)
        for sc in scrapes:
            for _dst, src_cluster, src_table in sc.lag_tables:
                wanted[src_cluster].add(src_table)
        sources: dict[str, dict[str, dict[str, tuple[int, float]]]] = {}
        for src_cluster, tables in wanted.items():
            if src_cluster in down:
                continue
            try:
                with self._engine(src_cluster).connect() as conn:
                    parts: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
                    for r in conn.execute(PARTITIONS_SQL, {"names": sorted(tables)}):
                        parts[r.full_name][r.name] = (int(r.visible_version), float(r.age or 0.0))
                sources[src_cluster] = parts
            except Exception as exc:
                log.warning("cannot read source catalog %s: %s", src_cluster, exc)
                if src_cluster not in {s.name for s in scrapes}:
                    fam["replicator_catalog_up"].add_metric([src_cluster], 0)
                ok = False
        for sc in scrapes:
            for dst_table, src_cluster, src_table in sc.lag_tables:
                src_parts = sources.get(src_cluster, {}).get(src_table)
                dst_parts = sc.dst_partitions.get(dst_table)
                if not src_parts or dst_parts is None:
                    continue
                for pname, (src_version, age) in sorted(src_parts.items()):
                    if pname not in dst_parts:
                        continue  # not replicated to this target (partial replication)
                    lag = src_version - dst_parts[pname]
                    labels = [sc.name, dst_table, src_cluster, src_table, pname]
                    fam["replicator_table_version_lag"].add_metric(labels, lag)
                    fam["replicator_table_lag_seconds"].add_metric(
                        labels, max(age, 0.0) if lag > 0 else 0.0
                    )
        return ok

    # -- broker -------------------------------------------------------------------------------

    def _redis_client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.settings.broker_url, socket_timeout=2.0, socket_connect_timeout=1.0
            )
        return self._redis

    def _emit_broker(self, fam: dict[str, Any], known: set[str]) -> bool:
        try:
            lengths, unacked = queue_lengths(self._redis_client(), known)
        except Exception as exc:
            log.warning("cannot read the broker: %s", exc)
            fam["replicator_broker_up"].add_metric([], 0)
            return False
        fam["replicator_broker_up"].add_metric([], 1)
        for queue, n in sorted(lengths.items()):
            fam["replicator_queue_length"].add_metric([queue], n)
        fam["replicator_broker_unacked_messages"].add_metric([], unacked)
        consumers, online = self._consumer_counts()
        if consumers is not None:
            for queue in sorted(set(lengths) | set(consumers)):
                fam["replicator_queue_consumers"].add_metric([queue], consumers.get(queue, 0))
            fam["replicator_workers_online"].add_metric([], online)
        return True

    def _consumer_counts(self) -> tuple[dict[str, int] | None, int]:
        at, counts, online = self._consumers
        if counts is not None and time.monotonic() - at < self.consumers_ttl:
            return counts, online
        try:
            counts, online = active_consumers(self._celery_app(), self.inspect_timeout)
        except Exception as exc:
            log.warning("inspect active_queues failed: %s", exc)
            return None, 0
        self._consumers = (time.monotonic(), counts, online)
        return counts, online

    def _celery_app(self) -> Any:
        if self._celery is None:
            from celery import Celery

            app = Celery("olap_replicator_metrics", broker=self.settings.broker_url)
            app.conf.update(
                accept_content=["json"],
                broker_connection_timeout=2.0,
                broker_connection_retry=False,
                broker_connection_max_retries=1,
                broker_transport_options={"socket_timeout": 2.0, "socket_connect_timeout": 1.0},
            )
            self._celery = app
        return self._celery


def queue_lengths(client: Any, known: Iterable[str]) -> tuple[dict[str, int], int]:
    """LLEN of every backend queue and the coordinator queue, priority sub-lists added in."""
    keys: set[str] = set()
    for raw in client.scan_iter(match=QUEUE_PATTERN, count=1000):
        keys.add(raw.decode() if isinstance(raw, bytes) else raw)
    for queue in known:
        keys |= {queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS}
    keys |= {
        queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}"
        for queue in COORDINATOR_QUEUES
        for p in PRIORITY_STEPS
    }
    ordered = sorted(keys)
    pipe = client.pipeline(transaction=False)
    for key in ordered:
        pipe.llen(key)
    pipe.hlen("unacked")
    results = pipe.execute(raise_on_error=False)
    lengths: dict[str, int] = {}
    for key, n in zip(ordered, results[:-1], strict=True):
        if isinstance(n, Exception):  # not a list (someone else's key): not a queue
            continue
        base = key.split(PRIORITY_SEP, 1)[0]
        lengths[base] = lengths.get(base, 0) + int(n)
    unacked = results[-1]
    return lengths, 0 if isinstance(unacked, Exception) else int(unacked)


def active_consumers(app: Any, timeout: float) -> tuple[dict[str, int], int]:
    """Worker nodes per queue, from one ``inspect active_queues`` broadcast."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    counts: dict[str, int] = {}
    for queues in replies.values():
        for q in queues or []:
            name = q.get("name") if isinstance(q, dict) else None
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts, len(replies)


def _kind_agg(r: Any) -> KindAgg:
    k = KindAgg(
        by_state={r["state"]: int(r["n"])},
        attempts=int(r["attempts"]),
        retries=int(r["retries"]),
        bytes_done=int(r["bytes_done"]),
        bytes_total=int(r["bytes_total"]),
        files_done=int(r["files"]),
        duration_count=int(r["dur_n"]),
        duration_sum=float(r["dur_sum"]),
    )
    k.buckets = [int(r[f"b{i}"]) for i in range(len(DURATION_BUCKETS))]
    return k


def _buckets(bounds: Sequence[float], counts: Sequence[int], total: int) -> list[tuple[str, float]]:
    return [(repr(float(b)), float(c)) for b, c in zip(bounds, counts, strict=True)] + [
        ("+Inf", float(total))
    ]


# -- serving ----------------------------------------------------------------------------------


def registry_for(
    settings: Settings, clusters: Sequence[str] | None = None, **kwargs: Any
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ReplicatorCollector(settings, clusters, **kwargs))
    return registry


def serve(
    settings: Settings,
    port: int = 9808,
    addr: str = "0.0.0.0",
    clusters: Sequence[str] | None = None,
    **kwargs: Any,
) -> tuple[Any, threading.Thread]:
    """Start the HTTP endpoint (``/metrics``) in a daemon thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    registry = registry_for(settings, clusters, **kwargs)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server, thread


def render(settings: Settings, clusters: Sequence[str] | None = None, **kwargs: Any) -> str:
    """One scrape, as Prometheus text."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(settings, clusters, **kwargs)).decode()
