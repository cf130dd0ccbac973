"""Replication between hosts that share nothing but a network: see conftest.py for the rig."""

from __future__ import annotations

import datetime as dt
import re
import time

from app.client import Job
from app.replication.state import JobState
from tests.harness import wait_until
from tests.multihost.conftest import BACKENDS, DST, SRC, TABLE, MultiHost, record

MiB = 1024 * 1024
CHUNK = 1024 * 1024  # app.transfer.client.CHUNK
PART = "p1998"
# Fast: the link budget the rate test measures, two apply processes per target backend.
FAST = {"bandwidth": 40.0, "serving_cap": 0.0, "dst_concurrency": 2}
# Slow: files stay in flight for a while (the source serves at that pace too, so the bytes are
# on the wire, not already in socket buffers, when a test strikes).
SLOW = {"bandwidth": 8.0, "serving_cap": 8.0, "dst_concurrency": 1}


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
    mh.configure(**FAST)
    [target] = mh.target_tables(["lineitem"], buckets=4, replicas=2)
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


def apply_bytes_received(mh: MultiHost, job: Job) -> int:
    """Body bytes the target's apply tasks received for ``job`` (each message's result, as the
    workers log it: refetched bytes count twice)."""
    pattern = re.compile(rf"succeeded in [0-9.]+s: \{{'job': '{job.ref}',.*'bytes': (\d+)\}}")
    return sum(
        int(m.group(1))
        for b in BACKENDS
        for m in pattern.finditer(mh.log(f"be.{DST}.{b}"))
    )


def max_parallel_applies(mh: MultiHost, refs: set[str]) -> int:
    """The most apply messages of ``refs`` that ran at the same time, from the workers' logs."""
    line = re.compile(
        r"^\[(\S+ \S+): INFO/(ForkPoolWorker-\d+)\] Task replication.apply\[\S+\] "
        r"succeeded in ([0-9.]+)s: \{'job': '([^']+)'",
        re.M,
    )
    edges: list[tuple[float, int]] = []
    for b in BACKENDS:
        for m in line.finditer(mh.log(f"be.{DST}.{b}")):
            if m.group(4) not in refs:
                continue
            end = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            edges += [(end - float(m.group(3)), 1), (end, -1)]
    most = now = 0
    for _, step in sorted(edges):
        now += step
        most = max(most, now)
    return most


def test_link_budget_over_the_network(mh: MultiHost) -> None:
    """Four apply processes (two per target backend) share a 40 MB/s link budget: the bytes
    leaving the source host over a 10-second window stay within 15% of 40 MB/s."""
    mh.configure(**FAST)
    size = sum(int(f[1]) for f in mh.hostcmd("src", "files", SRC)) // 2  # one replica's bytes
    per_job = 2 * size  # two target replicas
    n_jobs = -(-int(15 * 40 * MiB) // per_job)  # keep the link busy for about 15 s
    targets = mh.target_tables([f"lineitem_bw{i}" for i in range(n_jobs)], buckets=4, replicas=2)
    jobs = [replicate(mh, t) for t in targets]
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), mh.src.rx_bytes()))
        if all(j.refresh().state.final for j in jobs):
            break
        time.sleep(0.25)
    for j in jobs:
        committed(j, timeout=1)
    running_max = max_parallel_applies(mh, {j.ref for j in jobs})
    # The busy span: from the first to the last quarter-second that moved over 4 MB/s.
    rates = [
        ((b1 - b0) / (t1 - t0), t0, t1)
        for (t0, b0), (t1, b1) in zip(samples, samples[1:], strict=False)
    ]
    busy = [r for r in rates if r[0] > 4 * MiB]
    assert busy, "the link never carried data"
    start, end = busy[0][1], busy[-1][2]
    busy_sec = end - start
    assert busy_sec >= 12, f"the link was busy only {busy_sec:.1f}s"
    # A 10-second window after the first second (the bucket's burst and the ramp-up).
    w0 = start + 1.0
    first = min(samples, key=lambda s: abs(s[0] - w0))
    last = min(samples, key=lambda s: abs(s[0] - (first[0] + 10)))
    rate = (last[1] - first[1]) / (last[0] - first[0])
    per_second = [
        round((b1 - b0) / (t1 - t0) / MiB, 1)
        for (t0, b0), (t1, b1) in zip(samples[::4], samples[4::4], strict=False)
    ]
    record(
        "link_budget",
        jobs=n_jobs,
        bytes_per_job=per_job,
        busy_sec=round(busy_sec, 1),
        window_sec=round(last[0] - first[0], 2),
        rate_mb_per_sec=round(rate / MiB, 2),
        apply_workers_seen=running_max,
        per_second_mb=per_second,
    )
    assert running_max >= 4, f"only {running_max} apply processes were seen at once"
    assert 0.85 * 40 * MiB <= rate <= 1.15 * 40 * MiB, f"{rate / MiB:.1f} MB/s over the window"


def test_one_source_backend_unreachable(mh: MultiHost) -> None:
    """be1's transfer server is down for the whole job: be2, the other replica of every
    tablet, serves everything and the job commits. (One partition: each file whose first
    candidate is be1 costs the client's whole retry series first, see the report.)"""
    mh.configure(**FAST)
    [target] = mh.target_tables(["lineitem_one_src"], buckets=4, replicas=1)
    down = mh.transfer_name("src", "be1")
    refused_before = {b: mh.log(f"be.{DST}.{b}").count("refused") for b in BACKENDS}
    mh.procs.kill(down)
    try:
        t0 = time.monotonic()
        job = committed(replicate(mh, target, partitions=[PART]), timeout=240)
        job_sec = time.monotonic() - t0
        assert not mh.procs.procs[down].running
    finally:
        mh.ensure_running()
    [copied] = [p for p in mh.content(DST, target) if p[0] == PART]
    assert [copied] == [p for p in mh.content(SRC, TABLE) if p[0] == PART]
    refused = sum(
        mh.log(f"be.{DST}.{b}").count("refused") - refused_before[b] for b in BACKENDS
    )
    files = sum(
        len(rs["files"]) for t in job.tasks() if t.kind == "APPLY" for rs in t.manifest["rowsets"]
    )
    record(
        "one_source_backend_unreachable",
        job_sec=round(job_sec, 1),
        files=files,
        connection_refused_retries=refused,
    )


def test_link_cut_mid_file(mh: MultiHost) -> None:
    """The source host's link goes down for 2 s while a file is half received: the job commits,
    equal, and no more than a chunk per file is fetched twice."""
    mh.configure(**SLOW)
    [target] = mh.target_tables(["lineitem_cut"], buckets=4, replicas=1)
    before = {b: mh.log(f"be.{DST}.{b}").count("resuming at byte") for b in BACKENDS}
    job = replicate(mh, target)
    partial: list[list[object]] = []

    def half_received() -> bool:
        # Only the target host sees its staging directory.
        staged = mh.hostcmd("dst", "staged", str(mh.net.mount_dir))
        partial[:] = [f for f in staged if int(f[1]) >= CHUNK]  # type: ignore[index, call-overload]
        return bool(partial)

    wait_until(half_received, 60, "a partly received staged file on the target", interval=0.2)
    cut_at = time.monotonic()
    mh.src.link(False)
    try:
        time.sleep(2)
    finally:
        mh.src.link(True)
    committed(job, timeout=180)
    job_sec = time.monotonic() - cut_at
    assert mh.content(DST, target) == mh.content(SRC, TABLE)
    applies = [t for t in job.tasks() if t.kind == "APPLY"]
    sizes = sum(int(t.bytes_total) for t in applies)
    files = sum(len(rs["files"]) for t in applies for rs in t.manifest["rowsets"])
    received = apply_bytes_received(mh, job)
    resumes = {
        b: mh.log(f"be.{DST}.{b}").count("resuming at byte") - before[b] for b in BACKENDS
    }
    record(
        "link_cut_mid_file",
        staged_when_cut=partial,
        files=files,
        file_bytes=sizes,
        bytes_received=received,
        fetched_twice=received - sizes,
        resumes=resumes,
        sec_from_cut_to_commit=round(job_sec, 1),
    )
    assert sum(int(t.bytes_done) for t in applies) == sizes
    assert 0 <= received - sizes < CHUNK * max(1, sum(resumes.values()))
