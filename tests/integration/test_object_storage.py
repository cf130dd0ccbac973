"""Replication across kinds of storage, with a real SeaweedFS (S3) and real workers.

Three clusters of two backends each: ``olocal`` keeps its files in directories (and serves them
with its transfer server, mutual TLS), ``olake1`` and ``olake2`` in prefixes of one bucket of the
suite's SeaweedFS. Every direction ends with the target's per-partition checksums (every row
read back) equal to the source's; between the two lake clusters, the files are copied inside the
store, and the workers' own byte counters (each apply's result, in its log) say that no file
byte passed through them.
"""

from __future__ import annotations

import ast
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.catalog import model
from app.client import ClusterHandle, Replicator
from app.config import Settings
from app.errors import InvalidRequest
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from app.storage.objects import ObjectStorage
from frontends.connect import replicator as connect
from frontends.transfer_setup import local_transfer
from tests.harness import RedisServer, SeaweedServer, Workers, free_port
from tests.integration.rig import create_test_table, rows

BUCKET = "olaptest"
FINAL = (JobState.COMMITTED, JobState.ABORTED)


@dataclass
class Lake:
    replicator: Replicator
    clusters: dict[str, ClusterHandle]
    workers: Workers
    prefix: str  # this module's keys in the bucket

    def applied_bytes(self, cluster: str, job_id: int) -> list[int]:
        """The bytes each apply message of ``job_id`` moved through its worker, as the worker
        logged its result ('bytes': the file bytes that crossed into the process)."""
        out = []
        for name, proc in self.workers.procs.items():
            if not name.startswith(f"be.{cluster}."):
                continue
            for line in proc.log.read_text().splitlines():
                m = re.search(r"replication\.apply\[[^\]]+\] succeeded in [\d.]+s: (\{.*\})", line)
                if m and (result := ast.literal_eval(m.group(1)))["job"] == f"{cluster}:{job_id}":
                    out.append(int(result["bytes"]))
        return out


@pytest.fixture(scope="module")
def lake(
    settings: Settings,
    test_env: dict[str, str],
    seaweed: SeaweedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lake]:
    base = tmp_path_factory.mktemp("lake")
    prefix = f"lake-{uuid.uuid4().hex[:8]}"
    names = ["olocal", "olake1", "olake2"]
    redis = RedisServer(base / "redis").start()
    # Certificates, and a transfer secret for olocal only: a cluster whose backends are all
    # in the store is read from the store, and needs none.
    transfer = local_transfer(base / "pki", ["olocal"])
    settings = settings.with_overrides(broker_url=redis.url, **transfer.overrides)
    replicator = connect(settings)
    port = free_port()
    clusters = {n: replicator.cluster(n) for n in names}
    for name, handle in clusters.items():
        handle.init()
        for b in ("be1", "be2"):
            if name == "olocal":
                handle.add_backend(b, str(base / name / b), transfer_url=transfer.url(port))
            else:
                handle.add_backend(b, f"s3://{BUCKET}/{prefix}/{name}/{b}")
    env = dict(test_env) | transfer.env | seaweed.env()
    env["REPLICATOR_BROKER_URL"] = redis.url
    env["REPLICATOR_COORDINATOR_CLUSTERS"] = ",".join(names)
    workers = Workers(env, base / "logs")
    try:
        workers.transfer("olocal", ["be1", "be2"], port)
        for name in names:
            for b in ("be1", "be2"):
                workers.backend(name, b)
        workers.coordinator()
        workers.wait_ready()
        yield Lake(replicator, clusters, workers, prefix)
    finally:
        workers.stop_all()
        redis.stop()


def _content(handle: ClusterHandle, table: str) -> list[tuple[str, int, int, str]]:
    return [(c.partition, c.version, c.rows, c.checksum) for c in handle.checksum(table)]


def _replicate(lake: Lake, src: str, dst: str, table: str) -> int:
    job = lake.replicator.replicate(f"{src}:{table}", dst, create_target=True).wait(120)
    assert job.state is JobState.COMMITTED, job.message
    return job.id


def test_the_backends_roots_are_recorded_with_their_endpoint(
    lake: Lake, seaweed: SeaweedServer
) -> None:
    roots = {b.storage_root for b in lake.clusters["olake1"].backends()}
    assert roots == {
        f"s3://{BUCKET}/{lake.prefix}/olake1/{b}?endpoint={seaweed.endpoint}"
        for b in ("be1", "be2")
    }


def test_local_to_lake_to_local_and_lake_to_lake_all_end_equal(lake: Lake) -> None:
    table = "db.kinds"
    create_test_table(lake.clusters["olocal"], table, buckets=4, replication_num=2)
    lake.clusters["olocal"].load(table, rows(20_000, seed=11), label="kinds-1")
    lake.clusters["olocal"].load(table, rows(4_000, seed=12), label="kinds-2")
    expected = _content(lake.clusters["olocal"], table)

    # local -> object storage: downloaded from the transfer server, uploaded by the workers
    to_lake = _replicate(lake, "olocal", "olake1", table)
    assert _content(lake.clusters["olake1"], table) == expected
    assert sum(lake.applied_bytes("olake1", to_lake)) > 0

    # object storage -> object storage, one store: copied inside it, no byte through a worker
    across = _replicate(lake, "olake1", "olake2", table)
    assert _content(lake.clusters["olake2"], table) == expected
    moved = lake.applied_bytes("olake2", across)
    assert moved and all(n == 0 for n in moved), moved

    # object storage -> local: read from the store by the target's workers
    back = "db.kinds_back"
    job = lake.replicator.replicate(f"olake2:{table}", f"olocal:{back}", create_target=True).wait(
        120
    )
    assert job.state is JobState.COMMITTED, job.message
    assert _content(lake.clusters["olocal"], back) == expected
    assert sum(lake.applied_bytes("olocal", job.id)) > 0


def test_an_incremental_replication_into_object_storage_moves_only_the_new_rowsets(
    lake: Lake,
) -> None:
    table = "db.kinds_incr"
    src = lake.clusters["olocal"]
    create_test_table(src, table, buckets=2, replication_num=1)
    src.load(table, rows(6_000, seed=21), label="kinds-incr-1")
    _replicate(lake, "olocal", "olake1", table)
    src.load(table, rows(1_000, seed=22), label="kinds-incr-2")
    job = lake.replicator.replicate(f"olocal:{table}", "olake1").wait(120)
    assert job.state is JobState.COMMITTED, job.message
    assert _content(lake.clusters["olake1"], table) == _content(src, table)
    applies = [t for t in job.tasks() if t.kind == TaskKind.APPLY]
    assert applies and all(t.incremental for t in applies)


def test_a_lake_backend_is_not_served_by_a_transfer_server(lake: Lake) -> None:
    from app.transfer.service import backend_roots

    with pytest.raises(InvalidRequest, match="keep their files in object storage"):
        backend_roots(lake.clusters["olake1"].catalog, ["be1"])
    with pytest.raises(InvalidRequest, match="it needs no transfer server"):
        backend_roots(lake.clusters["olake1"].catalog, [])
    assert set(backend_roots(lake.clusters["olocal"].catalog, [])) == {"be1", "be2"}


def test_the_objects_a_target_holds_are_the_ones_its_catalog_names(lake: Lake) -> None:
    """Nothing staged is left in the store, and every installed file has its manifest size."""
    store = ObjectStorage(lake.clusters["olake2"].backends()[0].storage_root)
    assert list(store.walk_files("staging")) == []
    files = list(store.walk_files("data"))
    assert files and all(store.size(path) for path, _ in files)


def test_a_backend_in_a_bucket_that_does_not_answer_is_refused_at_add(lake: Lake) -> None:
    handle = lake.clusters["olake1"]
    dead = f"s3://{BUCKET}/x?endpoint=http://127.0.0.1:{free_port()}"
    with pytest.raises(InvalidRequest, match="create the bucket, or check the endpoint"):
        handle.add_backend("be9", dead)
    assert {b.name for b in handle.backends()} == {"be1", "be2"}


def test_overlapping_object_roots_are_refused(lake: Lake) -> None:
    handle = lake.clusters["olake2"]
    inside = f"s3://{BUCKET}/{lake.prefix}/olake1/be1/deeper"
    with pytest.raises(InvalidRequest, match="overlaps"):
        handle.add_backend("be9", inside)


def test_the_store_restarted_during_a_replication_into_it_ends_committed_or_clean(
    lake: Lake, seaweed: SeaweedServer
) -> None:
    """SeaweedFS killed (SIGKILL) while the applies write into it, back a few seconds later:
    the apply attempts that met it away are retried (StorageUnavailable is retryable), and the
    job commits with equal checksums; or, if they ran out of attempts, it aborts with the
    target empty and no staged object left. Either way nothing is half-applied."""
    table = "db.kinds_fault"
    src = lake.clusters["olocal"]
    create_test_table(src, table, buckets=4, replication_num=2)
    for i in range(4):
        src.load(table, rows(60_000, seed=40 + i), label=f"kinds-fault-{i}")
    job = lake.replicator.replicate(f"olocal:{table}", "olake1", create_target=True)
    deadline = time.monotonic() + 60
    while job.refresh().state not in (JobState.REPLICATING, *FINAL):
        assert time.monotonic() < deadline, "the job never reached REPLICATING"
        time.sleep(0.02)
    seaweed.restart(down_for=2.0)
    job.wait(180)
    # The fault struck: applies met the store away and were tried again (or gave up).
    retried = [t for t in job.tasks() if t.kind == TaskKind.APPLY and t.attempts > 1]
    assert retried or job.state is JobState.ABORTED, "the restart missed every apply"
    target = lake.clusters["olake1"]
    if job.state is JobState.COMMITTED:
        assert _content(target, table) == _content(src, table)
    else:
        assert job.state is JobState.ABORTED, job.state
        assert all(c.rows == 0 for c in target.checksum(table)), job.message
    for backend in target.backends():
        staged = list(ObjectStorage(backend.storage_root).walk_files("staging"))
        assert staged == [], (job.state, job.message)


def _rowset_ids(handle: ClusterHandle, table: str) -> set[str]:
    with handle.catalog.engine.connect() as conn:
        tablets = model.list_tablets(conn, model.get_table(conn, table).id)
        rowsets = model.visible_rowsets(conn, [t.id for t in tablets])
    return {r.id for rs in rowsets.values() for r in rs}


def test_compaction_and_gc_work_in_object_storage(lake: Lake) -> None:
    """Loads, compaction and GC of a table whose backends are in the store: the compacted
    rowsets' objects are deleted, the merged ones kept, the rows unchanged; an orphan object and
    a closed transaction's staging go too (grace period 0)."""
    handle = lake.clusters["olake2"]
    table = "db.kinds_gc"
    create_test_table(handle, table, buckets=2, replication_num=2)
    for i in range(3):
        handle.load(table, rows(2_000, seed=60 + i), label=f"kinds-gc-{i}")
    before, loaded = handle.checksum(table), _rowset_ids(handle, table)
    store = ObjectStorage(handle.backends()[0].storage_root)

    def rowsets_in_store() -> set[str]:
        return {p.split("/")[2] for p, _ in store.walk_files("data")}

    assert loaded <= rowsets_in_store()
    orphan = "data/1/0123456789abcdef0123456789abcdef/0.parquet"
    with store.open_write(orphan) as f:
        f.write(b"left by a crash before the catalog row was written")
    with store.open_write("staging/999999/rs.0.parquet") as f:
        f.write(b"half received")

    report = handle.compact(table)
    assert report.rowsets_merged == len(loaded) == 2 * 4 * 3  # 8 tablets, 3 loads each
    gc = handle.gc(orphan_grace_sec=0)
    assert (gc.deleted_rowsets, gc.orphan_files, gc.staging_dirs) == (len(loaded), 1, 1)
    merged = _rowset_ids(handle, table)
    assert merged <= rowsets_in_store()
    assert not (loaded | {"0123456789abcdef0123456789abcdef"}) & rowsets_in_store()
    assert list(store.walk_files("staging")) == []
    assert handle.checksum(table) == before
