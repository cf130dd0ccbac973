"""Replication between hosts that share nothing but a network: see conftest.py for the rig."""

from __future__ import annotations

import re
import time

from app.client import Job
from app.replication.state import JobState
from tests.harness import wait_until
from tests.multihost.conftest import BACKENDS, DST, SRC, TABLE, MultiHost, record

MiB = 1024 * 1024
CHUNK = 1024 * 1024  # app.transfer.client.CHUNK


def replicate(mh: MultiHost, target: str, **kw: object) -> Job:
    return mh.replicator.replicate(f"{SRC}:{TABLE}", f"{DST}:{target}", **kw)  # type: ignore[arg-type]


def committed(job: Job, timeout: float = 180) -> Job:
    job.wait(timeout)
    assert job.state is JobState.COMMITTED, (job, job.message, [str(e) for e in job.events])
    return job


def test_storage_is_private_to_its_host(mh: MultiHost) -> None:
    """A source file exists on the source host and cannot be opened from the target host, the
    coordinator host or the root namespace."""
    files = mh.hostcmd("src", "files", SRC)
    assert files, "the source load wrote no files"
    path = files[0][0]
    assert path.startswith(mh.root("src", "be1")) or path.startswith(mh.root("src", "be2"))
    assert mh.hostcmd("src", "probe", path) == "opened"
    assert mh.hostcmd("dst", "probe", path) == "FileNotFoundError"
    assert mh.hostcmd("coord", "probe", path) == "FileNotFoundError"
    try:
        open(path, "rb").close()
        raise AssertionError(f"{path} is visible in the root namespace")
    except FileNotFoundError:
        pass


def test_full_then_incremental(mh: MultiHost) -> None:
    mh.configure(bandwidth=0.0, serving_cap=0.0)
    target = mh.target_table("lineitem", buckets=4, replicas=2)
    t0 = time.monotonic()
    full = committed(replicate(mh, target))
    full_sec = time.monotonic() - t0
    src_content = mh.content(SRC, TABLE)
    assert mh.content(DST, target) == src_content
    assert not any(t.incremental for t in full.tasks() if t.kind == "APPLY")

    loaded = mh.hostcmd("src", "load", SRC, TABLE, "0.01", "sf-increment")
    t0 = time.monotonic()
    incr = committed(replicate(mh, target))
    incr_sec = time.monotonic() - t0
    src_after = mh.content(SRC, TABLE)
    assert src_after != src_content
    assert mh.content(DST, target) == src_after
    applies = [t for t in incr.tasks() if t.kind == "APPLY"]
    assert applies and all(t.incremental for t in applies)
    full_bytes = sum(t.bytes_total for t in full.tasks() if t.kind == "APPLY")
    incr_bytes = sum(t.bytes_total for t in applies)
    assert incr_bytes < full_bytes / 5
    rows = sum(int(p[3]) for p in src_after)  # type: ignore[arg-type]
    record(
        "full_then_incremental",
        full_sec=round(full_sec, 1),
        incremental_sec=round(incr_sec, 1),
        full_bytes=full_bytes,
        incremental_bytes=incr_bytes,
        rows=rows,
        increment=loaded,
    )
