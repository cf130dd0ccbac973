"""The Python API of one backup repository: ``Replicator().repository(URL)``.

repo = r.repository("s3://backups/warehouse")      # or a directory
job = repo.backup("prod:sales.orders").wait()       # a job like a replication's
repo.list("sales.orders")                           # finished backups, oldest first
repo.restore("sales.orders", to="dr2:sales.orders", partitions=["p2024"], version=12).wait()
repo.verify()                                       # re-hashes every object
repo.prune(keep=7)                                  # never deletes what a kept one needs
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Generic, TypeVar

from app.backup import choose, ops
from app.backup.create import submit_backup
from app.backup.manifest import Manifest
from app.backup.repo import Repository
from app.backup.restore import submit_restore
from app.config import Settings

J = TypeVar("J")


class RepositoryHandle(Generic[J]):
    def __init__(self, settings: Settings, url: str, job_of: Callable[[str, int, bool], J]) -> None:
        self.settings = settings
        self.repo = Repository(url)
        self._job_of = job_of  # the client's job handle for (cluster, job id, just created)

    @property
    def url(self) -> str:
        return self.repo.url

    def backup(
        self,
        table: str,
        *,
        partitions: list[str] | None = None,
        label: str | None = None,
        timeout_sec: int | None = None,
    ) -> J:
        """Back up ``CLUSTER:DB.TABLE`` (or some of its partitions) into this repository: only
        the files it lacks are uploaded. The same label returns the same job."""
        cluster, job_id, created = submit_backup(
            self.settings, table, self.repo.url, partitions=partitions, label=label,
            timeout_sec=timeout_sec,
        )  # fmt: skip
        return self._job_of(cluster, job_id, created)

    def restore(
        self,
        table: str,
        *,
        to: str,
        partitions: list[str] | None = None,
        version: int | None = None,
        at: dt.datetime | None = None,
        backup: str | None = None,
        label: str | None = None,
        replication_num: int | None = None,
        timeout_sec: int | None = None,
    ) -> J:
        """Restore ``DB.TABLE`` into ``CLUSTER[:DB.TABLE]`` (created if missing): from the newest
        backup, or ``backup``; all its partitions or ``partitions``; at the backup's versions,
        at ``version``, or as they were at ``at``. One replication job: atomic."""
        cluster, job_id, created, _choice = submit_restore(
            self.settings, self.repo.url, table, to, partitions=partitions, version=version,
            at=at, backup=backup, label=label, replication_num=replication_num,
            timeout_sec=timeout_sec,
        )  # fmt: skip
        return self._job_of(cluster, job_id, created)

    def plan_restore(
        self,
        table: str,
        *,
        partitions: list[str] | None = None,
        version: int | None = None,
        at: dt.datetime | None = None,
        backup: str | None = None,
    ) -> choose.Choice:
        """Which backup and versions ``restore`` would read; changes nothing."""
        return choose.choose(
            self.repo, table, backup=backup, partitions=partitions, version=version, at=at
        )

    def backups(self, table: str | None = None) -> ops.Listing:
        """The finished backups (of ``table``), oldest first, and the manifests that are bad."""
        return ops.list_backups(self.repo, table)

    def show(self, name: str) -> Manifest:
        return choose.load(self.repo, name)

    def verify(self, names: list[str] | None = None) -> ops.Verified:
        return ops.verify(self.repo, names)

    def prune(
        self,
        *,
        keep: int | None = None,
        older_than: dt.timedelta | None = None,
        grace_sec: float = ops.PRUNE_GRACE_SEC,
        dry_run: bool = False,
    ) -> ops.Pruned:
        return ops.prune(
            self.repo, keep=keep, older_than=older_than, grace_sec=grace_sec, dry_run=dry_run
        )
