"""Replication into and inside object storage, against rclone moving the same files there.

    .venv/bin/python -m bench.lake [--scale 2] [--parts 4]

One private SeaweedFS (S3), a private Redis, the machine's Postgres. Three clusters of two
backends, one worker process each: ``lsrc`` in directories (its transfer server, mutual TLS),
``lake1`` and ``lake2`` in prefixes of one bucket. TPC-H lineitem is loaded into ``lsrc``, then:

- local -> lake: a replication job (submit -> COMMITTED: download over TLS, verify xxh3,
  upload), against ``rclone copy`` of the same rowset files from ``lsrc``'s data directories to
  the same SeaweedFS (4 transfers, rclone's default; it checks each upload's MD5);
- lake -> lake: a replication job between two prefixes of the bucket (copied inside the store),
  against ``rclone copy`` between the same prefixes (server-side copy as well).

The tables' checksums (every row read) must be equal after each job. Writes its section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    OUT_DIR,
    BenchCluster,
    create_lineitem,
    drop_database,
    lineitem_files,
    machine_info,
    replicator,
    retry_busy,
    total_bytes,
    unique_name,
    write_section,
)
from bench.run import (
    FULL,
    Run,
    load_parallel,
    log,
    replicate_timed,
    running,
    start_backend_workers,
    start_run,
    table_files,
)
from frontends.servers import SeaweedServer

SECTION = "## Object storage (bench.lake)"
LINEITEM = "tpch.lineitem"
BUCKET = "lake"


@contextlib.contextmanager
def lake_cluster(prefix: str, run: Run, backends: int = 2) -> Iterator[BenchCluster]:
    """A fresh cluster whose backends keep their files under s3://lake/<name>/; its catalog is
    dropped on exit (the objects go with the private SeaweedFS)."""
    name = unique_name(prefix)
    handle = replicator(run.settings).cluster(name)
    bc = BenchCluster(name, run.settings, handle, Path("/nonexistent"))
    try:
        retry_busy(handle.init)
        for i in range(1, backends + 1):
            handle.add_backend(f"be{i}", f"s3://{BUCKET}/{name}/be{i}")
        yield bc
    finally:
        drop_database(run.settings.dsn(name))


def _rclone(seaweed: SeaweedServer, *args: str) -> float:
    """Seconds an ``rclone`` command took, configured for ``seaweed`` through its environment
    (remote ``sw``), with a config file of its own (none of the user's)."""
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    env = dict(os.environ) | {
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_SW_TYPE": "s3",
        "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_SW_ENDPOINT": seaweed.endpoint,
        "RCLONE_CONFIG_SW_ACCESS_KEY_ID": seaweed.access_key,
        "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": seaweed.secret_key,
    }
    t0 = time.perf_counter()
    subprocess.run([rclone, *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def _equal(a: BenchCluster, b: BenchCluster) -> bool:
    def sums(bc: BenchCluster) -> list[tuple[str, int, str]]:
        return [(c.partition, c.rows, c.checksum) for c in bc.handle.checksum(LINEITEM)]

    return sums(a) == sums(b)


def measure(run: Run, seaweed: SeaweedServer, scale: float, parts: int) -> dict[str, Any]:
    files = lineitem_files(scale, parts)
    with contextlib.ExitStack() as stack:
        src = run.cluster(stack, "lsrc", 2)
        lake1 = stack.enter_context(lake_cluster("llake1", run))
        lake2 = stack.enter_context(lake_cluster("llake2", run))
        for bc in (src, lake1, lake2):
            retry_busy(create_lineitem, bc.handle, LINEITEM, buckets=16, replication_num=1)
        clusters = [(src, 1), (lake1, 1), (lake2, 1)]
        workers = stack.enter_context(running(start_backend_workers(run, "lake", clusters)))
        load_seconds = load_parallel(run, src, LINEITEM, files)
        src_files = table_files(src.handle, LINEITEM)
        nbytes = total_bytes(src_files)
        log(f"lake: {nbytes / 2**20:.0f} MiB in {len(src_files)} files; rclone up")
        up = [
            _rclone(seaweed, "copy", "--transfers", "4", str(d), f"sw:rclone/up{i}/{r}/")
            for r in range(2)
            for i, d in enumerate(src.data_dirs())
        ]
        # Two rounds each way, best of them: the first also warms SeaweedFS's volumes.
        rclone_up = min(up[0] + up[1], up[2] + up[3])
        log(f"lake: rclone copy up {rclone_up:.2f}s; replicating local -> lake")
        to_lake = replicate_timed(run, src, lake1, LINEITEM, workers=workers)
        assert _equal(src, lake1), "local -> lake: checksums differ"
        lake1_prefix = f"sw:{BUCKET}/{lake1.name}/"
        rclone_ss = min(
            _rclone(seaweed, "copy", "--transfers", "4", lake1_prefix, f"sw:rclone/ss{r}/")
            for r in range(2)
        )
        log(f"lake: rclone server-side copy {rclone_ss:.2f}s; replicating lake -> lake")
        across = replicate_timed(run, lake1, lake2, LINEITEM, workers=workers)
        assert _equal(src, lake2), "lake -> lake: checksums differ"
    return {
        "bench": "lake",
        "bytes": nbytes,
        "files": len(src_files),
        "load_seconds": round(load_seconds, 1),
        "to_lake_seconds": round(to_lake["seconds"], 2),
        "rclone_up_seconds": round(rclone_up, 2),
        "rclone_up_runs": [round(x, 2) for x in up],
        "to_lake_ratio": round(to_lake["seconds"] / rclone_up, 2),
        "to_lake_cpu_seconds": to_lake.get("cpu_seconds"),
        "across_seconds": round(across["seconds"], 2),
        "rclone_server_side_seconds": round(rclone_ss, 2),
        "across_ratio": round(across["seconds"] / rclone_ss, 2),
        "across_cpu_seconds": across.get("cpu_seconds"),
        "checksums_equal": True,
    }


def _section(result: dict[str, Any], machine: dict[str, str]) -> str:
    mib = result["bytes"] / 2**20
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    up = f"{result['rclone_up_seconds']} s (from the source's disk, MD5 checked)"
    rows = [
        ("local -> object storage (TLS download, xxh3, upload)", result["to_lake_seconds"], up,
         result["to_lake_ratio"]),
        ("object storage -> object storage, one bucket (copied inside the store)",
         result["across_seconds"], f"{result['rclone_server_side_seconds']} s (server-side)",
         result["across_ratio"]),
    ]  # fmt: skip
    return "\n".join(
        [
            SECTION,
            "",
            f"`.venv/bin/python -m bench.lake` — {when}, {machine.get('cpu', '?')}, "
            f"{machine.get('cores', '?')} cores. {mib:.0f} MiB of lineitem in {result['files']} "
            "rowset files; one private SeaweedFS; every table's checksums (every row) equal "
            "after each job.",
            "",
            "| way | replication job | rclone copy, same files, same store | ratio |",
            "| --- | --- | --- | --- |",
            *(f"| {way} | {ours} s | {theirs} | {ratio}x |" for way, ours, theirs, ratio in rows),
            "",
            "```",
            json.dumps(result),
            "```",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=2, help="TPC-H scale factor (1 = 220 MB)")
    ap.add_argument("--parts", type=int, default=4, help="files, each loaded as a transaction")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = ap.parse_args(argv)
    workdir = OUT_DIR / "seaweed" / time.strftime("%m%d%H%M%S")
    seaweed = SeaweedServer(workdir).start()
    try:
        os.environ.update(seaweed.env())  # the workers start with this environment
        for bucket in (BUCKET, "rclone"):
            seaweed.make_bucket(bucket)
        with start_run(FULL, False, False, False) as run:
            result = measure(run, seaweed, args.scale, args.parts)
            run.record(result)
            write_section(args.results, SECTION, _section(result, machine_info()))
    finally:
        seaweed.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
