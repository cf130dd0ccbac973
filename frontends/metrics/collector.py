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
* Redis: ``LLEN`` of every backend queue (``be.*``), the coordinator's two, and their kombu
  priority sub-lists (``<queue>\\x06\\x16<n>``), and the size of the ``unacked`` hash;
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
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from app.catalog.engine import discover_clusters
from app.config import Settings
from app.queues import COORDINATOR_QUEUES
from app.replication.taskrows import TaskState
from frontends.metrics.broker import active_consumers, queue_lengths
from frontends.metrics.catalog import (
    PARTITIONS_SQL,
    ClusterScrape,
    KindAgg,
    Settled,
    scrape_cluster,
)
from frontends.metrics.families import (
    DURATION_BUCKETS,
    FAMILIES,
    JOB_DURATION_BUCKETS,
    TASK_STATES,
    new_family,
)

log = logging.getLogger("frontends.metrics")


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
        self._settled: Settled = {}
        self._consumers: tuple[float, dict[str, int] | None, int] = (0.0, None, 0)
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
        return [new_family(name) for name in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(self._collect())

    # -- the scrape ---------------------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        fam: dict[str, Any] = {name: new_family(name) for name in FAMILIES}
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
        return scrape_cluster(self._engine(name), name, self._settled)

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
                [c, job, table, "done"], apply.by_state.get(TaskState.DONE, 0)
            )
            fam["replicator_active_job_replicas"].add_metric([c, job, table, "total"], total)
        for table, k in sorted(sc.per_table.items()):
            fam["replicator_replicated_bytes"].add_metric([c, table], k.bytes_done)
            fam["replicator_replicated_files"].add_metric([c, table], k.files_done)
        for state, n in sc.backup_jobs.items():
            fam["replicator_backup_jobs"].add_metric([c, state], n)
        for table, n in sorted(sc.backup_bytes.items()):
            fam["replicator_backup_bytes"].add_metric([c, table], n)
        for table, at in sorted(sc.last_commit.items()):
            fam["replicator_table_last_commit_timestamp_seconds"].add_metric([c, table], at)
        for kind in sorted(sc.per_kind):
            k = sc.per_kind[kind]
            fam["replicator_task_attempts"].add_metric([c, kind], k.attempts)
            fam["replicator_task_retries"].add_metric([c, kind], k.retries)
            fam["replicator_task_failures"].add_metric(
                [c, kind], k.by_state.get(TaskState.FAILED, 0)
            )
            fam["replicator_task_duration_seconds"].add_metric(
                [c, kind], _buckets(DURATION_BUCKETS, k.buckets, k.duration_count), k.duration_sum
            )
            active = sc.active_kind.get(kind, KindAgg())
            for state in TASK_STATES:
                fam["replicator_tasks"].add_metric([c, kind, state], active.by_state.get(state, 0))
        for r in sc.sync:
            labels = [c, r.policy, r.dst_table, r.state]
            fam["replicator_sync_versions_behind"].add_metric(labels, r.versions_behind)
            fam["replicator_sync_seconds_behind"].add_metric(labels, float(r.seconds))
            fam["replicator_sync_verify_failures"].add_metric(
                [c, r.policy, r.dst_table], r.mismatches
            )
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
            from app import broker

            self._redis = broker.client(
                self.settings, socket_timeout=2.0, socket_connect_timeout=1.0
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
            counts, online = active_consumers(self.settings, self.inspect_timeout)
        except Exception as exc:
            log.warning("inspect active_queues failed: %s", exc)
            return None, 0
        self._consumers = (time.monotonic(), counts, online)
        return counts, online


def _buckets(bounds: Sequence[float], counts: Sequence[int], total: int) -> list[tuple[str, float]]:
    return [(repr(float(b)), float(c)) for b, c in zip(bounds, counts, strict=True)] + [
        ("+Inf", float(total))
    ]
