"""Faults during a backup: the backup finishes, or it is never listed; a rerun uploads only
what is missing; a prune running beside it never leaves a listed backup without its objects."""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa

from app.backup.manifest import Manifest
from app.client import Job
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState
from app.storage.objects import ObjectStorage
from tests.faults.conftest import FaultRig, record
from tests.harness import SeaweedServer, wait_until
from tests.integration.rig import rows

BUCKET = "olaptest"
JOB_TIMEOUT = 180


def _running_upload(rig: FaultRig, job: Job, min_left: int) -> sa.Row[tuple[object, ...]] | None:
    with rig.src.catalog.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT * FROM job_tasks WHERE job_id = :j AND kind = :k AND state = :s "
                "AND bytes_total - bytes_done >= :left ORDER BY id LIMIT 1"
            ),
            {"j": job.id, "k": TaskKind.APPLY, "s": TaskState.RUNNING, "left": min_left},
        ).first()


def _objects(url: str) -> set[str]:
    return {p.rsplit("/", 1)[-1] for p, _ in ObjectStorage(url).walk_files("objects")}


def _the_backup(rig: FaultRig, url: str, job: Job) -> Manifest | None:
    listed = rig.replicator.repository(url).backups().backups
    return next((m for m in listed if m.name == job.record.backup), None)


def _run_again(rig: FaultRig, url: str, table: str) -> tuple[Manifest, set[str]]:
    """The backup run again after a fault: it commits, verifies, and uploads exactly the
    objects the repository lacked (those of the first attempt are not uploaded twice)."""
    before = _objects(url)
    repo = rig.replicator.repository(url)
    again = repo.backup(f"{rig.src.name}:{table}").wait(JOB_TIMEOUT)
    assert again.state is JobState.COMMITTED, again.message
    second = _the_backup(rig, url, again)
    assert second is not None and repo.verify([second.name]).ok
    missing = {k.split("/", 1)[1] for k in second.objects()} - before
    assert second.uploaded_objects == len(missing)
    assert second.uploaded_bytes == sum(int(k.rsplit("-", 1)[1]) for k in missing)
    return second, missing


def test_a_backup_survives_a_killed_worker_and_a_restarted_store_or_is_never_listed(
    rig: FaultRig, seaweed: SeaweedServer
) -> None:
    table = rig.big_table("bk_fault", 600_000)
    url = f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}"
    repo = rig.replicator.repository(url)
    job = repo.backup(f"{rig.src.name}:{table}")
    found: list[sa.Row[tuple[object, ...]]] = []

    def uploading() -> bool:
        row = _running_upload(rig, job, 512 * 1024)
        found.extend([row] if row is not None else [])
        return row is not None

    wait_until(uploading, 60, "an upload in flight", interval=0.05)
    worker = str(found[-1].worker).split("@")[0]
    struck = time.time()
    rig.workers.kill(worker)
    seaweed.restart(down_for=2.0)
    held = "SELECT count(*) FROM job_tasks WHERE worker = :w AND state = :s AND lease_until > now()"
    wait_until(
        lambda: rig.scalar(rig.src, held, w=found[-1].worker, s=TaskState.RUNNING) == 0,
        30, "the killed worker's leases to expire",
    )  # fmt: skip
    rig.workers.restart(worker)
    job.wait(JOB_TIMEOUT)

    assert job.state.final
    first = _the_backup(rig, url, job)
    if job.state is JobState.COMMITTED:
        assert first is not None and repo.verify([first.name]).ok
    else:
        assert first is None, "an aborted backup is listed"
    second, _missing = _run_again(rig, url, table)
    holds = "SELECT count(*) FROM holds WHERE expires_at > now()"
    wait_until(lambda: rig.scalar(rig.src, holds) == 0, 15, "the backups' holds to be released")
    record(
        "k: backup: SIGKILL uploading worker + SeaweedFS restart", job, struck, job.state,
        f"rerun uploaded {second.uploaded_objects} of {len(second.objects())} objects",
    )  # fmt: skip


def test_a_prune_during_a_backup_never_leaves_a_listed_backup_short(rig: FaultRig) -> None:
    """Prune everything but the newest backup, with no grace, over and over while a second
    backup runs: the objects the running backup relies on (uploaded by the first, which prune
    deletes) may vanish under it; it then refuses to commit, and is never listed short."""
    table = rig.big_table("bk_prune", 300_000)
    url = f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}"
    repo = rig.replicator.repository(url)
    assert repo.backup(f"{rig.src.name}:{table}").wait(JOB_TIMEOUT).state is JobState.COMMITTED
    rig.src.load(table, rows(3_000, seed=77), label="bk_prune-2")
    job = repo.backup(f"{rig.src.name}:{table}")
    pruned = 0
    struck = time.time()
    while not job.refresh().state.final:
        pruned += len(repo.prune(keep=1, grace_sec=0).deleted_backups)
        time.sleep(0.2)
    for m in repo.backups().backups:
        assert repo.verify([m.name]).ok, m.name
    if job.state is JobState.ABORTED:
        assert _the_backup(rig, url, job) is None
        assert "not in the repository" in (job.message or ""), job.message
    record("l: backup beside a prune with no grace", job, struck, job.state,
           f"prune deleted {pruned} backups meanwhile")  # fmt: skip


def test_a_cancelled_backup_is_never_listed_and_a_rerun_uploads_only_the_rest(
    rig: FaultRig,
) -> None:
    table = rig.big_table("bk_cancel", 600_000)
    url = f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}"
    repo = rig.replicator.repository(url)
    job = repo.backup(f"{rig.src.name}:{table}")
    done = "SELECT count(*) FROM job_tasks WHERE job_id = :j AND kind = :k AND state = :s"
    wait_until(
        lambda: rig.scalar(rig.src, done, j=job.id, k=TaskKind.APPLY, s=TaskState.DONE) > 0,
        60, "an upload done", interval=0.05,
    )  # fmt: skip
    struck = time.time()
    job.cancel()
    job.wait(JOB_TIMEOUT)
    assert job.state is JobState.ABORTED, job.message
    assert _the_backup(rig, url, job) is None
    # The worker stops at its next lease renewal (within a second); what it had in flight
    # lands meanwhile: the rerun is measured against what is there once nothing moves.
    seen: list[set[str]] = [set()]

    def settled() -> bool:
        now = _objects(url)
        same = now == seen[-1]
        seen.append(now)
        return same

    wait_until(settled, 30, "the cancelled backup's uploads to stop", interval=2.0)
    second, missing = _run_again(rig, url, table)
    assert 0 < len(missing) < len(second.objects())
    note = f"rerun uploaded {second.uploaded_objects} of {len(second.objects())} objects"
    record("m: backup cancelled mid-upload, then run again", job, struck, job.state, note)
