"""Admission of new jobs against the running ones, and the busy check: a target table has at
most one active job. Both read once per submitted batch, under the submit lock.

The limits are StarRocks' (replication_max_parallel_table_count, _replica_count, _data_size_mb):
a job is admitted when the running jobs and those admitted before it in its batch leave room.
"""

from __future__ import annotations

import sqlalchemy as sa

from app.catalog import schema as s
from app.catalog.arrays import any_of
from app.config import Settings
from app.errors import AdmissionRefused, TableBusy
from app.replication.state import ACTIVE_STATES


class Admission:
    """The running jobs' totals, read in one row (summed in Postgres: fetching every active
    job's options made each submit cost more with every job already running); each job
    admitted adds its own."""

    def __init__(self, conn: sa.Connection, settings: Settings) -> None:
        self.settings = settings
        options = s.jobs.c.options
        running, replicas, size = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(options["replicas"].as_integer()), 0),
                sa.func.coalesce(sa.func.sum(options["data_size"].as_numeric(30, 0)), 0),
            ).where(s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]))
        ).one()
        self.running, self.replicas, self.bytes = int(running), int(replicas), int(size)
        self.admitted = 0  # jobs of this batch admitted so far

    def admit(self, replicas: int, data_size: int) -> None:
        """Count the job in, or AdmissionRefused saying which limit and what to do."""
        limit = self.settings.replication_max_parallel_table_count
        also = f" (and {self.admitted} earlier in this batch)" if self.admitted else ""
        if self.running >= limit:
            raise AdmissionRefused(
                f"{self.running} replication jobs are running{also}, the limit is {limit} "
                "(replication_max_parallel_table_count); submit again when one has finished"
                + (", or submit fewer jobs at once" if self.admitted else "")
            )
        limit = self.settings.replication_max_parallel_replica_count
        if self.replicas + replicas > limit:
            raise AdmissionRefused(
                f"this job needs {replicas} tablet replicas and running jobs{also} hold "
                f"{self.replicas}; the limit is {limit} (replication_max_parallel_replica_count). "
                "Submit again later or replicate fewer partitions at a time"
            )
        running_mb, job_mb = self.bytes / 2**20, data_size / 2**20
        limit_mb = self.settings.replication_max_parallel_data_size_mb
        if running_mb + job_mb > limit_mb:
            raise AdmissionRefused(
                f"this job moves {job_mb:.1f} MB and running jobs{also} {running_mb:.1f} MB; the "
                f"limit is {limit_mb} MB (replication_max_parallel_data_size_mb). Submit again "
                "later or replicate fewer partitions at a time"
            )
        self.running += 1
        self.replicas += replicas
        self.bytes += data_size
        self.admitted += 1


def refuse_busy(conn: sa.Connection, cluster: str, tables: list[str]) -> None:
    """TableBusy naming the job when any of ``tables`` has an active job: one query."""
    busy = conn.execute(
        sa.select(s.jobs.c.id, s.jobs.c.label, s.jobs.c.dst_table)
        .where(
            any_of(s.jobs.c.dst_table, tables),
            s.jobs.c.state.in_([str(x) for x in ACTIVE_STATES]),
        )
        .order_by(s.jobs.c.id)
    ).first()
    if busy is not None:
        raise TableBusy(
            f"{cluster}:{busy.dst_table} is already being replicated by job "
            f"{cluster}:{busy.id} ({busy.label}); wait for it or cancel it"
        )
