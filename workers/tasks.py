"""Task entry points. Each receives ids only, calls into ``app``, and nudges the coordinator."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from celery import Task

from app import broker
from app.catalog.engine import discover_clusters
from app.cluster import Cluster
from app.queues import queue_name
from app.replication import jobs
from app.replication.coordinator import Coordinator, Message
from app.replication.runner import TaskRunner
from app.replication.sweep import Sweep
from app.replication.taskrows import TaskKind
from app.replication.work import run_cleanup, run_message
from app.storage import gc as storage_gc
from app.sync import tick as sync
from app.sync.verify import CheckRequest, check_files
from workers.celery_app import celery, settings
from workers.nudge import nudge, nudge_many, nudge_soon, tick_started

log = logging.getLogger(__name__)

_clusters_cache: tuple[float, list[str]] = (0.0, [])

# The beat finds the jobs with something to do (Coordinator.due_jobs, one query per cluster)
# and a slice of the other active jobs in turn (sweep.py), so that a job whose need due_jobs
# does not foresee waits about FULL_SWEEP_SEC at most; it ticks none of them itself but sends
# each a tick message (workers/nudge.py: at most one waits per job), which the coordinator's
# processes share. A beat that ticked its jobs one after another grew with them: 8.2 s over 144
# jobs (bench concurrency), during which no other beat ran.
FULL_SWEEP_SEC = 30.0
_sweeps: dict[str, Sweep] = {}


def clusters() -> list[str]:
    global _clusters_cache
    at, names = _clusters_cache
    if time.monotonic() - at > 10:
        chosen = [c.strip() for c in settings.coordinator_clusters.split(",") if c.strip()]
        names = chosen or discover_clusters(settings.dsn_template, list(settings.clusters))
        _clusters_cache = (time.monotonic(), names)
    return names


def send(messages: list[Message]) -> None:
    for m in messages:
        celery.send_task(
            m.task,
            kwargs=_kwargs(m),
            queue=m.queue,
            routing_key=m.queue,
        )


def _kwargs(m: Message) -> dict[str, Any]:
    if m.kind is None:
        return {"cluster": m.cluster, "job_id": m.job_id, "backend": m.backend}
    return {"cluster": m.cluster, "job_id": m.job_id, "task_ids": list(m.task_ids)}


@celery.task(name="replication.tick", bind=True, acks_late=False, ignore_result=True)
def tick(
    self: Task,
    cluster: str | None = None,
    job_id: int | None = None,
    job_ids: list[int] | None = None,
) -> dict[str, Any]:
    """Advance one job (a nudge) or a few (the beat's chunks), or send a tick to every job that
    needs one (the beat itself)."""
    if cluster is None:
        return _beat()
    ids = [job_id] if job_id is not None else list(job_ids or [])
    coordinator = Coordinator(settings, actor=self.request.hostname or "coordinator")
    advanced, took = 0, []
    for jid in ids:
        t0 = time.perf_counter()
        tick_started(cluster, jid)
        try:
            result = coordinator.tick(cluster, jid)
        except Exception as exc:
            log.warning("tick of job %s:%s failed: %s", cluster, jid, exc)
            continue
        send(result.messages)
        advanced += bool(result.messages) or result.finished
        took.append(round((time.perf_counter() - t0) * 1000, 1))
    # A chunk says how long each of its jobs took (bench/run.py reads it from the log).
    return {"jobs": len(ids), "advanced": advanced} | ({"ms": took} if job_id is None else {})


def _beat() -> dict[str, Any]:
    """The beat: one query per cluster names the jobs to tick; they are sent tick messages."""
    coordinator = Coordinator(settings, actor="beat")
    found = nudged = open_jobs = 0
    for name in clusters():
        try:
            due = coordinator.due_jobs(name)
            active = coordinator.active_jobs(name)
            more = _sweeps.setdefault(name, Sweep(FULL_SWEEP_SEC)).slice(active, time.monotonic())
        except Exception as exc:
            log.warning("cannot list jobs of cluster %s: %s", name, exc)
            continue
        open_jobs += len(active)
        chosen = list(dict.fromkeys([*due, *more]))
        found += len(chosen)
        nudged += nudge_many(name, chosen)
    # The beat's look at the sync policies rides on this tick rather than a beat message of
    # its own: a second message a second made the coordinator twice as likely to hold an
    # unacknowledged one when the broker goes away, which kombu's Redis transport can fail
    # to restore (AttributeError on the torn-down connection: the worker exits).
    sync_all()
    return {"sweep": found, "open": open_jobs, "nudged": nudged}


def advance_here(cluster: str, job_id: int, actor: str) -> None:
    """Tick the job in this process: the task that ends a phase (the last snapshot, the last
    apply) or fails for good moves the job on itself — dispatches the applies, commits, aborts —
    instead of a hop through the coordinator's queue (a one-tablet job took two such hops).
    A tick is safe anywhere: it locks the job row and every change is a compare-and-set. When a
    coordinator holds the row right now (its tick may have counted the tasks before this one
    finished), or the tick fails here, the coordinator is nudged as before."""
    try:
        result = Coordinator(settings, actor=actor).tick(cluster, job_id)
    except Exception as exc:
        log.warning(
            "tick of job %s:%s here failed, nudging the coordinator: %s", cluster, job_id, exc
        )
        nudge(cluster, job_id)
        return
    send(result.messages)
    if result.state is None:
        nudge(cluster, job_id)


def _run(
    task: Task, kind: TaskKind, cluster: str, job_id: int, task_ids: list[int]
) -> dict[str, Any]:
    runner = TaskRunner(settings, cluster, job_id, worker=task.request.hostname or "worker")

    def progress(done: int, total: int) -> None:
        # At most about once a second (the copy loop's heartbeat): Flower shows the bytes.
        task.send_event("task-progress", job=f"{cluster}:{job_id}", bytes_done=done, bytes=total)

    try:
        outcome = run_message(runner, kind, task_ids, progress)
    except BaseException:
        nudge(cluster, job_id)
        raise
    # Wake the coordinator when it has something to decide: the phase is complete or a task
    # failed for good. Snapshots taken are something to decide too (their applies can start),
    # but at most every NUDGE_EVERY_SEC per job (nudge_soon): a tick per snapshot message made
    # apply messages of one or two tablets, and waiting for the beat (every second) or for the
    # whole phase left the target idle for most of the snapshot phase (bench.transfer: applies
    # of 12 of 64 tablets started before the last snapshot; now most of them).
    try:
        phase_done = runner.phase_done(kind)
    except Exception as exc:  # the work is recorded; the beat tick will notice either way
        log.warning("cannot tell whether job %s:%s finished its phase: %s", cluster, job_id, exc)
        phase_done = True
    if outcome.failed or phase_done:
        advance_here(cluster, job_id, actor=task.request.hostname or "worker")
    elif kind is TaskKind.SNAPSHOT and outcome.done:
        nudge_soon(cluster, job_id)
    return {"job": f"{cluster}:{job_id}", **outcome.__dict__}


@celery.task(name="replication.snapshot", bind=True, ignore_result=True)
def snapshot(self: Task, cluster: str, job_id: int, task_ids: list[int]) -> dict[str, Any]:
    """Choose rowsets, place holds and write manifests for target tablets (source backend)."""
    return _run(self, TaskKind.SNAPSHOT, cluster, job_id, task_ids)


@celery.task(name="replication.apply", bind=True, ignore_result=True)
def apply(self: Task, cluster: str, job_id: int, task_ids: list[int]) -> dict[str, Any]:
    """Fetch, verify, stage and install a manifest's files on a target replica (target backend)."""
    return _run(self, TaskKind.APPLY, cluster, job_id, task_ids)


@celery.task(name="backup.snapshot", bind=True, ignore_result=True)
def backup_snapshot(self: Task, cluster: str, job_id: int, task_ids: list[int]) -> dict[str, Any]:
    """A backup's snapshots: choose rowsets and place holds, as a replication's (source)."""
    return _run(self, TaskKind.SNAPSHOT, cluster, job_id, task_ids)


@celery.task(name="backup.upload", bind=True, ignore_result=True)
def backup_upload(self: Task, cluster: str, job_id: int, task_ids: list[int]) -> dict[str, Any]:
    """Upload the objects a backup's repository lacks (the source backend holding the files)."""
    return _run(self, TaskKind.APPLY, cluster, job_id, task_ids)


@celery.task(name="restore.snapshot", bind=True, ignore_result=True)
def restore_snapshot(self: Task, cluster: str, job_id: int, task_ids: list[int]) -> dict[str, Any]:
    """A restore's snapshots: ask the repository for the manifest's objects (target backend)."""
    return _run(self, TaskKind.SNAPSHOT, cluster, job_id, task_ids)


@celery.task(name="restore.apply", bind=True, ignore_result=True)
def restore_apply(self: Task, cluster: str, job_id: int, task_ids: list[int]) -> dict[str, Any]:
    """Fetch a restore's objects from the repository, verified, onto a target replica."""
    return _run(self, TaskKind.APPLY, cluster, job_id, task_ids)


@celery.task(name="replication.cleanup", ignore_result=True)
def cleanup(cluster: str, job_id: int, backend: str) -> dict[str, Any]:
    """Remove what an aborted job left on this target backend (runs on its host)."""
    return {
        "job": f"{cluster}:{job_id}",
        "removed": run_cleanup(settings, cluster, backend, job_id),
    }


def sync_all() -> dict[str, Any]:
    """The beat's look at every sync policy: jobs for what moved (started here at once), and
    file checks after commits, sent to the target backends that hold the files."""
    started: dict[str, list[int]] = {}
    for name in clusters():
        try:
            ids = _sync_beat(name)
        except Exception as exc:
            log.warning("sync of cluster %s failed: %s", name, exc)
            continue
        if ids:
            started[name] = ids
    return {"started": started}


def _sync_beat(cluster: str) -> list[int]:
    beat = sync.tick_cluster(settings, cluster)
    for job_id in beat.started:
        advance_here(cluster, job_id, actor="sync")
    for check in beat.checks:
        queue = queue_name(check.cluster, check.backend)
        celery.send_task(
            "sync.check", kwargs=dataclasses.asdict(check), queue=queue, routing_key=queue
        )
    return beat.started


@celery.task(name="sync.check", ignore_result=True)
def sync_check(**request: Any) -> dict[str, Any]:
    """Re-hash a synced table's files on this backend's host (app/sync/verify.py); the answer
    that completes a check acts on it here at once (a repair starts) rather than at the next
    beat. A beat running meanwhile holds the sync lock: then the next beat acts."""
    found = check_files(settings, CheckRequest(**request))
    try:
        _sync_beat(request["cluster"])
    except Exception as exc:  # the beat covers for it
        log.warning("sync beat after a check of %s failed: %s", request["cluster"], exc)
    return found


@celery.task(name="maintenance.gc", ignore_result=True)
def gc() -> dict[str, Any]:
    """The beat's maintenance of every served cluster: purge old finished jobs here, and send
    each backend's queue a ``maintenance.gc_backend``: files are deleted on the host that holds
    them (this coordinator may see no storage root at all)."""
    report: dict[str, Any] = {}
    # Only the clusters this coordinator is told to serve (coordinator_clusters, or those named
    # in the settings), never every catalog discovery finds: GC deletes files.
    served = [c.strip() for c in settings.coordinator_clusters.split(",") if c.strip()]
    for name in served or list(settings.clusters):
        try:
            cluster = Cluster(settings, name)
            catalog = storage_gc.collect_catalog(cluster)
            sent = []
            for backend in storage_gc.backend_names(cluster):
                if _gc_due(name, backend):
                    celery.send_task(
                        "maintenance.gc_backend",
                        kwargs={"cluster": name, "backend": backend},
                        queue=queue_name(name, backend),
                        routing_key=queue_name(name, backend),
                    )
                    sent.append(backend)
            purged = jobs.purge_history(settings, name)
            report[name] = {"purged_jobs": purged, **catalog.__dict__, "backend_runs": sent}
        except Exception as exc:
            log.warning("maintenance of %s failed: %s", name, exc)
    return report


# At most one GC message waits in a backend's queue: a backend with no worker (stopped, or
# gone without `backend remove`) must not pile them up. Cleared when the run ends.
GC_PENDING_SEC = 3600


def _gc_key(cluster: str, backend: str) -> str:
    return f"replicator:gc-pending:{queue_name(cluster, backend)}"


def _gc_due(cluster: str, backend: str) -> bool:
    return broker.claim_key(settings, _gc_key(cluster, backend), GC_PENDING_SEC)


@celery.task(name="maintenance.gc_backend", ignore_result=True)
def gc_backend(cluster: str, backend: str) -> dict[str, Any]:
    """This backend's share of GC, on its own host: stale rowsets, orphans, staging."""
    try:
        return storage_gc.collect(Cluster(settings, cluster), backend=backend).__dict__
    finally:
        broker.release_key(settings, _gc_key(cluster, backend))
