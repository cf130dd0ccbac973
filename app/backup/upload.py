"""Upload tasks, run on the queue of the source backend that holds a snapshot's files: put
every file the repository lacks there as its content-addressed object.

An object already in the repository is not uploaded again, whoever uploaded it: that is what
makes a backup after a small change cheap, and a backup rerun after a crash upload only what is
missing. Every byte is hashed on its way and the object is published only whole and verified
(app/backup/repo.py). A batch's files go up several at a time (UPLOAD_THREADS): one stream at a
time left most of a link to an object store idle (bench/backup.py).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from app.backup.repo import Repository
from app.catalog import model
from app.errors import LeaseLost
from app.replication import taskrows
from app.replication.runner import BatchOutcome, ProgressFn, TaskRunner
from app.replication.sources import link_budget
from app.replication.taskrows import Claimed
from app.storage.checksum import FileMeta
from app.storage.client import StorageClient, rowset_dir, storage_for
from app.transfer import names

UPLOAD_THREADS = 4
PROGRESS_EVERY_SEC = 1.0
# The bandwidth budget of a cluster's backups is its own link, as a replication's is per pair.
REPOSITORY_LINK = "repository"


class _Beat:
    """Counts the bytes of every upload thread; about once a second renews the batch's leases
    (how a busy worker hears of a cancel) and reports progress."""

    def __init__(
        self, runner: TaskRunner, job: Any, claims: list[Claimed], progress: ProgressFn | None
    ) -> None:
        self.runner, self.claims, self.progress = runner, claims, progress
        self.total = sum(int(c.row.bytes_total) for c in claims)
        self.throttle = link_budget(runner.settings, job.src_cluster, REPOSITORY_LINK).take
        self.done = 0  # bytes uploaded or found in the repository
        self.moved = 0  # bytes that passed through this process
        self.lock = threading.Lock()
        self.last = time.monotonic()
        # Set once a renewal finds the job ended or cancelled: no thread starts another file.
        self.stopped = threading.Event()

    def __call__(self, n: int) -> None:
        self.throttle(n)
        with self.lock:
            self.moved += n
        self.add(n)

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            due = time.monotonic() - self.last >= PROGRESS_EVERY_SEC
            if due:
                self.last = time.monotonic()
        if due:
            try:
                self.runner.renew(self.claims)
            except LeaseLost:
                self.stopped.set()
                raise
            if self.progress:
                self.progress(self.done, self.total)


def upload_batch(
    runner: TaskRunner,
    job: Any,
    claims: list[Claimed],
    out: BatchOutcome,
    progress: ProgressFn | None,
) -> None:
    repo = Repository(job.options["repo"])
    with runner.dst.engine.connect() as conn:
        backends = model.list_backends(conn)
    beat = _Beat(runner, job, claims, progress)
    done: list[dict[str, Any]] = []
    try:
        with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
            started = [(c, _start(pool, repo, backends, c, beat)) for c in claims]
            for claim, futures in started:
                try:
                    results = [f.result() for f in futures]
                except LeaseLost:
                    for _, rest in started:
                        for f in rest:
                            f.cancel()
                    raise
                except Exception as exc:  # recorded on that task's row
                    runner.fail_all([claim], exc, out)
                    continue
                uploaded = [n for n in results if n is not None]
                manifest = dict(claim.row.manifest)
                manifest |= {"uploaded_bytes": sum(uploaded), "uploaded_objects": len(uploaded)}
                done.append({"task_id": claim.id, "attempt": claim.attempt, "manifest": manifest,
                             "bytes_done": int(claim.row.bytes_total)})  # fmt: skip
        with runner.dst.engine.begin() as conn:
            out.done += taskrows.complete(
                conn, done, manifest=sa.dialects.postgresql.JSONB(), bytes_done=sa.BigInteger()
            )
    finally:
        out.bytes += beat.moved
    if progress:
        progress(beat.done, beat.total)


def _start(
    pool: ThreadPoolExecutor,
    repo: Repository,
    backends: dict[int, model.Backend],
    claim: Claimed,
    beat: _Beat,
) -> list[Future[int | None]]:
    task = claim.row
    storage = storage_for(backends[task.dst_backend_id].storage_root)
    tablet = names.tablet_id(task.src_tablet_id)
    futures = []
    for rs in task.manifest["rowsets"]:
        base = rowset_dir(tablet, names.rowset_id(rs["id"]))
        for f in rs["files"]:
            meta = FileMeta.from_json(f)
            path = f"{base}/{names.file_name(meta.name)}"
            futures.append(pool.submit(_upload_one, repo, storage, path, meta, beat))
    return futures


def _upload_one(
    repo: Repository, storage: StorageClient, path: str, meta: FileMeta, beat: _Beat
) -> int | None:
    """Upload one file unless the repository has it: the new object's size, or None if it
    was there (the bytes that came through this process are the beat's count)."""
    if beat.stopped.is_set():
        raise LeaseLost("the backup ended or was cancelled; its other uploads stop")
    if repo.has(meta):
        beat.add(meta.size)
        return None
    if repo.put(storage, path, meta, beat) == 0 and meta.size:
        beat.add(meta.size)  # copied inside one store: no byte came through here
    return meta.size
