"""Replication between hosts that share nothing but a network: see conftest.py for the rig."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from app.client import Job
from app.replication.finish import hold_owner
from app.replication.state import JobState
from app.replication.taskrows import TaskKind
from app.transfer import tokens
from tests.harness import wait_until
from tests.multihost.conftest import (
    BACKENDS,
    DST,
    INCREMENT_SCALE,
    LAKE,
    SRC,
    SRC_PORTS,
    TABLE,
    MultiHost,
    record,
)

MiB = 1024 * 1024
CHUNK = 1024 * 1024  # app.transfer.client.CHUNK
PART = "p1998"
# Fast: the link budget the rate test measures, two apply processes per target backend.
FAST = {"bandwidth": 40.0, "serving_cap": 0.0, "dst_concurrency": 2}
# Slow: files stay in flight for a while (the source serves at that pace too, so the bytes are
# on the wire, not already in socket buffers, when a test strikes).
SLOW = {"bandwidth": 8.0, "serving_cap": 8.0, "dst_concurrency": 1}


def replicate(mh: MultiHost, target: str, partitions: list[str] | None = None) -> Job:
    return mh.replicator.replicate(f"{SRC}:{TABLE}", f"{DST}:{target}", partitions=partitions)


def committed(job: Job, timeout: float = 180) -> Job:
    job.wait(timeout)
    assert job.state is JobState.COMMITTED, (job, job.message, [str(e) for e in job.events])
    return job


def versions(mh: MultiHost, cluster: str, table: str) -> list[tuple[str, int, int]]:
    return [
        (p.name, p.visible_version, p.version_epoch)
        for p in mh.replicator.cluster(cluster).partitions(table)
    ]


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
    # After the full job: versions and epochs, from the catalogs (content is compared, on the
    # hosts that hold the files, after the incremental job).
    assert versions(mh, DST, target) == versions(mh, SRC, TABLE)
    assert not any(t.incremental for t in full.tasks() if t.kind == TaskKind.APPLY)

    loaded = mh.load_source(INCREMENT_SCALE, "sf-increment")
    t0 = time.monotonic()
    incr = committed(replicate(mh, target))
    incr_sec = time.monotonic() - t0
    src_after, dst_after = mh.both(target)
    assert dst_after == src_after
    assert all(p[1] == 3 for p in dst_after), dst_after  # create, load, increment
    applies = [t for t in incr.tasks() if t.kind == TaskKind.APPLY]
    assert applies and all(t.incremental for t in applies)
    full_bytes = sum(t.bytes_total for t in full.tasks() if t.kind == TaskKind.APPLY)
    incr_bytes = sum(t.bytes_total for t in applies)
    assert incr_bytes < full_bytes / 5
    rows = sum(int(p[3]) for p in src_after)
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
    return sum(int(m.group(1)) for b in BACKENDS for m in pattern.finditer(mh.log(f"be.{DST}.{b}")))


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
    rates = [((b1 - b0) / (t1 - t0), t0, t1) for (t0, b0), (t1, b1) in itertools.pairwise(samples)]
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
    src_part, dst_part = mh.both(target, PART)
    assert dst_part == src_part and len(dst_part) == 1
    refused = sum(mh.log(f"be.{DST}.{b}").count("refused") - refused_before[b] for b in BACKENDS)
    files = sum(
        len(rs["files"])
        for t in job.tasks()
        if t.kind == TaskKind.APPLY
        for rs in t.manifest["rowsets"]
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
    partial: list[list[Any]] = []

    def half_received() -> bool:
        # Only the target host sees its staging directory.
        staged = mh.hostcmd("dst", "staged", str(mh.net.mount_dir))
        partial[:] = [f for f in staged if int(f[1]) >= CHUNK]
        return bool(partial)

    wait_until(half_received, 60, "a partly received staged file on the target", interval=0.2)
    cut_at = time.monotonic()
    mh.src.link(False)
    try:
        time.sleep(0.2)
        sent_at_cut = mh.src.rx_bytes()
        time.sleep(1.8)
        sent_during_cut = mh.src.rx_bytes() - sent_at_cut
    finally:
        mh.src.link(True)
    committed(job, timeout=180)
    job_sec = time.monotonic() - cut_at
    src_content, dst_content = mh.both(target)
    assert dst_content == src_content
    applies = [t for t in job.tasks() if t.kind == TaskKind.APPLY]
    sizes = sum(int(t.bytes_total) for t in applies)
    files = sum(len(rs["files"]) for t in applies for rs in t.manifest["rowsets"])
    received = apply_bytes_received(mh, job)
    resumes = {b: mh.log(f"be.{DST}.{b}").count("resuming at byte") - before[b] for b in BACKENDS}
    record(
        "link_cut_mid_file",
        staged_when_cut=partial,
        link_bytes_during_cut=sent_during_cut,
        files=files,
        file_bytes=sizes,
        bytes_received=received,
        fetched_twice=received - sizes,
        resumes=resumes,
        sec_from_cut_to_commit=round(job_sec, 1),
    )
    assert sent_during_cut == 0, "bytes left the source host while its link was down"
    assert sum(int(t.bytes_done) for t in applies) == sizes
    assert 0 <= received - sizes < CHUNK * max(1, sum(resumes.values()))


def test_source_transfer_servers_killed_mid_file(mh: MultiHost) -> None:
    """Both source transfer servers are SIGKILLed while a file is half received, and started
    again: the downloads resume with Range where they broke (nothing verified is fetched
    again), and the job commits with equal content."""
    mh.configure(**SLOW)
    [target] = mh.target_tables(["lineitem_kill"], buckets=4, replicas=1)
    before = {b: mh.log(f"be.{DST}.{b}").count("resuming at byte") for b in BACKENDS}
    job = replicate(mh, target)

    def half_received() -> bool:
        staged = mh.hostcmd("dst", "staged", str(mh.net.mount_dir))
        return any(int(f[1]) >= CHUNK for f in staged)

    wait_until(half_received, 60, "a partly received staged file on the target", interval=0.2)
    mh.restart([mh.transfer_name("src", b) for b in BACKENDS])
    committed(job, timeout=180)
    src_content, dst_content = mh.both(target)
    assert dst_content == src_content
    applies = [t for t in job.tasks() if t.kind == TaskKind.APPLY]
    sizes = sum(int(t.bytes_total) for t in applies)
    received = apply_bytes_received(mh, job)
    resumes = {b: mh.log(f"be.{DST}.{b}").count("resuming at byte") - before[b] for b in BACKENDS}
    record("transfer_servers_killed", bytes=sizes, fetched_twice=received - sizes, resumes=resumes)
    logs = "".join(mh.log(f"be.{DST}.{b}") for b in BACKENDS)
    assert re.search(r"resuming at byte [1-9]", logs), "no download was cut off mid-file"
    # Files that had not begun when the servers died fail over, then their tasks are retried;
    # a file cut off mid-way is continued (by the retry too), so nothing crosses twice.
    assert 0 <= received - sizes < CHUNK * sum(resumes.values())


class Prober:
    """tests/multihost/probe.py running on a host: requests sent from there, over the network."""

    def __init__(self, mh: MultiHost, host: str) -> None:
        certs = mh.pki[DST].backends["be1"]
        args = [sys.executable, "-m", "tests.multihost.probe", str(mh.pki[SRC].ca_cert),
                str(certs.client_cert), str(certs.client_key)]  # fmt: skip
        self.proc = subprocess.Popen(
            mh.net.hosts[host].argv(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=mh.env(host), start_new_session=True,
        )  # fmt: skip

    def ask(self, **req: object) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


TLS_CASES = ("plain HTTP to the TLS port", "client without a certificate")
refusal_results: dict[str, tuple[dict[str, Any], list[str]]] = {}
left_staged: list[list[Any]] = []
left_installed: list[list[Any]] = []


def test_refusals_over_the_network(mh: MultiHost) -> None:
    """Requests from the target host that must be refused: nothing served, one log line on the
    source's transfer server for each."""
    mh.configure(**SLOW)
    [target] = mh.target_tables(["lineitem_refusals"], buckets=4, replicas=1)
    job = replicate(mh, target)
    secret = mh.secrets[SRC].encode()
    server = mh.transfer_name("src", "be2")
    port = SRC_PORTS["be2"]

    def token_row() -> Any:
        rows = mh.rows(
            DST, "SELECT transfer_token, manifest, src_tablet_id FROM job_tasks "
            "WHERE job_id = :j AND kind = :k AND transfer_token IS NOT NULL ORDER BY id",
            j=job.id,
            k=str(TaskKind.APPLY),
        )  # fmt: skip
        return rows or None

    found: list[Any] = []

    def have_tokens() -> bool:
        found.append(token_row())
        return bool(found[-1])

    wait_until(have_tokens, 60, "the job's tokens")
    rows = found[-1]
    real = rows[0].transfer_token
    grant = tokens.verify({"k1": secret}, real, now=time.time())
    a = next(iter(grant.files))
    others = [
        (r.src_tablet_id, rs["id"], f["name"])
        for r in rows
        for rs in r.manifest["rowsets"]
        for f in rs["files"]
    ]
    b = next(f for f in others if not grant.allows(*f))

    def path(ref: tuple[int, str, str]) -> str:
        return f"/v1/be2/{ref[0]}/{ref[1]}/{ref[2]}"

    def minted(files: list[tuple[int, str, str]], *, key: bytes = secret, job_id: int = job.id,
               expires: int | None = None) -> str:  # fmt: skip
        return tokens.mint(
            key,
            tokens.Grant(
                SRC, DST, job_id, hold_owner(DST, job_id),
                expires if expires is not None else int(time.time()) + 600, tuple(files),
            ),
        )  # fmt: skip

    probe = Prober(mh, "dst")
    try:

        def send(**req: object) -> tuple[dict[str, Any], list[str]]:
            lines = mh.log(server).splitlines()
            answer = probe.ask(host=mh.src.address, port=port, **{"mode": "mtls", **req})
            time.sleep(0.3)  # the server's log line is written after the answer
            new = mh.log(server).splitlines()[len(lines) :]
            # The job's own batch downloads log a line each; they are not the probe's.
            return answer, [line for line in new if "batch for job" not in line]

        # The real token, for its own file: served (a control for everything below).
        served, _ = send(path=path(a), token=real, range="bytes=0-15")
        assert served.get("status") == 206 and served.get("length") == 16, served

        cases = {
            "forged token": dict(path=path(a), token=minted([a], key=b"f" * 32)),
            "expired token": dict(path=path(a), token=minted([a], expires=int(time.time()) - 60)),
            "another job's token": dict(path=path(a), token=minted([a], job_id=job.id + 1000)),
            "token for file A used for file B": dict(path=path(b), token=real),
            "name with ..": dict(
                path=f"/v1/be2/{a[0]}/{a[1]}/..%2F..%2F..%2F.olap-replicator-root", token=real
            ),
            "raw .. segments": dict(
                path=f"/v1/be2/{a[0]}/{a[1]}/../../../../etc/passwd", token=real
            ),
            "absolute path": dict(path=f"/v1/be2/{a[0]}/{a[1]}/%2Fetc%2Fpasswd", token=real),
            TLS_CASES[0]: dict(path=path(a), token=real, mode="plain"),
            TLS_CASES[1]: dict(path=path(a), token=real, mode="nocert"),
        }
        for name, req in cases.items():
            refusal_results[name] = send(**req)

        # Cancel the job: its token stops working once its holds are released (<= 1 s cache).
        assert not job.refresh().state.final, "the job ended before it could be cancelled"
        owner = hold_owner(DST, job.id)
        cancel_at = time.monotonic()
        job.cancel()
        released_at = refused_at = None
        last: tuple[dict[str, Any], list[str]] = ({}, [])
        held_at = cancel_at  # the last moment the holds were seen in place
        while time.monotonic() - cancel_at < 20:
            if released_at is None:
                if mh.scalar(SRC, "SELECT count(*) FROM holds WHERE owner = :o", o=owner):
                    held_at = time.monotonic()
                else:
                    released_at = time.monotonic()
            last = send(path=path(a), token=real, range="bytes=0-15")
            if last[0].get("status") != 206:
                refused_at = time.monotonic()
                break
        if (
            refused_at is not None
            and released_at is None
            and not mh.scalar(SRC, "SELECT count(*) FROM holds WHERE owner = :o", o=owner)
        ):
            # Released between the last look and the refused request (faster now): count from
            # the last moment they were seen, which can only overstate the delay.
            released_at = held_at
        refusal_results["token of a cancelled job"] = last
        job.wait(60)
        # An abort removes what the job staged on the target (DESIGN: "the target is exactly
        # as it was"); only the target host can look.
        # The target's workers do that after the abort: wait for it (or record what is left).
        aborted = {
            f"/data/{r.tablet_id}/{r.id}/"
            for r in mh.rows(
                DST, "SELECT id, tablet_id FROM rowsets WHERE txn_id = :t", t=job.record.txn_id
            )
        }
        deadline = time.monotonic() + 20
        while True:
            left_staged[:] = mh.hostcmd("dst", "staged", str(mh.net.mount_dir))
            left_installed[:] = [
                f for f in mh.hostcmd("dst", "files", DST) if any(a in str(f[0]) for a in aborted)
            ]
            if not (left_staged or left_installed) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        probe.close()

    failures = []
    for name, (answer, lines) in refusal_results.items():
        nothing_served = answer.get("error") or (
            answer.get("status", 0) >= 400 and answer.get("length", 0) < 300
        )
        if not nothing_served:
            failures.append(f"{name}: served {answer}")
        refused = [line for line in lines if "transfer refused" in line]
        if name not in TLS_CASES and (len(lines) != 1 or len(refused) != 1):
            failures.append(f"{name}: expected one log line, got {lines}")
        if refused and mh.dst.address not in refused[0]:
            failures.append(f"{name}: the log line does not name the client {mh.dst.address}")
    record(
        "refusals",
        results={n: [a, len(ls), ls[:1]] for n, (a, ls) in refusal_results.items()},
        cancel_to_refused_sec=round(refused_at - cancel_at, 2) if refused_at else None,
        release_to_refused_sec=(
            round(refused_at - released_at, 2) if refused_at and released_at else None
        ),
        job_state=str(job.state),
        staged_files_left_after_abort=len(left_staged),
        installed_files_left_after_abort=len(left_installed),
    )
    assert not failures, "\n".join(failures)
    assert refused_at is not None, "the cancelled job's token was still honoured after 20 s"
    assert released_at is not None
    # The server caches a job's hold check for 1 s; the probe polls every ~0.35 s.
    assert refused_at - released_at <= 2.0, "revocation took longer than its 1 s cache"
    assert job.state is JobState.ABORTED


def test_tls_refusals_leave_a_log_line(mh: MultiHost) -> None:
    if not refusal_results:
        pytest.skip("test_refusals_over_the_network did not run")
    counts = {name: len(refusal_results[name][1]) for name in TLS_CASES}
    assert counts == dict.fromkeys(TLS_CASES, 1), counts


def test_abort_leaves_nothing_on_target(mh: MultiHost) -> None:
    if not refusal_results:
        pytest.skip("test_refusals_over_the_network did not run")
    assert left_staged == []
    assert left_installed == []


def test_object_storage_across_hosts(mh: MultiHost) -> None:
    """Into a cluster whose backends are in a SeaweedFS on the bridge: downloaded from the
    source host's transfer servers (TLS), uploaded to the store by the lake's workers on the
    target host; then out of it into the target host's directories, read from the store by the
    target's workers. Each table's checksums, read on the host of its workers, equal the
    source's."""
    mh.ensure_running()
    into = committed(
        mh.replicator.replicate(f"{SRC}:{TABLE}", f"{LAKE}:tpch.lake", create_target=True)
    )
    out = committed(
        mh.replicator.replicate(f"{LAKE}:tpch.lake", f"{DST}:tpch.from_lake", create_target=True)
    )
    source = mh.content(SRC, TABLE)
    assert mh.hostcmd("dst", "checksum", LAKE, "tpch.lake") == source
    assert mh.content(DST, "tpch.from_lake") == source
    roots = {r[0] for r in mh.rows(LAKE, "SELECT storage_root FROM backends")}
    assert roots == {f"s3://lake/{b}?endpoint={mh.store.endpoint}" for b in BACKENDS}
    uploaded = sum(t.bytes_done for t in into.tasks() if t.kind == TaskKind.APPLY)
    read_back = sum(t.bytes_done for t in out.tasks() if t.kind == TaskKind.APPLY)
    assert uploaded > 0 and read_back > 0
    record("object_storage_across_hosts", into_lake_bytes=uploaded, out_of_lake_bytes=read_back)


def test_gc_deletes_stale_files_on_the_hosts_that_hold_them(mh: MultiHost) -> None:
    """The beat's GC runs on the coordinator's host, which sees no storage root: each backend's
    worker deletes its own copies of stale rowsets, on its own host; nothing live is touched."""
    mh.ensure_running()
    mh.load_source(INCREMENT_SCALE, f"gc-{time.time_ns()}")  # a second rowset to merge with
    before = mh.hostcmd("src", "checksum", SRC, TABLE, PART)  # not the cached content
    merged, written = mh.hostcmd("src", "compact", SRC, TABLE, PART)
    assert merged > written > 0
    stale = {
        r.id
        for r in mh.rows(
            SRC,
            "SELECT r.id FROM rowsets r WHERE r.state = 'STALE' "
            "AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.rowset_id = r.id)",
        )
    }
    assert len(stale) >= merged

    def stale_dirs() -> list[str]:
        dirs: list[str] = mh.hostcmd("src", "dirs", SRC)
        return [d for d in dirs if d.rsplit("/", 1)[-1] in stale]

    assert stale_dirs()  # on both replicas, on the source's host
    assert mh.hostcmd("coord", "probe", mh.root("src", "be1") + "/.olap-replicator-root") in (
        "FileNotFoundError",
        "PermissionError",
    )
    mh.hostcmd("coord", "beat-gc")
    wait_until(lambda: not stale_dirs(), 90, "stale rowset directories removed", interval=1)
    assert (
        mh.hostcmd("src", "checksum", SRC, TABLE, PART) == before
    )  # the merged rowsets serve the same rows
    # Still STALE until every backend has had time to run (gc.SETTLE_SEC), then DELETED.
    states = {
        r.state
        for r in mh.rows(SRC, "SELECT state FROM rowsets WHERE id = ANY(:ids)", ids=list(stale))
    }
    assert states == {"STALE"}


def test_a_backup_uploads_on_the_source_host_and_a_restore_applies_on_the_target_host(
    mh: MultiHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's files are visible only on its host: its workers upload the backup to the
    store on the bridge; the target's workers read the restore from there. The restored table
    equals the source, its checksums read on the target's host."""
    mh.ensure_running()
    for key, value in mh.store.env().items():  # this process checks the repository's bucket
        monkeypatch.setenv(key, value)
    repo = mh.replicator.repository(f"s3://lake/backups-{time.time_ns()}")
    backup = committed(repo.backup(f"{SRC}:{TABLE}"))
    uploaders = {str(t.worker).split("@")[0] for t in backup.tasks() if t.kind == TaskKind.APPLY}
    assert uploaders and all(w.startswith(f"be.{SRC}.") for w in uploaders), uploaders
    (m,) = repo.backups().backups
    assert m.uploaded_bytes == m.bytes > 0
    restore = committed(repo.restore(TABLE, to=f"{DST}:tpch.restored"))
    appliers = {str(t.worker).split("@")[0] for t in restore.tasks() if t.kind == TaskKind.APPLY}
    assert appliers and all(w.startswith(f"be.{DST}.") for w in appliers), appliers
    assert mh.hostcmd("dst", "checksum", DST, "tpch.restored") == mh.content(SRC, TABLE)
    record("backup_and_restore_across_hosts", backup_bytes=m.bytes, objects=len(m.objects()))
