"""A target backend whose disk fills up: the job aborts at once, saying which backend and how
much room it has, instead of retrying what cannot succeed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import Replicator
from app.config import Settings
from app.replication.coordinator import Coordinator
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState
from app.replication.work import deliver
from tests.conftest import ClusterFactory
from tests.integration.rig import create_test_table, rows

TABLE = "db.big"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs."""
    if shutil.which("mount") is None:
        pytest.fail("mount(8) is needed for this test")
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_full_target_disk_aborts_the_job_in_one_attempt_naming_the_backend(
    settings: Settings, make_cluster: ClusterFactory, small_disk: Path
) -> None:
    settings = settings.with_overrides(transfer_mode="shared")  # applies run in this process
    src = make_cluster(backends=1)
    dst = make_cluster(backends=0)
    dst.add_backend("tiny", str(small_disk / "tiny"))
    for handle in (src, dst):
        create_test_table(handle, TABLE, buckets=2, replication_num=1)
    src.load(TABLE, rows(800_000, seed=5, wide=True), label="big-1")
    size = sum(c.rows for c in src.checksum(TABLE))
    assert size == 800_000

    job = Replicator(settings, lambda _c, _j: None).replicate(f"{src.name}:{TABLE}", dst.name)
    coordinator = Coordinator(settings, actor="test")
    for _ in range(20):
        for m in coordinator.tick(dst.name, job.id).messages:
            deliver(settings, m, "test")
        if job.refresh().state.final:
            break

    assert job.state is JobState.ABORTED
    message = job.message or ""
    assert f"target backend {dst.name}:tiny" in message and "is full" in message, message
    assert "MB free of" in message
    failed = [t for t in job.tasks() if t.kind == TaskKind.APPLY and t.state == TaskState.FAILED]
    assert failed and all(t.attempts == 1 for t in failed)  # permanent: not retried
    assert list((small_disk / "tiny" / "staging").rglob("*.*")) == []  # nothing half-written
