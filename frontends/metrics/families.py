"""The metric families the exporter produces: names, types, help texts, labels, buckets."""

from __future__ import annotations

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from app.replication.state import ACTIVE_STATES as _ACTIVE
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState

JOB_STATES = tuple(str(s) for s in JobState)
ACTIVE_STATES = tuple(str(s) for s in _ACTIVE)
TASK_KINDS = tuple(str(k) for k in TaskKind)
TASK_STATES = tuple(str(s) for s in TaskState)
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
    "replicator_backup_jobs": (
        "gauge",
        "Backup jobs kept in the backed-up cluster's catalog, by state.",
        ("cluster", "state"),
    ),
    "replicator_backup_bytes": (
        "counter",
        "Bytes of a table's rowset files its backups' upload tasks put in the repository or "
        "found there already.",
        ("cluster", "table"),
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
    "replicator_sync_versions_behind": (
        "gauge",
        "Source versions a sync policy's table has not yet on the target (all partitions).",
        ("cluster", "policy", "table", "state"),
    ),
    "replicator_sync_seconds_behind": (
        "gauge",
        "Age of the oldest source commit a synced table has not yet on the target (0: caught "
        "up). Alert on it.",
        ("cluster", "policy", "table", "state"),
    ),
    "replicator_sync_verify_failures": (
        "counter",
        "Verifications after a commit that found a synced table's target different (each "
        "starts a repair of the partitions concerned).",
        ("cluster", "policy", "table"),
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


def new_family(name: str) -> Metric:
    kind, help_text, labels = FAMILIES[name]
    if kind == "gauge":
        return GaugeMetricFamily(name, help_text, labels=list(labels))
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=list(labels))
    return HistogramMetricFamily(name, help_text, labels=list(labels))
