"""Snapshot and apply work, as run by backend workers.

Each task row is claimed with a compare-and-set (state, lease, attempt + 1) before any work, and
finished with a compare-and-set on the same attempt, so a worker whose lease was taken over can
never complete someone else's attempt. Work is idempotent: a rerun finishes what is missing and
redoes nothing that is verified. A message carries many tasks; they are claimed with one
statement and their results committed in chunks.
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
    LeaseLost,
    SourceDataGone,
    StorageUnavailable,
)
from app.replication.finish import hold_owner
from app.retry import RetryPolicy, is_retryable
from app.storage import holds
from app.storage.checksum import FileMeta, copy_verified
from app.storage.client import StorageClient, rowset_dir, staging_dir, storage_for
from app.storage.rowsets import verify_file

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
    """Called for every chunk copied: keeps the bandwidth cap and, about once a second, renews
    the leases of the whole batch, records the bytes of the task in flight and reports progress
    (the renewal is also how a worker notices that its job was cancelled)."""

    def __init__(
        self, runner: TaskRunner, claims: list[Claimed], progress: ProgressFn | None
    ) -> None:
        self.runner, self.claims, self.progress = runner, claims, progress
        self.total = sum(int(c.row.bytes_total) for c in claims)
        self.throttle = Throttle(runner.settings.transfer_bandwidth_mb_per_sec)
        self.batch_done = 0  # bytes of finished tasks in this batch
        self.completed = 0  # bytes of the current task's installed files
        self.current = 0  # bytes of the file in flight
        self.claim: Claimed | None = None
        self.last = time.monotonic()

    def start(self, claim: Claimed) -> None:
        self.batch_done += self.completed
        self.claim, self.completed, self.current = claim, 0, 0

    def __call__(self, n: int) -> None:
        self.throttle(n)
        self.current += n
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


@dataclass
class _Applied:
    claim: Claimed
    rowsets: list[dict[str, Any]]
    bytes_done: int


FLUSH_EVERY_TASKS = 64
FLUSH_EVERY_SEC = 1.0
ACTIVE_JOB_STATES = ("SNAPSHOTING", "REPLICATING")


class TaskRunner:
    """Runs one message's tasks: one claim for the batch, then per-tablet work whose results
    are committed together in chunks, so a message of many small tablets costs a handful of
    Postgres round trips, not several per tablet."""

    def __init__(self, settings: Settings, cluster: str, job_id: int, worker: str) -> None:
        self.settings = settings
        self.dst = Cluster(settings, cluster)
        self.job_id = job_id
        self.worker = worker
        self.policy = RetryPolicy(maximum_attempts=settings.task_max_attempts)

    # -- claims and leases -----------------------------------------------------------------
    def claim(self, task_ids: list[int], kind: str, job_state: str) -> list[Claimed]:
        """Claim every task of ``task_ids`` that is free: compare-and-set on its state (or an
        expired lease), attempt + 1, a fresh lease; only while the job is in ``job_state``."""
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
            rows = conn.execute(
                sa.update(t)
                .where(
                    t.c.id.in_(task_ids),
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
            ).all()
        return sorted((Claimed(r.id, r.attempts, r) for r in rows), key=lambda c: c.id)

    def renew(
        self, claims: list[Claimed], current: Claimed | None = None, bytes_done: int | None = None
    ) -> None:
        """Extend the leases of the batch's unfinished tasks; LeaseLost if none is ours any more
        or the job has ended or been cancelled."""
        t = s.job_tasks
        job_alive = (
            sa.select(s.jobs.c.id)
            .where(
                s.jobs.c.id == self.job_id,
                s.jobs.c.cancel_requested.is_(False),
                s.jobs.c.state.in_(ACTIVE_JOB_STATES),
            )
            .exists()
        )
        with self.dst.engine.begin() as conn:
            alive = conn.execute(
                sa.update(t)
                .where(
                    t.c.id.in_([c.id for c in claims]),
                    t.c.state == "RUNNING",
                    t.c.worker == self.worker,
                    job_alive,
                )
                .values(
                    lease_until=sa.func.now() + dt.timedelta(seconds=self.settings.task_lease_sec),
                    updated_at=sa.func.now(),
                )
            ).rowcount
            if current is not None and bytes_done is not None:
                conn.execute(
                    sa.update(t)
                    .where(t.c.id == current.id, t.c.attempts == current.attempt)
                    .values(bytes_done=bytes_done)
                )
        if not alive:
            raise LeaseLost(f"job {self.job_id}: this worker no longer owns its tasks")

    def _complete(self, conn: sa.Connection, rows: list[dict[str, Any]], **columns: Any) -> int:
        """Mark claimed tasks DONE, each only if its attempt is still the one we claimed."""
        if not rows:
            return 0
        t = s.job_tasks
        return int(
            conn.execute(
                sa.update(t)
                .where(
                    t.c.id == sa.bindparam("task_id"),
                    t.c.attempts == sa.bindparam("attempt"),
                    t.c.state == "RUNNING",
                )
                .values(
                    state="DONE",
                    lease_until=None,
                    error=None,
                    updated_at=sa.func.now(),
                    **{k: sa.bindparam(k, type_=v) for k, v in columns.items()},
                )
                .execution_options(preserve_rowcount=True),
                rows,
            ).rowcount
        )

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

    def _fail_all(self, claims: list[Claimed], exc: BaseException, out: BatchOutcome) -> None:
        for claim in claims:
            if self.fail(claim, exc) == "retried":
                out.retried += 1
            else:
                out.failed += 1

    def _job(self) -> Any:
        with self.dst.engine.connect() as conn:
            return conn.execute(sa.select(s.jobs).where(s.jobs.c.id == self.job_id)).one()

    def open_tasks(self, kind: str) -> int:
        """Tasks of ``kind`` not yet DONE: zero means the phase is complete."""
        t = s.job_tasks
        with self.dst.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        t.c.job_id == self.job_id, t.c.kind == kind, t.c.state != "DONE"
                    )
                ).scalar_one()
            )

    def run(
        self, kind: str, task_ids: list[int], progress: ProgressFn | None = None
    ) -> BatchOutcome:
        job = self._job()
        out = BatchOutcome()
        job_state = "SNAPSHOTING" if kind == "SNAPSHOT" else "REPLICATING"
        claims = self.claim(task_ids, kind, job_state)
        out.skipped = len(task_ids) - len(claims)
        if not claims:
            return out
        try:
            if kind == "SNAPSHOT":
                self._snapshots(job, claims, out)
            else:
                self._applies(job, claims, out, progress)
        except LeaseLost as exc:
            log.info("%s", exc)
        return out

    # -- snapshot --------------------------------------------------------------------------
    def _snapshots(self, job: Any, claims: list[Claimed], out: BatchOutcome) -> None:
        with self.dst.engine.connect() as conn:
            plans = {
                p.partition_name: p
                for p in conn.execute(
                    sa.select(s.job_partitions).where(s.job_partitions.c.job_id == self.job_id)
                )
            }
        src = Cluster(self.settings, job.src_cluster)
        owner = hold_owner(self.dst.name, self.job_id)
        done: list[dict[str, Any]] = []
        failed: list[tuple[Claimed, Exception]] = []
        try:
            with src.engine.begin() as conn:
                parts = {
                    p.id: p
                    for p in conn.execute(
                        sa.select(s.partitions).where(
                            s.partitions.c.id.in_({p.src_partition_id for p in plans.values()})
                        )
                    )
                }
                # FOR SHARE keeps compaction and GC off these rows until the holds are placed.
                by_tablet: dict[int, list[model.RowsetInfo]] = {}
                for r in conn.execute(
                    sa.select(s.rowsets)
                    .where(
                        s.rowsets.c.tablet_id.in_({c.row.src_tablet_id for c in claims}),
                        s.rowsets.c.state == "VISIBLE",
                    )
                    .order_by(s.rowsets.c.tablet_id, s.rowsets.c.start_version)
                    .with_for_update(read=True)
                ):
                    by_tablet.setdefault(r.tablet_id, []).append(model.rowset_from_row(r._mapping))
                backends = model.list_backends(conn)
                held: list[str] = []
                for claim in claims:
                    try:
                        plan = plans[claim.row.partition_name]
                        manifest = _manifest(claim.row, plan, parts, by_tablet, backends)
                    except Exception as exc:  # recorded on that task's row
                        failed.append((claim, exc))
                        continue
                    held += [r["id"] for r in manifest["rowsets"]]
                    done.append(
                        {
                            "task_id": claim.id,
                            "attempt": claim.attempt,
                            "manifest": manifest,
                            "incremental": manifest["incremental"],
                            "bytes_total": manifest["bytes"],
                        }
                    )
                # A hold must outlive the job's transaction, which aborts at its timeout and then
                # releases it; the lease only matters if nothing is left to release it.
                timeout = job.options.get("timeout_sec") or (
                    self.settings.replication_transaction_timeout_sec
                )
                holds.place(conn, held, owner, max(self.settings.hold_lease_sec, int(timeout)))
            with self.dst.engine.begin() as conn:
                out.done += self._complete(
                    conn,
                    done,
                    manifest=s.job_tasks.c.manifest.type,
                    incremental=sa.Boolean(),
                    bytes_total=sa.BigInteger(),
                )
        except Exception as exc:  # the whole batch failed (e.g. Postgres down)
            failed_ids = {c.id for c, _ in failed}
            self._fail_all([c for c in claims if c.id not in failed_ids], exc, out)
        finally:
            # The coordinator releases holds when the job ends; holds placed after that
            # release would pin files until they expire, so a late snapshot drops them itself.
            if self._job().state in ("COMMITTED", "ABORTED"):
                with src.engine.begin() as conn:
                    holds.release(conn, owner)
        for claim, error in failed:
            self._fail_all([claim], error, out)

    # -- apply -----------------------------------------------------------------------------
    def _applies(
        self, job: Any, claims: list[Claimed], out: BatchOutcome, progress: ProgressFn | None
    ) -> None:
        with self.dst.engine.connect() as conn:
            backends = model.list_backends(conn)
        beat = _Beat(self, claims, progress)
        applied: list[_Applied] = []
        last_flush = time.monotonic()
        for claim in claims:
            beat.start(claim)
            try:
                applied.append(self._apply_one(job, claim, backends, beat, out))
            except LeaseLost:
                raise
            except Exception as exc:  # recorded on that task's row
                self._fail_all([claim], exc, out)
            if (
                len(applied) >= FLUSH_EVERY_TASKS
                or time.monotonic() - last_flush >= FLUSH_EVERY_SEC
            ):
                self._flush(job, applied, out)
                applied, last_flush = [], time.monotonic()
        self._flush(job, applied, out)
        beat.report(beat.batch_done + beat.completed)

    def _apply_one(
        self,
        job: Any,
        claim: Claimed,
        backends: dict[int, model.Backend],
        beat: _Beat,
        out: BatchOutcome,
    ) -> _Applied:
        task = claim.row
        manifest = task.manifest
        target = storage_for(backends[task.dst_backend_id].storage_root)
        target.check()
        sources = [
            (int(b), storage_for(manifest["src_roots"][str(b)])) for b in task.src_backend_ids
        ]
        rows = []
        for rs in manifest["rowsets"]:
            dst_rowset = uuid.uuid5(ROWSET_NS, f"{self.job_id}/{task.dst_tablet_id}/{rs['id']}").hex
            for f in rs["files"]:
                meta = FileMeta.from_json(f)
                final = f"{rowset_dir(task.dst_tablet_id, dst_rowset)}/{meta.name}"
                if not verify_file(target, final, meta):
                    # Flat staging: one directory per transaction, not one per rowset.
                    staged = f"{staging_dir(job.txn_id)}/{dst_rowset}.{meta.name}"
                    src_path = f"{rowset_dir(task.src_tablet_id, rs['id'])}/{meta.name}"
                    out.bytes += fetch(sources, target, src_path, staged, meta, beat)
                    target.rename(staged, final)
                beat.file_done(meta.size)
            rows.append(
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
        return _Applied(claim, rows, beat.completed)

    def _flush(self, job: Any, applied: list[_Applied], out: BatchOutcome) -> None:
        """Record installed rowsets (pending, invisible) and mark their tasks DONE, together."""
        if not applied:
            return
        with self.dst.engine.begin() as conn:
            state = conn.execute(
                sa.select(s.transactions.c.state)
                .where(s.transactions.c.id == job.txn_id)
                .with_for_update(read=True)
            ).scalar_one()
            if state != "PREPARE":
                raise LeaseLost(f"job {self.job_id}'s transaction is {state}; dropping the apply")
            rows = [r for a in applied for r in a.rowsets]
            if rows:
                conn.execute(pg_insert(s.rowsets).values(rows).on_conflict_do_nothing())
            out.done += self._complete(
                conn,
                [
                    {"task_id": a.claim.id, "attempt": a.claim.attempt, "bytes_done": a.bytes_done}
                    for a in applied
                ],
                bytes_done=sa.BigInteger(),
            )


def _manifest(
    task: Any,
    plan: Any,
    parts: dict[int, Any],
    by_tablet: dict[int, list[model.RowsetInfo]],
    backends: dict[int, model.Backend],
) -> dict[str, Any]:
    """What one target tablet needs: the chosen rowsets, their files and where to read them."""
    part = parts.get(plan.src_partition_id)
    if (
        part is None
        or part.version_epoch != plan.src_epoch
        or part.visible_version < plan.src_version
    ):
        raise SourceDataGone(
            f"source partition {task.partition_name!r} was dropped or overwritten "
            "during the job; submit the replication again"
        )
    chosen, incremental = choose_rowsets(
        by_tablet.get(task.src_tablet_id, []),
        plan.dst_version,
        plan.src_version,
        plan.mode == "INCREMENTAL",
    )
    good, fallback = order_sources(chosen, [backends[int(b)] for b in task.src_backend_ids])
    return {
        "incremental": incremental,
        "src_version": plan.src_version,
        "bytes": sum(int(f["size"]) for r in chosen for f in r.files),
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
