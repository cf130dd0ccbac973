"""The fault suite: each scenario ends COMMITTED with equal checksums, or ABORTED with the target
unchanged, and in both cases with no pending rowsets, staged files or unexpired holds left."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis
import sqlalchemy as sa

from app.queues import queue_name
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState
from app.storage.rowsets import RowsetState
from tests.faults.conftest import FaultRig, record
from tests.harness import wait_until
from tests.integration.rig import create_test_table, rows

JOB_TIMEOUT = 180


def _start(rig: FaultRig, name: str, n_rows: int = 200_000, **kwargs: object):  # type: ignore[no-untyped-def]
    table = rig.big_table(name, n_rows)
    before = rig.content(rig.dst, table)
    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name, **kwargs)  # type: ignore[arg-type]
    return table, before, job


def _dead(pid: int) -> bool:
    """Gone, or a zombie its parent has yet to reap: either way it runs no more."""
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except FileNotFoundError:
        return True


def test_a_killed_apply_child_process_is_retried_and_the_job_commits(rig: FaultRig) -> None:
    # Applies of about 2 MB each (800,000 rows), one caught with at least 512 KiB still to copy
    # (a sixteenth of a second or more at the rig's shared 8 MB/s link): it is still copying
    # when its process is killed. With 200,000 rows and any RUNNING apply, every apply could
    # finish between the moment one was seen and the kill (seen once, with a CPU hog beside).
    table, before, job = _start(rig, "kill_child", n_rows=800_000)
    task = rig.wait_for_transfer(job, min_left=512 * 1024)
    worker = str(task.worker).split("@")[0]
    children = rig.workers.procs[worker].child_pids()
    assert children, f"{worker} has no pool process"
    struck = time.time()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(_dead(p) for p in children), 10, "the pool processes dead")
    # Read after the kill: a dead process records nothing more, so what is RUNNING under its
    # worker now was in flight (read before, a batch flushed meanwhile would count as lost).
    in_flight = [
        t.id for t in job.tasks() if t.state == TaskState.RUNNING and t.worker == task.worker
    ]

    job.wait(JOB_TIMEOUT)

    assert job.state is JobState.COMMITTED, job.message
    attempts = {t.id: t.attempts for t in job.tasks() if t.id in in_flight}
    # The attempt that died never finished, so whatever was in flight ran again.
    assert attempts and all(a >= 2 for a in attempts.values()), attempts
    rig.assert_clean_end(job, table, before)
    record("a: SIGKILL apply child", job, struck, job.state, f"tasks {attempts} (id: attempts)")


def test_a_killed_backend_worker_restarted_later_lets_the_job_commit(rig: FaultRig) -> None:
    table, before, job = _start(rig, "kill_worker")
    task = rig.wait_for_transfer(job)
    worker = str(task.worker).split("@")[0]
    struck = time.time()
    rig.workers.kill(worker)
    # Down until the leases of what it was running have expired: nobody serves its queue.
    held = "SELECT count(*) FROM job_tasks WHERE worker = :w AND state = :s AND lease_until > now()"
    wait_until(
        lambda: rig.scalar(rig.dst, held, w=task.worker, s=TaskState.RUNNING) == 0,
        30, "the killed worker's leases to expire",
    )  # fmt: skip
    assert not job.refresh().state.final
    rig.workers.restart(worker)

    job.wait(JOB_TIMEOUT)

    assert job.state is JobState.COMMITTED, job.message
    rig.assert_clean_end(job, table, before)
    record("b: SIGKILL backend worker, restart after 3 s", job, struck, job.state, worker)


def test_a_killed_coordinator_and_beat_resume_the_job_after_restart(rig: FaultRig) -> None:
    table, before, job = _start(rig, "kill_coordinator")
    rig.wait_for_transfer(job)
    struck = time.time()
    rig.workers.kill("coordinator")
    # Down while the workers go on without it: a task finishes that no coordinator sees.
    done = "SELECT count(*) FROM job_tasks WHERE job_id = :j AND state = :s"
    before = rig.scalar(rig.dst, done, j=job.id, s=TaskState.DONE)
    wait_until(
        lambda: rig.scalar(rig.dst, done, j=job.id, s=TaskState.DONE) > before,
        60, "a task to finish while the coordinator is down",
    )  # fmt: skip
    assert not job.refresh().state.final
    rig.workers.restart("coordinator")

    job.wait(JOB_TIMEOUT)

    assert job.state is JobState.COMMITTED, job.message
    rig.assert_clean_end(job, table, before)
    record("c: SIGKILL coordinator + beat, restart after 2 s", job, struck, job.state, "")


def test_redis_restarted_empty_loses_every_message_and_the_job_still_commits(rig: FaultRig) -> None:
    table, before, job = _start(rig, "redis_restart")
    rig.wait_for_transfer(job)
    struck = time.time()
    rig.redis.restart_empty()

    job.wait(JOB_TIMEOUT)

    assert job.state is JobState.COMMITTED, job.message
    rig.assert_clean_end(job, table, before)
    record("d: Redis restarted empty", job, struck, job.state, "messages re-sent from Postgres")


def test_postgres_restarted_mid_job_ends_cleanly(rig: FaultRig) -> None:
    table, before, job = _start(rig, "pg_restart")
    rig.wait_for_transfer(job)
    struck = time.time()
    rig.pg.restart(down_for=2)

    job.wait(JOB_TIMEOUT)

    rig.assert_clean_end(job, table, before)
    assert job.state is JobState.COMMITTED, job.message
    record("e: Postgres restarted (down 2 s)", job, struck, job.state, "")


def test_a_file_corrupted_in_flight_once_is_fetched_again_and_the_job_commits(
    rig: FaultRig,
) -> None:
    rig.arm({"transfer.corrupt": 1})
    table, before, job = _start(rig, "corrupt_once")
    struck = time.time()

    job.wait(JOB_TIMEOUT)

    assert rig.failpoint_left("transfer.corrupt") == 0  # it did fire
    assert job.state is JobState.COMMITTED, job.message
    # The byte flipped was in the middle of a file (a data page, not its header): only the
    # checksum could tell. Every target replica holds the source's bytes exactly.
    rig.assert_clean_end(job, table, before)
    record("f1: one file corrupted in flight", job, struck, job.state, "re-read from a replica")


def test_a_file_corrupt_on_every_source_replica_aborts_the_job(rig: FaultRig) -> None:
    table = rig.big_table("corrupt_all")
    before = rig.content(rig.dst, table)
    with rig.src.catalog.engine.connect() as conn:
        rowset = conn.execute(
            sa.text(
                "SELECT r.id, r.tablet_id FROM rowsets r JOIN transactions t ON t.id = r.txn_id "
                "WHERE t.label = 'corrupt_all-1' ORDER BY r.id LIMIT 1"
            )
        ).one()
    damaged = 0
    for backend in rig.src.backends():
        path = Path(backend.storage_root, "data", str(rowset.tablet_id), rowset.id, "0.parquet")
        if path.exists():
            with path.open("r+b") as f:
                f.seek(path.stat().st_size // 2)
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ 0xFF]))
            damaged += 1
    assert damaged == 2
    struck = time.time()

    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(JOB_TIMEOUT)

    assert job.state is JobState.ABORTED
    assert "fails its checksum" in (job.message or "")
    rig.assert_clean_end(job, table, before)
    record("f2: file corrupt on every source replica", job, struck, job.state, job.message or "")


def test_source_compaction_and_gc_during_the_job_do_not_break_it(rig: FaultRig) -> None:
    table = rig.big_table("compact_during")
    rig.src.load(
        table,
        __import__("tests.integration.rig", fromlist=["rows"]).rows(20_000, seed=5),
        label="compact_during-2",
    )
    before = rig.content(rig.dst, table)
    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
    rig.wait_for_transfer(job)
    # The target's workers pause, so the job is certainly still open while the source compacts
    # and collects, however slow the machine; they come back afterwards and the job goes on.
    targets = [queue_name(rig.dst.name, b) for b in ("be1", "be2")]
    for name in targets:
        rig.workers.kill(name)
    struck = time.time()
    compacted = rig.src.compact(table)
    collected = rig.src.gc(orphan_grace_sec=0)
    assert not job.refresh().state.final
    for name in targets:
        rig.workers.restart(name)

    job.wait(JOB_TIMEOUT)

    assert compacted.rowsets_merged > 0
    assert collected.kept_by_holds > 0  # the job's holds kept the inputs' files
    assert job.state is JobState.COMMITTED, job.message
    rig.assert_clean_end(job, table, before)
    # Once the job released its holds, GC may delete the compacted inputs.
    assert rig.src.gc(orphan_grace_sec=0).deleted_rowsets > 0
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)
    record(
        "g: source compaction + GC mid-job",
        job,
        struck,
        job.state,
        f"{collected.kept_by_holds} rowsets kept by holds",
    )


def test_two_coordinators_and_two_beats_never_make_a_transition_twice(rig: FaultRig) -> None:
    rig.workers.coordinator(name="extra-coordinator")
    rig.workers.wait_ready()
    # Three jobs at once: nine transitions shared between the two coordinators.
    started = [_start(rig, f"two_coordinators_{i}", n_rows=40_000) for i in range(3)]
    struck = time.time()

    for _table, _before, job in started:
        job.wait(JOB_TIMEOUT)
    actors: list[str] = []
    planners: list[str] = []
    for table, before, job in started:  # once all have ended: the checks see the whole cluster
        assert job.state is JobState.COMMITTED, job.message
        edges = [(e.from_state, e.to_state) for e in job.events]
        assert edges == [
            (None, "INITIALIZING"),
            ("INITIALIZING", "SNAPSHOTING"),
            ("SNAPSHOTING", "REPLICATING"),
            ("REPLICATING", "COMMITTED"),
        ]
        actors += [str(e.actor).split("@")[0] for e in job.events[1:]]
        planners.append(str(job.events[1].actor).split("@")[0])
        rig.assert_clean_end(job, table, before)
    # Planning is the coordinators' (the client nudges them); the task that ends a phase ticks
    # the job itself (workers.tasks.advance_here), racing both coordinators' beats and nudges.
    # Each transition happened once (the edges above) although several processes made them.
    assert set(planners) <= {"coordinator", "extra-coordinator"}, planners
    assert len(set(actors)) >= 2, actors
    job = started[-1][2]
    record(
        "h: two coordinators + two beats",
        job,
        struck,
        job.state,
        f"actors: {sorted(map(str, actors))}",
    )


def test_a_transaction_timeout_aborts_the_job_and_cleans_up(rig: FaultRig) -> None:
    # The target's workers stop while an apply is copying, so the job certainly outlives its
    # 2-second transaction, however fast the machine (with 200,000 rows and the workers left
    # running, a job finished within the 2 s once the product got faster); they come back once
    # the job has aborted, to remove what it staged.
    table, before, job = _start(rig, "txn_timeout", n_rows=800_000, timeout_sec=2)
    rig.wait_for_transfer(job, min_left=512 * 1024)
    targets = [queue_name(rig.dst.name, b) for b in ("be1", "be2")]
    for name in targets:
        rig.workers.kill(name)
    struck = time.time()

    job.wait(JOB_TIMEOUT)
    for name in targets:
        rig.workers.restart(name)

    assert job.state is JobState.ABORTED
    assert job.message == "transaction timeout reached"
    wait_until(
        lambda: (
            rig.scalar(
                rig.dst, "SELECT count(*) FROM rowsets WHERE state = :s", s=RowsetState.PENDING
            )
            == 0
        ),
        10,
        "pending rowsets to go",
    )
    rig.assert_clean_end(job, table, before)
    record("i: transaction timeout (2 s)", job, struck, job.state, job.message or "")


def test_an_unreachable_source_replica_is_replaced_by_another(rig: FaultRig) -> None:
    table = rig.big_table("src_replica_down")
    before = rig.content(rig.dst, table)
    be1 = Path(next(b.storage_root for b in rig.src.backends() if b.name == "be1"))
    hidden = be1.with_name("be1-unplugged")
    be1.rename(hidden)  # the disk of source backend be1 is gone
    try:
        struck = time.time()
        job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(JOB_TIMEOUT)
    finally:
        hidden.rename(be1)

    assert job.state is JobState.COMMITTED, job.message
    sources = {t.src_backend_ids[0] for t in job.tasks() if t.kind == TaskKind.APPLY}
    be2_id = next(b.id for b in rig.src.backends() if b.name == "be2")
    assert sources == {be2_id}  # every file came from the replica that was still there
    rig.assert_clean_end(job, table, before)
    record("j: one source replica unreachable", job, struck, job.state, "all files read from be2")


def test_cancel_while_snapshoting_with_the_source_workers_down(rig: FaultRig) -> None:
    table = rig.big_table("cancel_snapshoting")
    before = rig.content(rig.dst, table)
    for b in ("be1", "be2"):
        rig.workers.kill(queue_name(rig.src.name, b))
    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
    wait_until(lambda: job.refresh().state is JobState.SNAPSHOTING, 30, "the job to be snapshoting")
    struck = time.time()

    assert job.cancel() is True
    job.wait(JOB_TIMEOUT)

    assert job.state is JobState.ABORTED and job.message == "cancelled by user"
    rig.assert_clean_end(job, table, before)
    for b in ("be1", "be2"):
        rig.workers.restart(queue_name(rig.src.name, b))
    # The messages still queued for the dead source workers find an ended job and do nothing.
    broker = redis.Redis.from_url(rig.redis.url)
    queues = [queue_name(rig.src.name, b) for b in ("be1", "be2")]
    wait_until(lambda: sum(broker.llen(q) for q in queues) == 0, 30, "the queued snapshots")
    snapshots = "SELECT count(*) FROM job_tasks WHERE job_id = :j AND state = :s"
    assert rig.scalar(rig.dst, snapshots, j=job.id, s=TaskState.RUNNING) == 0
    assert rig.scalar(rig.src, "SELECT count(*) FROM holds WHERE expires_at > now()") == 0
    record("k: cancel while SNAPSHOTING, source workers down", job, struck, job.state, "")


def test_a_transfer_server_killed_mid_job_is_resumed_with_range_and_the_job_commits(
    rig: FaultRig,
) -> None:
    # One bucket: a few files of several MB each, so that one is on the wire when the link goes.
    table = "db.kill_transfer"
    for handle in (rig.src, rig.dst):
        create_test_table(handle, table, buckets=1, replication_num=2)
    rig.src.load(table, rows(600_000, seed=11, wide=True), label="kill_transfer-1")
    before = rig.content(rig.dst, table)
    job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name)
    staging = [Path(b.storage_root, "staging") for b in rig.dst.backends()]

    def receiving() -> bool:
        return any(p.is_file() and p.stat().st_size > 0 for d in staging for p in d.rglob("*"))

    wait_until(receiving, 60, "a file to be on its way", interval=0.01)
    server = f"transfer.{rig.src.name}"
    logs = [rig.workers.procs[queue_name(rig.dst.name, b)].log for b in ("be1", "be2")]
    struck = time.time()
    rig.workers.kill(server)

    def resuming() -> bool:  # the link is down: a download broke and waits to resume
        return any("resuming at byte" in log.read_text(errors="replace") for log in logs)

    wait_until(resuming, 30, "a download to notice the broken link")
    assert not job.refresh().state.final
    rig.workers.restart(server)

    job.wait(JOB_TIMEOUT)

    assert job.state is JobState.COMMITTED, job.message
    rig.assert_clean_end(job, table, before)
    resumed = [
        int(line.rsplit(" ", 1)[1])
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if "resuming at byte" in line
    ]
    # A file cut in the middle went on from where it stopped: Range, not a new download.
    assert any(offset > 0 for offset in resumed), resumed
    record("l: transfer server killed mid-job", job, struck, job.state,
           f"resumed at bytes {sorted(set(resumed))[:5]}")  # fmt: skip
