"""Load benchmark: TPC-H lineitem into a 4-partition x 16-bucket table, against ``cp``.

    .venv/bin/python bench/load.py [--scale-factor 1] [--backends 1] [--replication-num 1]

Generates lineitem with tpchgen-cli (cached under bench/out/data/), creates a throw-away cluster,
loads the Parquet file(s) as one transaction, checks that the table holds every row, then times
``cp`` (and ``rsync``) of the rowset files the load wrote, on the same disk. Prints one JSON line
and one human-readable line; removes the cluster and its files afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MB,
    bench_cluster,
    create_lineitem,
    emit,
    lineitem_files,
    load_source,
    parquet_rows,
    scratch_dir,
    time_cp,
    time_rsync,
    total_bytes,
)

TABLE = "tpch.lineitem"
BUCKETS = 16


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scale-factor", type=float, default=1, help="TPC-H scale factor (1 = 6M rows)"
    )
    ap.add_argument("--backends", type=int, default=1, help="backends in the bench cluster")
    ap.add_argument("--replication-num", type=int, default=1, help="replicas per tablet")
    ap.add_argument(
        "--parts",
        type=int,
        default=None,
        help="have tpchgen write this many files (loaded as one transaction)",
    )
    ap.add_argument("--no-rsync", action="store_true", help="skip the rsync baseline")
    args = ap.parse_args(argv)
    if args.replication_num > args.backends:
        ap.error("--replication-num cannot exceed --backends")

    t0 = time.perf_counter()
    files = lineitem_files(args.scale_factor, args.parts)
    gen_seconds = time.perf_counter() - t0
    rows_in = parquet_rows(files)
    input_bytes = total_bytes(files)

    with bench_cluster("load", args.backends) as bc:
        create_lineitem(bc.handle, TABLE, buckets=BUCKETS, replication_num=args.replication_num)

        source = load_source(files)
        start = time.perf_counter()
        result = bc.handle.load(TABLE, source, label=f"bench-load-{bc.name}")
        seconds = time.perf_counter() - start

        start = time.perf_counter()
        checksums = bc.handle.checksum(TABLE)
        checksum_seconds = time.perf_counter() - start
        rows_stored = sum(c.rows for c in checksums)
        if rows_stored != rows_in or result.rows != rows_in:
            raise SystemExit(
                f"row count mismatch: generated {rows_in}, load reported {result.rows}, "
                f"checksum counts {rows_stored}"
            )

        out_files = bc.data_files()
        output_bytes = total_bytes(out_files)
        with scratch_dir("load_cp") as dst:
            cp_seconds = time_cp(bc.data_dirs(), dst)
        rsync_seconds = None
        if not args.no_rsync:
            with scratch_dir("load_rsync") as dst:
                rsync_seconds = time_rsync(bc.data_dirs(), dst)

    out = {
        "bench": "load",
        "scale_factor": args.scale_factor,
        "backends": args.backends,
        "replication_num": args.replication_num,
        "partitions": len(checksums),
        "buckets": BUCKETS,
        "input_files": len(files),
        "rows": rows_in,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows_in / seconds),
        "input_mb": round(input_bytes / MB, 1),
        "output_mb": round(output_bytes / MB, 1),
        "output_files": len(out_files),
        "mb_per_s": round(output_bytes / MB / seconds, 1),
        "cp_seconds": round(cp_seconds, 3),
        "ratio_to_cp": round(seconds / cp_seconds, 1),
        "rsync_seconds": None if rsync_seconds is None else round(rsync_seconds, 3),
        "checksum_seconds": round(checksum_seconds, 3),
        "generate_seconds": round(gen_seconds, 3),
        "partition_rows": {c.partition: c.rows for c in checksums},
    }
    emit(out)
    rsync_txt = "" if rsync_seconds is None else f", rsync -a {rsync_seconds:.2f}s"
    print(
        f"load: {rows_in:,} rows in {seconds:.2f}s = {out['rows_per_s']:,} rows/s, "
        f"{out['mb_per_s']} MB/s ({out['output_mb']} MB in {len(out_files)} files from "
        f"{out['input_mb']} MB input) | cp -r of the same files {cp_seconds:.2f}s{rsync_txt} "
        f"-> load is {out['ratio_to_cp']}x cp | checksum {checksum_seconds:.2f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
