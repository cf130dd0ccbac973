"""Backups into object storage and restores from it, against rclone moving the same files there.

    .venv/bin/python -m bench.backup [--scale 5] [--parts 5] [--partition p1994_1995] [--profile]

One private SeaweedFS (S3), a private Redis, the machine's Postgres. Three clusters of two
backends in directories, one worker process each: ``bksrc`` (the backed-up table), ``bkpart``
and ``bkfull`` (fresh clusters the restores create the table in). The repository is a prefix of
one bucket of the SeaweedFS. TPC-H lineitem (4 partitions x 16 buckets, one replica, >= 1 GiB of
rowset files at the default scale) is loaded into ``bksrc`` in ``--parts`` transactions, then:

- full backup: a backup job (submit -> COMMITTED: snapshot tasks, then upload tasks on the
  source backends' queues, 4 upload threads per worker process, every byte hashed with xxh3 on
  its way up and checked against the catalog's checksum), against ``rclone copy`` of the same
  rowset files (the source backends' ``data/`` directories) to another prefix of the same
  bucket: one rclone process with 4 transfers (its default) and with 8 (as many streams as the
  backup's 2 x 4 threads), once before and once after the backup; the best of the four is the
  baseline. rclone checks each upload's MD5 (the ETag the store returns);
- incremental backup: 1% more rows loaded into the source (the head of the first generated
  file: every partition changes), backed up again into the same repository; what it uploaded
  against everything its manifest names (the rest was in the repository already);
- restores of the full backup (not the newest: the source has moved on since): one partition
  into ``bkpart``, then every partition into ``bkfull``, each a replication job whose source is
  the repository (submit -> COMMITTED, the submit's object check and source catalog included);
  the partition's time against its share of the backup's bytes times the full restore's time.

Every timed step (each rclone run, each job) starts after ``sync``, so that none pays for the
previous one's writeback (a first run without it, on a machine busy with other tests too, took
2.19x rclone for the backup, and its rclone runs after the backup 40-55% longer than before).
After each restore the target's checksums (every row read back) must equal the source's, taken
when the full backup was (before the 1% load); a difference fails the run. Then ``verify``
re-hashes every object of the repository. Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.backup.handle import RepositoryHandle
from app.backup.manifest import Manifest
from app.client import Job
from app.replication.state import JobState
from bench.common import (
    BENCH_DIR,
    OUT_DIR,
    BenchCluster,
    bench_cluster,
    create_lineitem,
    lineitem_files,
    machine_info,
    parquet_rows,
    retry_busy,
    sync_disks,
    total_bytes,
    write_section,
)
from bench.lake import _rclone
from bench.run import (
    FULL,
    CpuMeter,
    ProfileWindow,
    Run,
    cpu_roles,
    head_rows,
    load_parallel,
    log,
    phases,
    proc_cpu,
    running,
    start_backend_workers,
    start_run,
    table_files,
    wait_jobs,
)
from frontends.servers import SeaweedServer
from frontends.supervise import Workers

SECTION = "## Backups and restores (bench.backup)"
LINEITEM = "tpch.lineitem"
BUCKET = "bench"
GiB = 1 << 30
TARGETS = {"backup": 1.2, "incremental": 0.02, "restore": 1.2}  # x rclone, share, x share


@dataclass
class Rig:
    run: Run
    seaweed: SeaweedServer
    workers: Workers
    src: BenchCluster
    part: BenchCluster
    full: BenchCluster
    repo: RepositoryHandle[Job]


def rclone_up(rig: Rig, transfers: int, prefix: str) -> dict[str, Any]:
    """One ``rclone copy`` of the source backends' data/ directories into ``prefix`` of the
    bucket: seconds, and the CPU seconds of the rclone process."""
    assert rig.seaweed.proc is not None
    sync_disks()
    weed = proc_cpu(rig.seaweed.proc.pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = _rclone(
        rig.seaweed, "copy", "--transfers", str(transfers), "--include", "/be*/data/**",
        str(rig.src.root), f"sw:{BUCKET}/rclone/{prefix}/",
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    weed = proc_cpu(rig.seaweed.proc.pid) - weed
    log(f"backup: rclone copy --transfers {transfers} ({prefix}) {seconds:.2f}s")
    return {"transfers": transfers, "seconds": round(seconds, 2),
            "cpu_seconds": {"rclone": round(cpu, 2), "seaweedfs": round(weed, 2)}}  # fmt: skip


def timed_job(
    rig: Rig, label: str, submit: Callable[[], Job], dst: BenchCluster, timeout: float = 900
) -> dict[str, Any]:
    """submit -> COMMITTED of a backup (``dst`` is then the source) or restore job, as a client
    sees it (after a ``sync``, as each rclone run), with the CPU seconds of the processes that
    took part; a job that does not commit fails the run."""
    roles = cpu_roles(rig.run, rig.workers, rig.src, dst)
    if dst is rig.src:
        del roles["target workers"]
    assert rig.seaweed.proc is not None
    pid = rig.seaweed.proc.pid
    roles["seaweedfs"] = lambda: [pid]
    sync_disks()
    meter = CpuMeter(roles)
    profiles = ProfileWindow(rig.run, label)
    wall = time.time()
    t0 = time.perf_counter()
    job = retry_busy(submit)
    t_submitted = time.perf_counter()
    t1, states = wait_jobs([job], timeout)
    job.refresh()
    if job.state is not JobState.COMMITTED:
        raise RuntimeError(f"{label}: job {job.ref} ended {states[job.id]}: {job.message}")
    time.sleep(0.3)  # the last nudge tick
    out = {
        "job": job.ref,
        "seconds": round(t1 - t0, 3),
        "submit_seconds": round(t_submitted - t0, 3),
        "phases": phases(dst.handle, job.id, wall),
        "cpu_seconds": meter.read(),
    }
    profiles.summarize()
    log(f"backup: {label} {out['seconds']:.2f}s ({job.ref})")
    if job.record.backup:
        out["backup"] = job.record.backup
    return out


def sums(bc: BenchCluster, parts: list[str] | None = None) -> list[tuple[str, int, str]]:
    """(partition, rows, checksum) of every partition (or of ``parts``): every row read."""
    return [(c.partition, c.rows, c.checksum) for c in bc.handle.checksum(LINEITEM, parts)]


def newest(rig: Rig, name: str) -> Manifest:
    m = rig.repo.backups(LINEITEM).backups[-1]
    if m.name != name:
        raise RuntimeError(f"the newest backup listed is {m.name}, not the job's {name}")
    return m


def full_backup(rig: Rig, nbytes: int) -> tuple[dict[str, Any], Manifest]:
    """rclone twice, the backup, rclone twice again; the source's checksums at the backup."""
    before = [rclone_up(rig, t, f"r1-t{t}") for t in (4, 8)]
    backup = timed_job(rig, "full-backup", lambda: rig.repo.backup(f"{rig.src.name}:{LINEITEM}"),
                       rig.src)  # fmt: skip
    after = [rclone_up(rig, t, f"r2-t{t}") for t in (4, 8)]
    m = newest(rig, backup["backup"])
    if m.bytes != nbytes or m.uploaded_bytes != nbytes:
        raise RuntimeError(
            f"the backup names {m.bytes} bytes and uploaded {m.uploaded_bytes}; the source's "
            f"rowset files are {nbytes} bytes"
        )
    best = min(before + after, key=lambda r: r["seconds"])
    return {
        "bytes": m.bytes,
        "objects": len(m.objects()),
        "uploaded_bytes": m.uploaded_bytes,
        "uploaded_objects": m.uploaded_objects,
        **backup,
        "mib_per_s": round(m.bytes / 2**20 / backup["seconds"], 1),
        "rclone_runs": before + after,
        "rclone_best_seconds": best["seconds"],
        "rclone_best_transfers": best["transfers"],
        "ratio_to_rclone": round(backup["seconds"] / best["seconds"], 2),
    }, m


def incremental_backup(rig: Rig, first: Path, rows_in: int, m1: Manifest) -> dict[str, Any]:
    """1% more rows (every partition changes), then a backup into the same repository."""
    n = max(1, rows_in // 100)
    t0 = time.perf_counter()
    retry_busy(rig.src.handle.load, LINEITEM, head_rows(first, n), label="incremental-1pct")
    load_seconds = time.perf_counter() - t0
    job = timed_job(rig, "incremental-backup",
                    lambda: rig.repo.backup(f"{rig.src.name}:{LINEITEM}"), rig.src)  # fmt: skip
    m2 = newest(rig, job["backup"])
    new = set(m2.objects()) - set(m1.objects())
    before = {p.name: p.version for p in m1.partitions}
    new_bytes = sum(m2.objects()[k].size for k in new)
    if m2.uploaded_bytes != new_bytes:
        raise RuntimeError(f"uploaded {m2.uploaded_bytes} bytes; its new objects are {new_bytes}")
    return {
        "rows": n,
        "load_seconds": round(load_seconds, 2),
        **job,
        "bytes": m2.bytes,
        "uploaded_bytes": m2.uploaded_bytes,
        "uploaded_objects": m2.uploaded_objects,
        "objects": len(m2.objects()),
        "uploaded_fraction": round(m2.uploaded_bytes / m2.bytes, 4),
        "partitions_changed": sorted(p.name for p in m2.partitions if p.version != before[p.name]),
    }


def restores(
    rig: Rig, m1: Manifest, partition: str, at_backup: list[tuple[str, int, str]]
) -> dict[str, Any]:
    """One partition of the full backup, then all of it, each into a fresh cluster; both
    compared with the source as it was at the backup."""
    p = m1.partition(partition)
    if p is None:
        raise RuntimeError(f"the backup has no partition {partition}")
    share = sum(f.size for f in p.files()) / m1.bytes
    one = timed_job(rig, f"restore-{partition}", lambda: rig.repo.restore(
        LINEITEM, to=rig.part.name, partitions=[partition], backup=m1.name), rig.part)  # fmt: skip
    t0 = time.perf_counter()
    got = sums(rig.part)
    if got != [c for c in at_backup if c[0] == partition]:
        raise RuntimeError(f"restore of {partition}: checksums differ from the source's: {got}")
    check_part = time.perf_counter() - t0
    full = timed_job(rig, "restore-full", lambda: rig.repo.restore(
        LINEITEM, to=rig.full.name, backup=m1.name), rig.full)  # fmt: skip
    t0 = time.perf_counter()
    if sums(rig.full) != at_backup:
        raise RuntimeError("full restore: checksums differ from the source's at the backup")
    check_full = time.perf_counter() - t0
    return {
        "partition": partition,
        "partition_bytes": sum(f.size for f in p.files()),
        "share": round(share, 4),
        "partition_restore": one,
        "full_restore": full,
        "ratio": round(one["seconds"] / (share * full["seconds"]), 2),
        "checksums_equal": True,
        "checksum_seconds": {"partition": round(check_part, 1), "full": round(check_full, 1)},
    }


def verify(rig: Rig) -> dict[str, Any]:
    t0 = time.perf_counter()
    v = rig.repo.verify()
    if not v.ok:
        raise RuntimeError(f"repository verify failed: {v}")
    return {"ok": v.ok, "objects": v.objects, "bytes": v.bytes,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def measure(run: Run, seaweed: SeaweedServer, args: argparse.Namespace) -> dict[str, Any]:
    t_start, load_at_start = time.perf_counter(), os.getloadavg()
    files = lineitem_files(args.scale, args.parts)
    rows_in = parquet_rows(files)
    log(f"backup: lineitem SF{args.scale:g}, {rows_in:,} rows in {len(files)} files ready")
    with contextlib.ExitStack() as stack:
        src = run.cluster(stack, "bksrc", 2)
        part = stack.enter_context(bench_cluster("bkpart", 2, run.settings))
        full = stack.enter_context(bench_cluster("bkfull", 2, run.settings))
        retry_busy(create_lineitem, src.handle, LINEITEM, buckets=16, replication_num=1)
        clusters = [(src, 1), (part, 1), (full, 1)]
        workers = stack.enter_context(running(start_backend_workers(run, "backup", clusters)))
        repo = run.replicator.repository(f"s3://{BUCKET}/repo-{run.run_id}")
        rig = Rig(run, seaweed, workers, src, part, full, repo)
        load_seconds = load_parallel(run, src, LINEITEM, files)
        src_files = table_files(src.handle, LINEITEM)
        nbytes = total_bytes(src_files)
        dirs = total_bytes(src.data_files())
        log(f"backup: {nbytes:,} B in {len(src_files)} rowset files ({dirs:,} B in data/)")
        backup, m1 = full_backup(rig, nbytes)
        t0 = time.perf_counter()
        at_backup = sums(src)
        src_checksum_seconds = time.perf_counter() - t0
        incremental = incremental_backup(rig, files[0], rows_in, m1)
        restored = restores(rig, m1, args.partition, at_backup)
        verified = verify(rig)
    return {
        "bench": "backup",
        "scale": args.scale,
        "rows": rows_in,
        "bytes": nbytes,
        "files": len(src_files),
        "data_dir_bytes": dirs,
        "at_least_1_gib": nbytes >= GiB,
        "load_seconds": round(load_seconds, 1),
        "source_checksum_seconds": round(src_checksum_seconds, 1),
        "full_backup": backup,
        "incremental_backup": incremental,
        "restore": restored,
        "verify": verified,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "loadavg_at_start": [round(x, 2) for x in load_at_start],
    }


def _fmt_met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _where(rs: dict[str, Any]) -> str:
    """Each restore's fixed start (submit, plan, snapshots: up to REPLICATING) and its copy
    (REPLICATING -> COMMITTED); the ratio of the copies alone."""

    def split(job: dict[str, Any]) -> tuple[float, float]:
        start = job["phases"].get("REPLICATING", 0.0)
        return start, job["phases"].get("COMMITTED", job["seconds"]) - start

    (p0, p1), (f0, f1) = split(rs["partition_restore"]), split(rs["full_restore"])
    return (
        f"submit (restore's source catalog made, objects checked) -> REPLICATING: partition "
        f"{p0:.2f} s (submit {rs['partition_restore']['submit_seconds']:.2f} s), full {f0:.2f} s "
        f"(submit {rs['full_restore']['submit_seconds']:.2f} s); REPLICATING -> COMMITTED: "
        f"partition {p1:.2f} s, full {f1:.2f} s = {p1 / (rs['share'] * f1):.2f}x share"
    )


def _rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    b, i, rs = r["full_backup"], r["incremental_backup"], r["restore"]
    one, full = rs["partition_restore"], rs["full_restore"]
    runs = ", ".join(f"{x['seconds']} s (t{x['transfers']})" for x in b["rclone_runs"])
    return [
        ("full backup vs rclone copy",
         f"{b['seconds']} s for {b['bytes'] / GiB:.2f} GiB in {b['objects']} objects "
         f"({b['mib_per_s']} MiB/s); rclone copy best {b['rclone_best_seconds']} s of {runs}",
         f"{b['ratio_to_rclone']}x rclone", f"≤ {TARGETS['backup']}x rclone",
         _fmt_met(b["ratio_to_rclone"] <= TARGETS["backup"])),
        ("incremental backup (+1% rows)",
         f"uploaded {i['uploaded_bytes'] / 2**20:.1f} MiB in {i['uploaded_objects']} objects of "
         f"{i['bytes'] / GiB:.2f} GiB named ({i['rows']:,} rows added; {i['seconds']} s)",
         f"{i['uploaded_fraction']:.2%}", f"≤ {TARGETS['incremental']:.0%}",
         _fmt_met(i["uploaded_fraction"] <= TARGETS["incremental"])),
        (f"restore one partition ({rs['partition']}) vs full restore",
         f"{one['seconds']} s for {rs['share']:.1%} of the bytes; full restore {full['seconds']} s",
         f"{rs['ratio']}x share", f"≤ {TARGETS['restore']}x share",
         _fmt_met(rs["ratio"] <= TARGETS["restore"])),
        ("(where the restore time goes)", _where(rs), "", "—", "—"),
        ("restored = source at the backup",
         "per-partition checksums (every row) equal after both restores; verify re-hashed "
         f"{r['verify']['objects']} objects ({r['verify']['bytes']:,} B) in "
         f"{r['verify']['seconds']} s", "", "equal", _fmt_met(rs["checksums_equal"])),
        ("backup ≥ 1 GiB", f"{r['bytes']:,} B of rowset files ({r['files']} files)", "",
         "≥ 1 GiB", _fmt_met(r["at_least_1_gib"])),
    ]  # fmt: skip


def _section(result: dict[str, Any], machine: dict[str, str], argv: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return "\n".join(
        [
            SECTION,
            "",
            f"`.venv/bin/python -m bench.backup{argv}` (`make bench-backup`) — {when}, "
            f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, commit "
            f"{machine.get('commit', '?')}; total {result['total_seconds'] / 60:.1f} min; load "
            f"average at start {', '.join(map(str, result['loadavg_at_start']))}. "
            "One private SeaweedFS; the source cluster and each restore's target have 2 "
            "backends, one worker process each. Backups: submit -> COMMITTED; every byte "
            "hashed (xxh3) on its way up. rclone copy: the same rowset files from the source's "
            "data/ directories to another prefix of the same bucket (MD5 of each upload checked "
            "by rclone), 4 and 8 transfers, before and after the backup; the best is compared. "
            "Each timed step starts after `sync`. Restores: one partition, then all, of the "
            "first backup, each into a fresh cluster; submit -> COMMITTED, the submit's object "
            "check and source catalog included.",
            "",
            "| point | measured | ratio | target | met? |",
            "| --- | --- | --- | --- | --- |",
            *(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in _rows(result)),
            "",
            "```",
            json.dumps(result),
            "```",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=5, help="TPC-H scale factor (5 = 1.19 GiB)")
    ap.add_argument("--parts", type=int, default=5, help="files, each loaded as a transaction")
    ap.add_argument("--partition", default="p1994_1995", help="the partition restored alone")
    ap.add_argument("--profile", action="store_true", help="cProfile every task (bench.run)")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = ap.parse_args(argv)
    workdir = OUT_DIR / "seaweed" / time.strftime("%m%d%H%M%S")
    seaweed = SeaweedServer(workdir).start()
    try:
        os.environ.update(seaweed.env())  # the workers start with this environment
        seaweed.make_bucket(BUCKET)
        with start_run(FULL, False, False, args.profile) as run:
            result = measure(run, seaweed, args)
            run.record(result)
            shown = "".join(
                f" --{k} {getattr(args, k)}"
                for k in ("scale", "parts", "partition")
                if getattr(args, k) != ap.get_default(k)
            ) + (" --profile" if args.profile else "")  # fmt: skip
            write_section(args.results, SECTION, _section(result, machine_info(), shown))
    finally:
        seaweed.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
