"""The demo's lake step: the target table copied into object storage.

The store is the one ``AWS_ENDPOINT_URL`` names if it is set (with the AWS_* keys; it must have
a bucket ``olap-demo``), otherwise a SeaweedFS of the demo's own (``weed server -s3``, keys made
up for the run, data under var/demo/seaweed). It holds the backends of a third cluster,
``lake``; its two workers write there.
The job dr -> lake is a replication like the others: the files are read from dr's transfer
server and uploaded to the store, and the tables' checksums must be equal afterwards.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.client import Replicator
from app.errors import ReplicatorError, SetupError
from app.storage.objects import ObjectStorage
from frontends.demo.common import (
    DEMO_DIR,
    LOG_DIR,
    PID_DIR,
    TABLE,
    TARGET,
    console,
    one_line,
    rel,
)
from frontends.demo.replication import JobReport, replicate
from frontends.servers import SeaweedServer
from frontends.supervise import Workers, free_port, port_free

LAKE = "lake"
BUCKET = "olap-demo"
LAKE_BACKENDS = ("be1", "be2")
STORE_DIR = DEMO_DIR / "seaweed"
STORE_PID_DIR = PID_DIR / "store"  # not a Python process: stopped by its own words
STORE_WORDS = (b"weed", b"server")
S3_PORT = 8333


@dataclass
class LakeResult:
    report: JobReport
    equal: bool
    root: str


def roots_are_ours(roots: list[str]) -> bool:
    """Whether a ``lake`` cluster's roots are the demo's (so a rerun may drop it)."""
    return all(r.startswith(f"s3://{BUCKET}/") for r in roots)


def forget_store() -> None:
    """The previous run's store data (its process was stopped with the others)."""
    shutil.rmtree(STORE_DIR, ignore_errors=True)


@dataclass(frozen=True)
class ReusedStore:
    """The store ``AWS_ENDPOINT_URL`` names: this process's environment reaches it already."""

    endpoint: str

    def env(self) -> dict[str, str]:
        return {}


Store = SeaweedServer | ReusedStore


def plan_store() -> Store:
    """The store of the last steps: the one ``AWS_ENDPOINT_URL`` names, or a SeaweedFS of the
    demo's own, not started yet: its address and keys are known already, so every worker is
    given them when it starts (dr's workers upload dr's backup)."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        return ReusedStore(os.environ["AWS_ENDPOINT_URL"])
    return SeaweedServer(STORE_DIR, port=S3_PORT if port_free(S3_PORT) else free_port())


def start_store(store: Store) -> Future[Store]:
    """Check the reused store, or start ours in the background (about 9 s) while the data is
    generated and loaded; a started one's pid is recorded at once, so ``make demo-down`` stops
    it whatever happens next."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="seaweedfs")
    if isinstance(store, ReusedStore):
        return pool.submit(_reuse_store, store)
    return pool.submit(_start_store, store)


def copy_to_lake(
    replicator: Replicator, worker_env: dict[str, str], starting: Future[Store]
) -> LakeResult:
    with console.status("Waiting for the object store (S3)..."):
        store = starting.result()
    os.environ.update(store.env())  # this process reads the lake's files for the checksums
    lake = replicator.cluster(LAKE)
    for b in LAKE_BACKENDS:
        lake.add_backend(b, f"s3://{BUCKET}/{LAKE}/{b}")
    root = f"s3://{BUCKET}/{LAKE}"
    where = (
        f"the store AWS_ENDPOINT_URL names, {store.endpoint}"
        if isinstance(store, ReusedStore)
        else f"SeaweedFS (S3) at {store.endpoint}, data in {rel(STORE_DIR)}/"
    )
    console.print(
        f"  {where}; cluster [bold]{LAKE}[/] with backends {', '.join(LAKE_BACKENDS)} in {root}/"
    )
    procs = Workers(worker_env | store.env(), LOG_DIR, pid_dir=PID_DIR)
    for b in LAKE_BACKENDS:
        procs.backend(LAKE, b)
    procs.wait_ready(120)
    report = replicate(
        replicator, "into the lake", "demo-lake", create_target=True, src=TARGET, dst=LAKE
    )
    equal = report.state == "COMMITTED" and _same(replicator)
    console.print(
        f"  check: {TARGET}:{TABLE} and {LAKE}:{TABLE} "
        + ("[green]are equal[/]" if equal else "[red]differ[/]")
        + " in all partitions (rows, checksum, version, epoch)"
    )
    return LakeResult(report, equal, root)


def _reuse_store(store: ReusedStore) -> ReusedStore:
    """The store the environment names, if it answers for the demo's bucket; what an earlier
    demo left in the lake's prefixes is removed (its catalog was dropped with the others)."""
    try:
        for b in LAKE_BACKENDS:
            objects = ObjectStorage(f"s3://{BUCKET}/{LAKE}/{b}")
            objects.check()
            objects.delete_tree("data")
            objects.delete_tree("staging")
    except ReplicatorError as exc:
        raise SetupError(
            f"AWS_ENDPOINT_URL names {store.endpoint}, which does not serve bucket {BUCKET} with "
            f"these keys ({one_line(exc)}); create the bucket there, or unset AWS_ENDPOINT_URL "
            "and the demo starts a SeaweedFS of its own"
        ) from None
    return store


def _start_store(store: SeaweedServer) -> SeaweedServer:
    STORE_PID_DIR.mkdir(parents=True, exist_ok=True)
    store.start(on_spawn=lambda pid: (STORE_PID_DIR / "seaweedfs.pid").write_text(f"{pid}\n"))
    store.make_bucket(BUCKET)
    return store


def _same(replicator: Replicator) -> bool:
    def sums(cluster: str) -> list[Any]:
        return [
            (c.partition, c.rows, c.checksum, c.version, c.epoch)
            for c in replicator.cluster(cluster).checksum(TABLE)
        ]

    with console.status(f"Computing checksums of {TABLE} on {LAKE}..."):
        return sums(TARGET) == sums(LAKE)
