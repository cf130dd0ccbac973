"""The fault rig: a Postgres and a Redis of the suite's own, and real worker processes for two
source backends, two target backends and the coordinator, all of which tests may kill."""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.catalog.engine import dispose_all
from app.client import ClusterHandle, Job, Replicator
from app.config import Settings
from app.queues import queue_name
from app.replication.state import JobState
from app.replication.taskrows import TaskKind, TaskState
from app.storage.rowsets import RowsetState
from frontends.connect import replicator as connect
from frontends.supervise import free_port
from frontends.transfer_setup import local_transfer
from tests.harness import PostgresServer, RedisServer, SeaweedServer, Workers, wait_until
from tests.integration.rig import create_test_table, replica_mismatches, rows

REPORT = Path(__file__).resolve().parents[2] / "var" / "fault-report.jsonl"

WORKER_ENV = {
    "REPLICATOR_TASK_LEASE_SEC": "3",
    "REPLICATOR_TASK_QUEUED_TIMEOUT_SEC": "4",
    "REPLICATOR_TASK_MAX_ATTEMPTS": "6",
    "REPLICATOR_COORDINATOR_TICK_SEC": "0.5",
    # Slow enough that a test can strike while files are in flight (the link's budget, shared
    # by the two target workers).
    "REPLICATOR_TRANSFER_BANDWIDTH_MB_PER_SEC": "8",
    # The source's transfer server sends at that pace too, so a file is in flight on the wire
    # (not already in socket buffers) when a test cuts the link.
    "REPLICATOR_TRANSFER_SERVING_CAP_MB_PER_SEC": "8",
}


@dataclass
class FaultRig:
    settings: Settings
    replicator: Replicator
    src: ClusterHandle
    dst: ClusterHandle
    pg: PostgresServer
    redis: RedisServer
    workers: Workers
    failpoints: Path
    tables: list[str] = field(default_factory=list)

    def backend_names(self) -> list[str]:
        return [queue_name(c.name, b) for c in (self.src, self.dst) for b in ("be1", "be2")]

    def ensure_running(self) -> None:
        """Every process up, so one scenario's kill does not leak into the next."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        for name, proc in list(self.workers.procs.items()):
            if name.startswith("extra-"):
                self.workers.kill(name)
                del self.workers.procs[name]
            elif proc.popen is None or proc.popen.poll() is not None:
                self.workers.restart(name)
        self.arm({})

    def arm(self, failpoints: dict[str, int]) -> None:
        self.failpoints.write_text(json.dumps(failpoints))

    def failpoint_left(self, name: str) -> int:
        return int(json.loads(self.failpoints.read_text() or "{}").get(name, 0))

    def big_table(self, name: str, n_rows: int = 200_000) -> str:
        full = f"db.{name}"
        for handle in (self.src, self.dst):
            create_test_table(handle, full, buckets=4, replication_num=2)
        self.src.load(
            full, rows(n_rows, seed=zlib.crc32(name.encode()) % 1000, wide=True), label=f"{name}-1"
        )
        return full

    def content(self, handle: ClusterHandle, full: str) -> list[tuple[str, int, int, int, str]]:
        return [
            (c.partition, c.version, c.epoch, c.rows, c.checksum) for c in handle.checksum(full)
        ]

    def scalar(self, handle: ClusterHandle, sql: str, **params: object) -> int:
        with handle.catalog.engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())

    def running_apply(self, job: Job, min_left: int = 0) -> sa.Row[tuple[object, ...]] | None:
        """A RUNNING apply of ``job`` with at least ``min_left`` bytes still to copy (as its
        last heartbeat recorded)."""
        with self.dst.catalog.engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT * FROM job_tasks WHERE job_id = :j AND kind = :k "
                    "AND state = :s AND bytes_total - bytes_done >= :left ORDER BY id LIMIT 1"
                ),
                {"j": job.id, "k": TaskKind.APPLY, "s": TaskState.RUNNING, "left": min_left},
            ).first()

    def wait_for_transfer(
        self, job: Job, timeout: float = 60, min_left: int = 0
    ) -> sa.Row[tuple[object, ...]]:
        found: list[sa.Row[tuple[object, ...]]] = []

        def copying() -> bool:
            row = self.running_apply(job, min_left)
            if row is not None:
                found.append(row)
            return row is not None

        wait_until(copying, timeout, f"job {job.ref} to be copying files", interval=0.1)
        return found[-1]

    def assert_clean_end(
        self, job: Job, table: str, before: list[tuple[str, int, int, int, str]]
    ) -> None:
        """COMMITTED and equal, or ABORTED and unchanged; never anything left behind."""
        assert job.state.final, job
        if job.state is JobState.COMMITTED:
            assert self.content(self.dst, table) == self.content(self.src, table)
            # Every target replica, not just the first readable one: each file's size and
            # xxh3 on disk equal the source's (recorded with the rowset when it was shipped).
            assert replica_mismatches(self.dst, table) == []
        else:
            assert self.content(self.dst, table) == before
        pending = "SELECT count(*) FROM rowsets WHERE state = :s"
        assert self.scalar(self.dst, pending, s=RowsetState.PENDING) == 0
        assert (
            self.scalar(self.dst, "SELECT count(*) FROM transactions WHERE state = 'PREPARE'") == 0
        )

        def no_staged_files() -> bool:
            return not [
                p
                for b in self.dst.backends()
                for p in Path(b.storage_root, "staging").rglob("*")
                if p.is_file()
            ]

        wait_until(no_staged_files, 15, "staged files to be gone")
        # The job's end is recorded first; its holds are released just after (another catalog).
        holds = "SELECT count(*) FROM holds WHERE expires_at > now()"
        wait_until(lambda: self.scalar(self.src, holds) == 0, 15, "the job's holds to be released")


def record(scenario: str, job: Job, struck_at: float, outcome: str, note: str) -> None:
    """Append what happened to var/fault-report.jsonl (the numbers for the closing note)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    events = job.events
    entry = {
        "scenario": scenario,
        "outcome": outcome,
        "recovery_sec": round(time.time() - struck_at, 2),
        "job_sec": round((events[-1].at - events[0].at).total_seconds(), 2),
        "events": [f"{e.from_state}->{e.to_state}: {e.reason}" for e in events],
        "note": note,
    }
    with REPORT.open("a") as f:
        f.write(json.dumps(entry) + "\n")


@pytest.fixture(scope="session")
def fault_rig(
    tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedServer
) -> Iterator[FaultRig]:
    """Clusters fsrc and fdst; the suite's SeaweedFS is the backups' repository."""
    base = tmp_path_factory.mktemp("faults")
    pg = PostgresServer().init()
    redis = RedisServer(base / "redis").start()
    transfer = local_transfer(base / "pki", ["fsrc", "fdst"])
    settings = Settings(
        broker_url=redis.url,
        dsn_template=f"{pg.url}/olap_{{cluster}}",
        task_lease_sec=3,
        task_queued_timeout_sec=4,
        task_max_attempts=6,
        **transfer.overrides,
    )
    replicator = connect(settings)
    src, dst = replicator.cluster("fsrc"), replicator.cluster("fdst")
    ports = {"fsrc": free_port(), "fdst": free_port()}
    for handle in (src, dst):
        handle.init()
        for b in ("be1", "be2"):
            url = transfer.url(ports[handle.name])
            handle.add_backend(b, str(base / handle.name / b), transfer_url=url)
    failpoints = base / "failpoints.json"
    failpoints.write_text("{}")
    env = dict(os.environ) | transfer.env | seaweed.env()
    env.update(WORKER_ENV)
    env.update(
        {
            "REPLICATOR_BROKER_URL": redis.url,
            "REPLICATOR_DSN_TEMPLATE": settings.dsn_template,
            "REPLICATOR_FAILPOINTS": str(failpoints),
        }
    )
    env.pop("REPLICATOR_CONFIG", None)
    workers = Workers(env, base / "logs")
    for handle in (src, dst):
        workers.transfer(handle.name, ["be1", "be2"], ports[handle.name])
        for b in ("be1", "be2"):
            workers.backend(handle.name, b)
    workers.coordinator()
    try:
        workers.wait_ready()
        yield FaultRig(settings, replicator, src, dst, pg, redis, workers, failpoints)
    finally:
        workers.stop_all()
        redis.stop()
        dispose_all()
        pg.destroy()


@pytest.fixture
def rig(fault_rig: FaultRig) -> FaultRig:
    fault_rig.ensure_running()
    return fault_rig


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.faults)
