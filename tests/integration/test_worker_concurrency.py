"""Real worker processes at --concurrency 2 on the target's queues: no replica is applied twice,
and apply tasks send ``task-progress`` events that carry bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from app.config import Settings
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState
from tests.integration.rig import Rig, replica_mismatches, rows, start_rig


@pytest.fixture(scope="module")
def rig(
    settings: Settings, test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    yield from start_rig(settings, test_env, tmp_path_factory.mktemp("rig"), "cc", bandwidth=0)


def _listen(broker_url: str, seen: list[dict[str, Any]], stop: threading.Event) -> None:
    from celery import Celery

    app = Celery(broker=broker_url)
    with Connection(broker_url) as conn:
        recv = app.events.Receiver(conn, handlers={"task-progress": seen.append})
        for _ in recv.itercapture(limit=None, timeout=0.5, wakeup=False):
            if stop.is_set():
                return


def test_two_processes_per_target_backend_never_apply_a_replica_twice(rig: Rig) -> None:
    for b in ("be1", "be2"):  # a second worker of 2 processes on each target backend's queue
        rig.workers.backend(rig.dst.name, b, concurrency=2, suffix="-c2")
    rig.workers.wait_ready()
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    listener = threading.Thread(target=_listen, args=(rig.settings.broker_url, seen, stop))
    listener.start()
    try:
        table = rig.make_tables("conc", buckets=8)
        rig.src.load(table, rows(20_000, seed=41), label="conc-1")
        job = rig.replicator.replicate(f"{rig.src.name}:{table}", rig.dst.name).wait(120)
    finally:
        stop.set()
        listener.join(10)
    assert job.state is JobState.COMMITTED, job.message
    applies = [t for t in job.tasks() if t.kind == TaskKind.APPLY]
    replicas = [(t.dst_tablet_id, t.dst_backend_id) for t in applies]
    assert len(replicas) == len(set(replicas)) == 4 * 8 * 2
    # Each replica claimed once (one attempt) and done: none was applied twice.
    assert {(t.state, t.attempts) for t in applies} == {(TaskState.DONE, 1)}
    assert len({t.worker for t in applies}) >= 3, {t.worker for t in applies}
    assert rig.content(rig.dst, table) == rig.content(rig.src, table)
    assert replica_mismatches(rig.dst, table) == []
    ours = [e for e in seen if e.get("job") == job.ref]
    assert ours, f"no task-progress event of {job.ref} among {len(seen)}"
    assert all(0 < e["bytes_done"] <= e["bytes"] for e in ours), ours[:5]
    # The last event of each message reports all its bytes: together, every byte of the job.
    assert sum(e["bytes"] for e in ours if e["bytes_done"] == e["bytes"]) >= sum(
        t.bytes_total for t in applies
    )
