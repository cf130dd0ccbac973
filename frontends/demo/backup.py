"""The demo's backup step: dr backed up into the object store, one partition restored from it.

The repository is ``s3://olap-demo/backups`` in the lake step's store. The backup is a job of dr
(snapshots and uploads on dr's backend queues); the restore is a replication job from the
repository into a new table of dr, ``tpch.lineitem_restored``, of one partition, which must then
equal that partition of dr's table (rows and checksum).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.backup.choose import held_versions, span
from app.client import ClusterHandle, Replicator
from app.replication.state import JobState
from app.storage.objects import ObjectStorage
from app.units import MB
from frontends.demo.common import TABLE, TARGET, console
from frontends.demo.lake import BUCKET, ReusedStore, Store

REPO = f"s3://{BUCKET}/backups"
RESTORED = "tpch.lineitem_restored"
TIMEOUT_SEC = 600


@dataclass
class BackupResult:
    backup: str
    state: str
    message: str | None
    bytes: int = 0
    seconds: float = 0.0
    partition: str = ""
    version: int = 0
    restore_state: str = ""
    restore_seconds: float = 0.0
    equal: bool = False

    @property
    def ok(self) -> bool:
        return self.state == JobState.COMMITTED and self.equal


def backup_and_restore(replicator: Replicator, store: Store) -> BackupResult:
    if isinstance(store, ReusedStore):  # an earlier demo's backups, in a store that stays
        for prefix in ("backups", "objects"):
            ObjectStorage(REPO).delete_tree(prefix)
    repo = replicator.repository(REPO)
    started = time.monotonic()
    job = repo.backup(f"{TARGET}:{TABLE}", label="demo-backup").wait(TIMEOUT_SEC)
    result = BackupResult(str(job.record.backup), job.state, job.message)
    result.seconds = time.monotonic() - started
    if job.state is not JobState.COMMITTED:
        console.print(f"  [red]backup {job.ref} {job.state}[/]: {job.message}")
        return result
    m = repo.show(result.backup)
    result.bytes = m.bytes
    console.print(
        f"  backup [bold]{m.name}[/] of {TARGET}:{TABLE} into {REPO}/: {m.bytes / MB:.1f} MB in "
        f"{len(m.objects())} objects, {m.uploaded_bytes / MB:.1f} MB uploaded, "
        f"{result.seconds:.1f}s (job {job.ref})"
    )
    part = max(m.partitions, key=lambda p: (sum(f.size for f in p.files()), p.name))
    console.print(
        f"  it can restore partition {part.name} at versions {span(held_versions(part))}; "
        f"restoring {part.name} at v{part.version} into {TARGET}:{RESTORED}"
    )
    result.partition, result.version = part.name, part.version
    started = time.monotonic()
    restore = repo.restore(
        TABLE, to=f"{TARGET}:{RESTORED}", partitions=[part.name], label="demo-restore"
    ).wait(TIMEOUT_SEC)
    result.restore_state = restore.state
    result.restore_seconds = time.monotonic() - started
    dr = replicator.cluster(TARGET)
    with console.status(f"Computing checksums of {RESTORED} and {TABLE}..."):
        if restore.state is JobState.COMMITTED:
            result.equal = _sums(dr, RESTORED, part.name) == _sums(dr, TABLE, part.name)
    console.print(
        f"  restore {restore.ref} {restore.state} in {result.restore_seconds:.1f}s; check: "
        f"{TARGET}:{RESTORED} {part.name} "
        + ("[green]equals[/]" if result.equal else "[red]differs from[/]")
        + f" {TARGET}:{TABLE} {part.name} (rows, checksum)"
    )
    return result


def _sums(handle: ClusterHandle, table: str, partition: str) -> list[tuple[int, str]]:
    return [(c.rows, c.checksum) for c in handle.checksum(table, [partition])]
