"""Snapshot and apply work, as run by backend workers.

Each task row is claimed with a compare-and-set (state, lease, attempt + 1) before any work, and
finished with a compare-and-set on the same attempt, so a worker whose lease was taken over can
never complete someone else's attempt. Work is idempotent: a rerun finishes what is missing and
redoes nothing that is verified.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import faults
from app.catalog import model
from app.catalog import schema as s
from app.cluster import Cluster
from app.config import Settings
from app.errors import (
    ChecksumMismatch,
    CorruptSource,
    ReplicatorError,
    SourceDataGone,
    StorageUnavailable,
)
from app.replication.finish import hold_owner
from app.retry import RetryPolicy, is_retryable
from app.storage import holds
from app.storage.checksum import FileMeta, checksum_stream, copy_verified
from app.storage.client import StorageClient, rowset_dir, staging_dir, storage_for

log = logging.getLogger(__name__)

ROWSET_NS = uuid.UUID("5b0c7f5e-9d1e-4a57-9a52-0f3c9b1f2e11")
PROGRESS_EVERY_SEC = 1.0

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total) of the current message


class Throttle:
    """Sleeps just enough to keep a copy under ``mb_per_sec`` (0 = unlimited)."""

    def __init__(self, mb_per_sec: float) -> None:
        self.rate = mb_per_sec * 1024 * 1024
        self.start = time.monotonic()
        self.sent = 0

    def __call__(self, n: int) -> None:
        if self.rate <= 0:
            return
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


class _Beat:
    """Called for every chunk copied: keeps the bandwidth cap, and about once a second renews
    the task's lease and reports its bytes (which also notices a cancelled job)."""

    def __init__(
        self, runner: TaskRunner, claim: Claimed, progress: ProgressFn | None, base: int, total: int
    ) -> None:
        self.runner, self.claim, self.progress = runner, claim, progress
        self.base, self.total = base, total
        self.throttle = Throttle(runner.settings.transfer_bandwidth_mb_per_sec)
        self.completed = 0  # bytes of files installed and verified
        self.current = 0  # bytes of the file in flight
        self.file_size = 0
        self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.throttle(n)
        self.current += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SEC:
            self.last = now
            done = self.completed + self.current
            self.runner.heartbeat(self.claim, done)
            if self.progress:
                self.progress(self.base + done, self.total)

    def file_done(self, size: int) -> None:
        self.completed += size
        self.current = 0


class LeaseLost(ReplicatorError):
    """Another attempt owns the task now, or its job ended; stop without touching it."""


@dataclass(frozen=True)
class Claimed:
    id: int
    attempt: int
    row: Any


@dataclass
class BatchOutcome:
    done: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0


class TaskRunner:
    def __init__(self, settings: Settings, cluster: str, job_id: int, worker: str) -> None:
        self.settings = settings
        self.dst = Cluster(settings, cluster)
        self.job_id = job_id
        self.worker = worker
        self.policy = RetryPolicy(maximum_attempts=settings.task_max_attempts)

    # -- claims and leases -----------------------------------------------------------------
    def claim(self, task_id: int, kind: str, job_state: str) -> Claimed | None:
        t = s.job_tasks
        now = sa.func.now()
        lease = now + dt.timedelta(seconds=self.settings.task_lease_sec)
        with self.dst.engine.begin() as conn:
            job_ok = (
                sa.select(s.jobs.c.id)
                .where(
                    s.jobs.c.id == self.job_id,
                    s.jobs.c.state == job_state,
                    s.jobs.c.cancel_requested.is_(False),
                )
                .exists()
            )
            row = conn.execute(
                sa.update(t)
                .where(
                    t.c.id == task_id,
                    t.c.job_id == self.job_id,
                    t.c.kind == kind,
                    t.c.attempts < self.settings.task_max_attempts,
                    sa.or_(
                        t.c.state.in_(["PENDING", "QUEUED"]),
                        sa.and_(t.c.state == "RUNNING", t.c.lease_until < now),
                    ),
                    job_ok,
                )
                .values(
                    state="RUNNING",
                    attempts=t.c.attempts + 1,
                    lease_until=lease,
                    worker=self.worker,
                    updated_at=now,
                )
                .returning(t)
            ).first()
        if row is None:
            return None
        return Claimed(row.id, row.attempts, row)

    def heartbeat(self, claim: Claimed, bytes_done: int | None = None) -> None:
        t = s.job_tasks
        values: dict[str, Any] = {
            "lease_until": sa.func.now() + dt.timedelta(seconds=self.settings.task_lease_sec),
            "updated_at": sa.func.now(),
        }
        if bytes_done is not None:
            values["bytes_done"] = bytes_done
        with self.dst.engine.begin() as conn:
            alive = conn.execute(
                sa.update(t)
                .where(
                    t.c.id == claim.id,
                    t.c.state == "RUNNING",
                    t.c.attempts == claim.attempt,
                    sa.select(s.jobs.c.id)
                    .where(
                        s.jobs.c.id == self.job_id,
                        s.jobs.c.cancel_requested.is_(False),
                        s.jobs.c.state.in_(["SNAPSHOTING", "REPLICATING"]),
                    )
                    .exists(),
                )
                .values(**values)
            ).rowcount
        if alive != 1:
            raise LeaseLost(f"task {claim.id} attempt {claim.attempt} no longer owns its lease")

    def complete(self, conn: sa.Connection, claim: Claimed, **values: Any) -> None:
        t = s.job_tasks
        done = conn.execute(
            sa.update(t)
            .where(t.c.id == claim.id, t.c.state == "RUNNING", t.c.attempts == claim.attempt)
            .values(state="DONE", lease_until=None, error=None, updated_at=sa.func.now(), **values)
        ).rowcount
        if done != 1:
            raise LeaseLost(f"task {claim.id} attempt {claim.attempt} was taken over")

    def fail(self, claim: Claimed, exc: BaseException) -> str:
        """Record a failed attempt: back to PENDING with a backoff, or FAILED for good."""
        retry = is_retryable(exc) and not self.policy.gives_up(claim.attempt)
        message = f"{type(exc).__name__}: {exc}"[:2000]
        t = s.job_tasks
        values: dict[str, Any] = {
            "error": message,
            "lease_until": None,
            "updated_at": sa.func.now(),
        }
        if retry:
            delay = self.policy.delay(claim.attempt)
            values |= {
                "state": "PENDING",
                "next_attempt_at": sa.func.now() + dt.timedelta(seconds=delay),
            }
        else:
            values["state"] = "FAILED"
        with self.dst.engine.begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.id == claim.id, t.c.state == "RUNNING", t.c.attempts == claim.attempt)
                .values(**values)
            )
        log.warning(
            "task %s attempt %s failed (%s): %s",
            claim.id,
            claim.attempt,
            "will retry" if retry else "giving up",
            message,
        )
        return "retried" if retry else "failed"

    def _job(self) -> Any:
        with self.dst.engine.connect() as conn:
            return conn.execute(sa.select(s.jobs).where(s.jobs.c.id == self.job_id)).one()

    def run(
        self, kind: str, task_ids: list[int], progress: ProgressFn | None = None
    ) -> BatchOutcome:
        job = self._job()
        job_state = "SNAPSHOTING" if kind == "SNAPSHOT" else "REPLICATING"
        out = BatchOutcome()
        for task_id in task_ids:
            claim = self.claim(task_id, kind, job_state)
            if claim is None:
                out.skipped += 1
                continue
            try:
                if kind == "SNAPSHOT":
                    self._snapshot(job, claim)
                else:
                    out.bytes += self._apply(job, claim, out, progress)
                out.done += 1
            except LeaseLost as exc:
                log.info("%s", exc)
                out.skipped += 1
            except Exception as exc:
                if self.fail(claim, exc) == "retried":
                    out.retried += 1
                else:
                    out.failed += 1
        return out

    # -- snapshot --------------------------------------------------------------------------
    def _snapshot(self, job: Any, claim: Claimed) -> None:
        task = claim.row
        with self.dst.engine.connect() as conn:
            plan = conn.execute(
                sa.select(s.job_partitions).where(
                    s.job_partitions.c.job_id == self.job_id,
                    s.job_partitions.c.partition_name == task.partition_name,
                )
            ).one()
        src = Cluster(self.settings, job.src_cluster)
        with src.engine.begin() as conn:
            part = conn.execute(
                sa.select(s.partitions).where(s.partitions.c.id == plan.src_partition_id)
            ).first()
            if (
                part is None
                or part.version_epoch != plan.src_epoch
                or part.visible_version < plan.src_version
            ):
                raise SourceDataGone(
                    f"source partition {task.partition_name!r} was dropped or overwritten "
                    "during the job; submit the replication again"
                )
            # FOR SHARE keeps compaction and GC off these rows until the holds are in place.
            rows = conn.execute(
                sa.select(s.rowsets)
                .where(s.rowsets.c.tablet_id == task.src_tablet_id, s.rowsets.c.state == "VISIBLE")
                .order_by(s.rowsets.c.start_version)
                .with_for_update(read=True)
            ).all()
            rowsets = [model.rowset_from_row(r._mapping) for r in rows]
            chosen, incremental = choose_rowsets(
                rowsets, plan.dst_version, plan.src_version, plan.mode == "INCREMENTAL"
            )
            holds.place(
                conn,
                [r.id for r in chosen],
                hold_owner(self.dst.name, self.job_id),
                self.settings.hold_lease_sec,
            )
            backends = model.list_backends(conn)
        candidates = [int(b) for b in task.src_backend_ids]
        good, fallback = order_sources(chosen, [backends[b] for b in candidates])
        manifest = {
            "incremental": incremental,
            "src_version": plan.src_version,
            "src_backend_ids": [b.id for b in good],
            "fallback_backend_ids": [b.id for b in fallback],
            "src_roots": {str(b.id): b.storage_root for b in backends.values()},
            "rowsets": [
                {
                    "id": r.id,
                    "start": r.start_version,
                    "end": r.end_version,
                    "num_rows": r.num_rows,
                    "data_size": r.data_size,
                    "files": list(r.files),
                }
                for r in chosen
            ],
        }
        total = sum(int(f["size"]) for r in chosen for f in r.files)
        try:
            with self.dst.engine.begin() as conn:
                self.complete(
                    conn, claim, manifest=manifest, incremental=incremental, bytes_total=total
                )
        finally:
            # The coordinator releases holds when the job ends; holds placed after that
            # release would pin files until they expire, so a late snapshot drops them itself.
            if self._job().state in ("COMMITTED", "ABORTED"):
                with src.engine.begin() as conn:
                    holds.release(conn, hold_owner(self.dst.name, self.job_id))

    # -- apply -----------------------------------------------------------------------------
    def _apply(
        self, job: Any, claim: Claimed, out: BatchOutcome, progress: ProgressFn | None
    ) -> int:
        task = claim.row
        manifest = task.manifest
        with self.dst.engine.connect() as conn:
            backend = conn.execute(
                sa.select(s.backends).where(s.backends.c.id == task.dst_backend_id)
            ).one()
        target = storage_for(backend.storage_root)
        target.check()
        sources = [
            (int(b), storage_for(manifest["src_roots"][str(b)])) for b in task.src_backend_ids
        ]
        copied = 0
        beat = _Beat(self, claim, progress, out.bytes, task.bytes_total)
        new_rows = []
        for rs in manifest["rowsets"]:
            dst_rowset = uuid.uuid5(ROWSET_NS, f"{self.job_id}/{task.dst_tablet_id}/{rs['id']}").hex
            for f in rs["files"]:
                meta = FileMeta.from_json(f)
                final = f"{rowset_dir(task.dst_tablet_id, dst_rowset)}/{meta.name}"
                if not _verified(target, final, meta):
                    staged = f"{staging_dir(job.txn_id)}/{dst_rowset}/{meta.name}"
                    src_path = f"{rowset_dir(task.src_tablet_id, rs['id'])}/{meta.name}"
                    copied += fetch(sources, target, src_path, staged, meta, beat)
                    target.rename(staged, final)
                beat.file_done(meta.size)
            new_rows.append(
                {
                    "id": dst_rowset,
                    "tablet_id": task.dst_tablet_id,
                    "txn_id": job.txn_id,
                    "start_version": rs["start"],
                    "end_version": rs["end"],
                    "state": "PENDING",
                    "num_rows": rs["num_rows"],
                    "data_size": rs["data_size"],
                    "files": rs["files"],
                }
            )
        with self.dst.engine.begin() as conn:
            open_txn = conn.execute(
                sa.select(s.transactions.c.state)
                .where(s.transactions.c.id == job.txn_id)
                .with_for_update(read=True)
            ).scalar_one()
            if open_txn != "PREPARE":
                raise LeaseLost(
                    f"job {self.job_id}'s transaction is {open_txn}; dropping the apply"
                )
            if new_rows:
                conn.execute(pg_insert(s.rowsets).values(new_rows).on_conflict_do_nothing())
            self.complete(conn, claim, bytes_done=beat.completed)
        if progress:
            progress(out.bytes + beat.completed, task.bytes_total)
        return copied


def choose_rowsets(
    rowsets: list[model.RowsetInfo], dst_version: int, src_version: int, want_incremental: bool
) -> tuple[list[model.RowsetInfo], bool]:
    """The rowsets that bring a tablet from ``dst_version`` to ``src_version``.

    Incremental when the visible rowsets still hold a chain covering exactly
    ``(dst_version, src_version]``; otherwise every visible rowset up to ``src_version`` (full).
    """
    upto = [r for r in rowsets if (r.end_version or 0) <= src_version]
    straddling = [
        r for r in rowsets if (r.start_version or 0) <= src_version < (r.end_version or 0)
    ]
    if straddling:
        raise SourceDataGone(
            f"source compaction merged versions across {src_version} during the job "
            f"(rowset {straddling[0].id} covers [{straddling[0].start_version}, "
            f"{straddling[0].end_version}]); submit the replication again"
        )
    if want_incremental:
        chain = [r for r in upto if (r.start_version or 0) > dst_version]
        expected = dst_version + 1
        ok = True
        for r in chain:
            if r.start_version != expected:
                ok = False
                break
            expected = (r.end_version or 0) + 1
        crosses = any((r.start_version or 0) <= dst_version < (r.end_version or 0) for r in upto)
        if ok and not crosses and expected == src_version + 1:
            return chain, True
    return upto, False


def order_sources(
    rowsets: list[model.RowsetInfo], candidates: list[model.Backend]
) -> tuple[list[model.Backend], list[model.Backend]]:
    """(replicas that hold every file, by size; the others as a last resort). Raises if no
    replica holds them all."""
    good: list[model.Backend] = []
    bad: list[model.Backend] = []
    unreachable: list[model.Backend] = []
    for backend in candidates:
        storage = storage_for(backend.storage_root)
        try:
            storage.check()
        except StorageUnavailable:
            unreachable.append(backend)
            continue
        complete = all(
            storage.size(f"{rowset_dir(r.tablet_id, r.id)}/{f['name']}") == int(f["size"])
            for r in rowsets
            for f in r.files
        )
        (good if complete else bad).append(backend)
    if not good and unreachable:
        # A storage root that cannot be reached may come back: worth another attempt.
        raise StorageUnavailable(
            f"source replicas {', '.join(b.name for b in unreachable)} cannot be reached and "
            f"{', '.join(b.name for b in bad) or 'no other'} lacks files of the snapshot"
        )
    if not good:
        raise SourceDataGone(
            "no source replica holds every file of the snapshot "
            f"(tried {', '.join(b.name for b in candidates)})"
        )
    return good, bad + unreachable


def _verified(storage: StorageClient, path: str, meta: FileMeta) -> bool:
    if storage.size(path) != meta.size:
        return False
    with storage.open_read(path) as f:
        return checksum_stream(f) == (meta.size, meta.checksum)


def fetch(
    sources: list[tuple[int, StorageClient]],
    target: StorageClient,
    src_path: str,
    staged: str,
    meta: FileMeta,
    on_progress: Callable[[int], None],
) -> int:
    """Copy one file, verifying size and checksum in the same pass, trying each source replica.

    A checksum mismatch on every replica is tried once more (bytes can be damaged in flight);
    if it repeats on every replica the data itself is bad and retrying cannot help.
    """
    errors: list[str] = []
    for _attempt in range(2):
        mismatches = 0
        for backend_id, source in sources:
            try:
                with source.open_read(src_path) as raw, target.open_write(staged) as fout:
                    fin = _Corrupting(raw) if faults.fire("transfer.corrupt") else raw
                    return copy_verified(fin, fout, meta, on_progress=on_progress)  # type: ignore[arg-type]
            except FileNotFoundError:
                errors.append(f"backend {backend_id}: missing")
            except ChecksumMismatch as exc:
                mismatches += 1
                errors.append(f"backend {backend_id}: {exc}")
            except StorageUnavailable as exc:
                errors.append(f"backend {backend_id}: {exc}")
            except BaseException:
                target.delete_tree(staged)
                raise
            target.delete_tree(staged)
        if mismatches < len(sources):
            break
    detail = "; ".join(errors)
    if all("missing" in e for e in errors):
        raise SourceDataGone(
            f"{meta.name} of {src_path} is gone from every source replica: {detail}"
        )
    if sum("checksum" in e for e in errors) >= 2 * len(sources):
        raise CorruptSource(
            f"every source replica of {src_path} fails its checksum, twice: {detail}"
        )
    if any("checksum" in e for e in errors):
        raise ChecksumMismatch(f"no source replica delivered {src_path} intact: {detail}")
    raise StorageUnavailable(f"no source replica of {src_path} could be read: {detail}")


class _Corrupting:
    """A reader that flips one byte of the first chunk: the ``transfer.corrupt`` failpoint."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.done = False

    def readinto(self, view: memoryview) -> int:
        n = int(self.raw.readinto(view))
        if n and not self.done:
            view[0] = view[0] ^ 0xFF
            self.done = True
        return n
