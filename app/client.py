"""The Python API.

from app.client import Replicator
r = Replicator()                       # settings from replicator.toml / REPLICATOR_* env
prod = r.cluster("prod")
prod.init()
prod.add_backend("be1", "/data/prod/be1")
prod.create_table("sales.orders", ["id:int64", "day:date", "amount:float64"],
                  partition_by="day", partitions=[("p2024", "2024-01-01", "2025-01-01")],
                  buckets=8, replication_num=1)
prod.load("sales.orders", "orders.parquet", label="orders-2024-06-01")
prod.checksum("sales.orders")
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from app import evolve, partitions, read
from app import export as _export
from app.backup.handle import RepositoryHandle
from app.catalog import model
from app.cluster import Cluster, PartitionSpec
from app.config import Settings, load_settings
from app.errors import InvalidRequest, JobTimeout
from app.replication import jobs as _jobs
from app.replication.dryrun import DryRun, dry_run
from app.replication.state import JobState
from app.replication.submit import Request as Request
from app.schema import ColumnDef
from app.storage import compaction, gc
from app.storage.load import Loader, LoadResult, LoadSource
from app.sync import policies as _sync_policies
from app.sync.handle import SyncPolicy


class ClusterHandle:
    """Everything one can do to one cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self.name = cluster.name

    @property
    def catalog(self) -> Cluster:
        return self._cluster

    def init(self) -> tuple[bool, str | None, str]:
        return self._cluster.init()

    def add_backend(
        self, name: str, storage_root: str, transfer_url: str | None = None
    ) -> model.Backend:
        """Register a backend (idempotent); ``transfer_url`` (``https://HOST:PORT``) is where
        other hosts reach its transfer server."""
        return self._cluster.add_backend(name, storage_root, transfer_url)

    def backends(self) -> list[model.Backend]:
        return self._cluster.backends()

    def decommission_backend(self, name: str) -> model.Backend:
        return self._cluster.decommission_backend(name)

    def create_table(
        self,
        full_name: str,
        columns: Sequence[ColumnDef | str | tuple[str, str]],
        *,
        partition_by: str | None = None,
        partitions: Sequence[PartitionSpec | tuple[str, Any, Any]] = (),
        distributed_by: Sequence[str] = (),
        buckets: int = 1,
        replication_num: int = 1,
    ) -> model.TableInfo:
        return self._cluster.create_table(
            full_name,
            columns,
            partition_by=partition_by,
            partitions=partitions,
            distributed_by=distributed_by,
            buckets=buckets,
            replication_num=replication_num,
        )

    def table(self, full_name: str) -> model.TableInfo:
        return self._cluster.table(full_name)

    def add_partition(
        self, full_name: str, name: str, lower: Any, upper: Any
    ) -> model.PartitionInfo:
        """A new, empty partition covering [lower, upper) (it must not overlap another)."""
        return partitions.add_partition(self._cluster, full_name, name, lower, upper)

    def alter(self, full_name: str, change: evolve.Change) -> model.TableInfo:
        """One schema change (evolve.AddColumn, DropColumn, WidenColumn, RenameColumn): the
        table's next schema version. Rows already written read as the new schema says."""
        return evolve.alter_table(self._cluster, full_name, change)

    def schema_history(self, full_name: str) -> list[evolve.SchemaVersion]:
        return evolve.history(self._cluster, full_name)

    def tables(self) -> list[model.TableInfo]:
        return self._cluster.tables()

    def partitions(self, full_name: str) -> list[model.PartitionInfo]:
        return self._cluster.partitions(full_name)

    def load(
        self,
        full_name: str,
        source: LoadSource,
        *,
        label: str,
        overwrite: bool = False,
        format: str | None = None,
    ) -> LoadResult:
        return Loader(self._cluster).load(
            full_name, source, label=label, overwrite=overwrite, fmt=format
        )

    def compact(self, full_name: str, **kwargs: Any) -> compaction.CompactionReport:
        return compaction.compact(self._cluster, full_name, **kwargs)

    def gc(self, *, orphan_grace_sec: int | None = None) -> gc.GcReport:
        return gc.collect(self._cluster, orphan_grace_sec=orphan_grace_sec)

    def scan(self, full_name: str, partitions: list[str] | None = None) -> pa.Table:
        return read.scan(self._cluster, full_name, partitions)

    def checksum(
        self, full_name: str, partitions: list[str] | None = None
    ) -> list[read.PartitionChecksum]:
        return read.checksum(self._cluster, full_name, partitions)

    def export(
        self,
        full_name: str,
        path: str | os.PathLike[str],
        *,
        partitions: list[str] | None = None,
        version: int | None = None,
        force: bool = False,
    ) -> _export.ExportResult:
        """Write the table's rows (``partitions``, default all) at each partition's visible
        version, or at an older ``version`` still kept, to one Parquet file, atomically;
        ``force`` replaces an existing file."""
        return _export.export(
            self._cluster, full_name, path, partitions=partitions, version=version, force=force
        )


Notify = Callable[[str, int], None]


class Job:
    """A replication job, as its target cluster's catalog records it."""

    def __init__(
        self,
        replicator: Replicator,
        cluster: str,
        job_id: int,
        record: _jobs.JobRecord | None = None,
    ) -> None:
        self._r = replicator
        self.cluster = cluster
        self.id = job_id
        self._record = record or _jobs.get(replicator.settings, cluster, job_id)

    def __repr__(self) -> str:
        return f"<Job {self.ref} {self.state} {self._record.src} -> {self._record.dst}>"

    @property
    def ref(self) -> str:
        return f"{self.cluster}:{self.id}"

    @property
    def record(self) -> _jobs.JobRecord:
        return self._record

    @property
    def label(self) -> str:
        return self._record.label

    @property
    def state(self) -> JobState:
        return self._record.state

    @property
    def message(self) -> str | None:
        return self._record.message

    def refresh(self) -> Job:
        self._record = _jobs.get(self._r.settings, self.cluster, self.id)
        return self

    @property
    def progress(self) -> _jobs.Progress:
        return _jobs.progress(self._r.settings, self.cluster, self.id)

    @property
    def events(self) -> list[_jobs.Event]:
        return _jobs.events(self._r.settings, self.cluster, self.id)

    def tasks(self) -> list[Any]:
        return _jobs.tasks(self._r.settings, self.cluster, self.id)

    def partitions(self) -> list[Any]:
        return _jobs.partitions(self._r.settings, self.cluster, self.id)

    def cancel(self) -> bool:
        """Ask for the job to be aborted; returns False if it had already finished."""
        asked = _jobs.request_cancel(self._r.settings, self.cluster, self.id)
        if asked:
            self._r.nudge(self.cluster, self.id)
        self.refresh()
        return asked

    def watch(
        self,
        timeout: float = 600.0,
        poll: float = 0.05,
        *,
        max_poll: float = 0.5,
        growth: float = 1.5,
    ) -> Iterator[Job]:
        """Refresh the job until it is COMMITTED or ABORTED, yielding it after every refresh
        (the last one yielded is final). The interval starts at ``poll`` and is multiplied by
        ``growth`` each time, up to ``max_poll``; past ``timeout`` seconds this raises JobTimeout
        (the job goes on)."""
        deadline = time.monotonic() + timeout
        while True:
            yield self.refresh()
            if self.state.final:
                return
            if time.monotonic() > deadline:
                raise JobTimeout(f"job {self.ref} is still {self.state} after {timeout:.0f}s")
            time.sleep(poll)
            poll = min(poll * growth, max_poll)

    def wait(self, timeout: float = 600.0, poll: float = 0.05) -> Job:
        """Block until COMMITTED or ABORTED; raise JobTimeout if that takes longer than timeout."""
        for _ in self.watch(timeout, poll):
            pass
        return self


class Replicator:
    """Entry point: built from settings; hands out clusters and replication jobs.

    ``notify(cluster, job_id)`` wakes the coordinator for a job at once (the front ends pass
    ``workers.nudge.notifier(settings)``). Without one, nothing is nudged: the coordinator's
    periodic tick picks the job up within a second.
    """

    def __init__(self, settings: Settings | None = None, notify: Notify | None = None) -> None:
        self.settings = settings or load_settings()
        self._notify = notify

    def cluster(self, name: str) -> ClusterHandle:
        return ClusterHandle(Cluster(self.settings, name))

    def nudge(self, cluster: str, job_id: int) -> None:
        if self._notify is None:
            return
        with contextlib.suppress(Exception):
            self._notify(cluster, job_id)

    def replicate(
        self,
        src: str,
        dst: str,
        *,
        partitions: list[str] | None = None,
        label: str | None = None,
        create_target: bool = False,
        replication_num: int | None = None,
        timeout_sec: int | None = None,
        overwrite: bool = False,
    ) -> Job:
        """Replicate ``CLUSTER:DB.TABLE`` into ``CLUSTER[:DB.TABLE]``; the same label returns the
        same job. Bad input raises a UserError and creates nothing. ``timeout_sec`` overrides
        replication_transaction_timeout_sec for this job. ``overwrite``: replace target partitions
        that were written on their own since they were last replicated (refused otherwise)."""
        cluster, job_id, created = _jobs.submit(
            self.settings,
            src,
            dst,
            partitions=partitions,
            label=label,
            create_target=create_target,
            replication_num=replication_num,
            timeout_sec=timeout_sec,
            overwrite=overwrite,
        )
        return self._job_of(cluster, job_id, created)

    def replicate_many(self, requests: Sequence[Request]) -> list[Job]:
        """Submit jobs to one target cluster at once, all or none: each ``Request(src, dst,
        ...)`` takes the options of :meth:`replicate`. Catalogs are read in a few queries for
        the whole batch and the jobs recorded in one insert (bench/RESULTS.md, concurrency).
        A request refused refuses the batch with one UserError; nothing is recorded."""
        for r in requests:
            if not isinstance(r, Request) or r.repair or r.schema_changes or r.restore:
                raise InvalidRequest(
                    "replicate_many takes app.client.Request(src, dst, ...) items with the "
                    "options of replicate()"
                )
        submitted = _jobs.submit_many(self.settings, list(requests))
        if not submitted:
            return []
        cluster = submitted[0][0]
        records = _jobs.get_many(self.settings, cluster, [job_id for _, job_id, _ in submitted])
        jobs = [Job(self, cluster, job_id, records[job_id]) for _, job_id, _ in submitted]
        for job, (_, _, created) in zip(jobs, submitted, strict=True):
            if created and not job.state.final:
                self.nudge(cluster, job.id)
        return jobs

    def _job_of(self, cluster: str, job_id: int, created: bool) -> Job:
        job = Job(self, cluster, job_id)
        if created and not job.state.final:
            self.nudge(cluster, job_id)
        return job

    def repository(self, url: str) -> RepositoryHandle[Job]:
        """A backup repository (a directory, or ``s3://BUCKET/PREFIX``): back up into it,
        restore from it, list, verify and prune it (app/backup/handle.py)."""
        return RepositoryHandle(self.settings, url, self._job_of)

    def dry_run(
        self,
        src: str,
        dst: str,
        *,
        partitions: list[str] | None = None,
        create_target: bool = False,
        replication_num: int | None = None,
        overwrite: bool = False,
    ) -> DryRun:
        """What ``replicate`` with these arguments would do now, per partition (skip,
        incremental, full, create), with bytes, files and a time estimate; changes nothing.
        Refuses what ``replicate`` would refuse, with the same errors."""
        return dry_run(
            self.settings,
            src,
            dst,
            partitions=partitions,
            create_target=create_target,
            replication_num=replication_num,
            overwrite=overwrite,
        )

    def sync_create(
        self,
        src: str,
        dst: str,
        *,
        name: str | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        renames: dict[str, str] | None = None,
    ) -> SyncPolicy:
        """Keep the tables of ``src`` (CLUSTER:DB) in sync with ``dst`` (CLUSTER[:DB]); globs
        in ``include``/``exclude`` choose tables, ``renames`` maps source to target names. The
        coordinator's beat follows it: jobs, new tables and partitions, schema changes."""
        policy = _sync_policies.create(
            self.settings, name or _default_sync_name(src), src, dst,
            include=include, exclude=exclude, renames=renames,
        )  # fmt: skip
        return SyncPolicy(self.settings, policy.dst_cluster, policy.name)

    def sync(self, cluster: str, name: str) -> SyncPolicy:
        return SyncPolicy(self.settings, cluster, name)

    def syncs(self, cluster: str) -> list[_sync_policies.Policy]:
        return _sync_policies.list_policies(self.settings, cluster)

    def job(self, ref: str) -> Job:
        cluster, job_id = _jobs.parse_ref(ref)
        return Job(self, cluster, job_id)

    def jobs(
        self, cluster: str, state: str | list[str] | None = None, limit: int = 100
    ) -> list[Job]:
        states = [state] if isinstance(state, str) else state
        return [
            Job(self, cluster, r.id) for r in _jobs.list_jobs(self.settings, cluster, states, limit)
        ]


def _default_sync_name(src: str) -> str:
    """``prod:sales`` -> ``prod_sales``: a policy name from its source."""
    return src.replace(":", "_").replace(".", "_").replace("-", "_")
