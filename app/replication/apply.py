"""Apply tasks, run on a target backend's queue: bring each file of a manifest to the target
replica, verified, and record the rowsets as pending rows of the job's transaction.

A file already installed and verified is not fetched again; a file is received under the
transaction's staging directory and renamed into place only once its size and checksum match.
Nothing becomes visible here: the coordinator's commit does that for the whole job at once.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.catalog import model
from app.catalog import schema as s
from app.errors import LeaseLost, SetupError, StorageFull, StorageUnavailable
from app.replication import prefetch, taskrows
from app.replication.fetch import fetch
from app.replication.finish import installed_dirs, target_rowset_id
from app.replication.runner import BatchOutcome, ProgressFn, TaskRunner
from app.replication.sources import link_budget, sources_for
from app.replication.taskrows import Claimed
from app.storage.checksum import FileMeta
from app.storage.client import (
    StorageClient,
    full,
    receiving_path,
    rowset_dir,
    staging_dir,
    storage_for,
)
from app.storage.marker import check_marker
from app.storage.rowsets import RowsetState, verify_file
from app.transfer import names
from app.txn import TxnState

PROGRESS_EVERY_SEC = 1.0
_INSERT_ROWSETS = pg_insert(s.rowsets).on_conflict_do_nothing()
FLUSH_EVERY_TASKS = 64
FLUSH_EVERY_SEC = 1.0


class Heartbeat:
    """Called for every chunk copied: keeps to the link's bandwidth budget and, about once a
    second, renews the leases of the whole batch, records the bytes of the task in flight and
    reports progress (the renewal is also how a worker notices that its job was cancelled)."""

    def __init__(
        self, runner: TaskRunner, job: Any, claims: list[Claimed], progress: ProgressFn | None
    ) -> None:
        self.runner, self.claims, self.progress = runner, claims, progress
        self.total = sum(int(c.row.bytes_total) for c in claims)
        self.throttle = link_budget(runner.settings, job.src_cluster, runner.dst.name).take
        self.batch_done = 0  # bytes of finished tasks in this batch
        self.completed = 0  # bytes of the current task's installed files
        self.current = 0  # bytes of the file in flight
        self.received = 0  # bytes that crossed the network (or were read from a shared root)
        self.claim: Claimed | None = None
        self.last = time.monotonic()

    def start(self, claim: Claimed) -> None:
        self.batch_done += self.completed
        self.claim, self.completed, self.current = claim, 0, 0

    def __call__(self, n: int) -> None:
        self.throttle(n)
        self.current += n
        self.ahead(n)

    def ahead(self, n: int) -> None:
        """``n`` bytes crossed (for a file in flight, or fetched ahead of its task)."""
        self.received += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SEC:
            self.last = now
            done = self.completed + self.current
            self.runner.renew(self.claims, self.claim, done)
            self.report(self.batch_done + done)

    def file_done(self, size: int) -> None:
        self.completed += size
        self.current = 0

    def report(self, done: int) -> None:
        if self.progress:
            self.progress(done, self.total)


@dataclass
class _Applied:
    claim: Claimed
    rowsets: list[dict[str, Any]]
    bytes_done: int


def apply_batch(
    runner: TaskRunner,
    job: Any,
    claims: list[Claimed],
    out: BatchOutcome,
    progress: ProgressFn | None,
) -> None:
    with runner.dst.engine.connect() as conn:
        backends = model.list_backends(conn)
    try:  # apply writes only into roots marked as its own cluster's backends'
        for b in {c.row.dst_backend_id for c in claims}:
            check_marker(backends[b].storage_root, runner.dst.name, backends[b].name)
    except (SetupError, StorageUnavailable) as exc:  # retried if only unreachable (fail_all)
        runner.fail_all(claims, exc, out)
        return
    beat = Heartbeat(runner, job, claims, progress)
    applied: list[_Applied] = []
    try:
        last_flush = time.monotonic()
        # A window's small files come first, in a request or so; then its tasks one by one.
        for window in prefetch.windows(claims):
            installed = prefetch.prefetch(
                runner.settings, job, runner.job_id, window, backends, beat.throttle, beat.ahead
            )
            for claim in window:
                beat.start(claim)
                try:
                    applied.append(_apply_one(runner, job, claim, backends, beat, installed))
                except LeaseLost:
                    raise
                except Exception as exc:  # recorded on that task's row
                    runner.fail_all([claim], exc, out)
                if (
                    len(applied) >= FLUSH_EVERY_TASKS
                    or time.monotonic() - last_flush >= FLUSH_EVERY_SEC
                ):
                    _flush(runner, job, applied, out)
                    applied, last_flush = [], time.monotonic()
        _flush(runner, job, applied, out)
    except LeaseLost:
        _drop_if_ended(runner, job, backends, claims)
        raise
    finally:  # what crossed, the bytes of files that failed or were cut off included
        out.bytes += beat.received
    beat.report(beat.batch_done + beat.completed)


def _drop_if_ended(
    runner: TaskRunner, job: Any, backends: dict[int, model.Backend], claims: list[Claimed]
) -> None:
    """A batch stopped because its job ended: what it installed and did not record would be
    left behind (the abort's cleanup may already have run), so it removes that itself. If the
    job goes on (another worker took a lease over), the files are that worker's to finish."""
    with runner.dst.engine.connect() as conn:
        state = conn.execute(
            sa.select(s.transactions.c.state).where(s.transactions.c.id == job.txn_id)
        ).scalar_one()
    if state == TxnState.PREPARE:
        return
    for claim in claims:
        target = storage_for(backends[claim.row.dst_backend_id].storage_root)
        # Its staging directory too: the abort's clean-up may have removed it before this
        # batch created it again.
        for path in [*installed_dirs(claim.row), staging_dir(job.txn_id)]:
            target.delete_tree(path)


def _apply_one(
    runner: TaskRunner,
    job: Any,
    claim: Claimed,
    backends: dict[int, model.Backend],
    beat: Heartbeat,
    installed: set[tuple[str, str]],
) -> _Applied:
    """Bring the claim's files to the target replica; ``installed``: paths the batch's prefetch
    wrote already (storage root, path), verified in memory, which need no second look."""
    task = claim.row
    manifest = task.manifest
    target = storage_for(backends[task.dst_backend_id].storage_root)
    target.check()
    sources = sources_for(
        runner.settings, job.src_cluster, list(task.src_backend_ids), task.transfer_token
    )
    src_tablet = names.tablet_id(task.src_tablet_id)
    rows = []
    for rs in manifest["rowsets"]:
        src_rowset = names.rowset_id(rs["id"])
        dst_rowset = target_rowset_id(runner.job_id, task.dst_tablet_id, src_rowset)
        for f in rs["files"]:
            meta = FileMeta.from_json(f)
            names.file_name(meta.name)
            final = f"{rowset_dir(task.dst_tablet_id, dst_rowset)}/{meta.name}"
            staged = receiving_path(target, job.txn_id, dst_rowset, final)
            if (target.root, final) in installed:
                pass
            elif verify_file(target, final, meta):
                if claim.attempt > 1 and staged != final:
                    # An earlier attempt may have installed it and left its staged copy.
                    target.delete_tree(staged)
            else:
                try:
                    fetch(sources, target, src_tablet, src_rowset, staged, meta, beat)
                    if staged != final:
                        target.rename(staged, final)
                except (OSError, StorageFull) as exc:
                    _raise_if_full(exc, target, backends[task.dst_backend_id], runner)
                    raise
            beat.file_done(meta.size)
        rows.append(
            {
                "id": dst_rowset,
                "tablet_id": task.dst_tablet_id,
                "txn_id": job.txn_id,
                "start_version": rs["start"],
                "end_version": rs["end"],
                "state": RowsetState.PENDING,
                "num_rows": rs["num_rows"],
                "data_size": rs["data_size"],
                "files": rs["files"],
            }
        )
    return _Applied(claim, rows, beat.completed)


def _raise_if_full(
    exc: BaseException, target: StorageClient, backend: model.Backend, runner: TaskRunner
) -> None:
    """A full disk is permanent for this job: say which backend, and how much room it has."""
    if isinstance(exc, StorageFull) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    ):
        raise full(
            target.root,
            f"target backend {runner.dst.name}:{backend.name} cannot hold this job's files; "
            "free space or add backends, then replicate again",
        ) from None


def _flush(runner: TaskRunner, job: Any, applied: list[_Applied], out: BatchOutcome) -> None:
    """Record installed rowsets (pending, invisible) and mark their tasks DONE, together —
    only while the job's transaction is still open (a late apply of an aborted job records
    nothing)."""
    if not applied:
        return
    with runner.dst.engine.begin() as conn:
        state = conn.execute(
            sa.select(s.transactions.c.state)
            .where(s.transactions.c.id == job.txn_id)
            .with_for_update(read=True)
        ).scalar_one()
        if state != TxnState.PREPARE:
            raise LeaseLost(f"job {runner.job_id}'s transaction is {state}; dropping the apply")
        rows = [r for a in applied for r in a.rowsets]
        if rows:  # executemany: one compiled statement, whatever the number of rows
            conn.execute(_INSERT_ROWSETS, rows)
        out.done += taskrows.complete(
            conn,
            [
                {"task_id": a.claim.id, "attempt": a.claim.attempt, "bytes_done": a.bytes_done}
                for a in applied
            ],
            bytes_done=sa.BigInteger(),
        )
