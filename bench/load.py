"""Load benchmark: TPC-H lineitem into a 4-partition x 16-bucket table, against ``cp``.

    .venv/bin/python -m bench.load [--scale-factor 1] [--backends 1] [--replication-num 1]

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
from typing import Any

from app.units import MB
from bench.common import (
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


def _parser() -> argparse.ArgumentParser:
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
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.replication_num > args.backends:
        ap.error("--replication-num cannot exceed --backends")

    t0 = time.perf_counter()
    files = lineitem_files(args.scale_factor, args.parts)
    gen_seconds = time.perf_counter() - t0
    m = _measure(args, files)
    out = {
        "bench": "load",
        "scale_factor": args.scale_factor,
        "backends": args.backends,
        "replication_num": args.replication_num,
        "partitions": len(m["checksums"]),
        "buckets": BUCKETS,
        "input_files": len(files),
        "rows": m["rows_in"],
        "seconds": round(m["seconds"], 3),
        "rows_per_s": round(m["rows_in"] / m["seconds"]),
        "input_mb": round(total_bytes(files) / MB, 1),
        "output_mb": round(m["output_bytes"] / MB, 1),
        "output_files": m["output_files"],
        "mb_per_s": round(m["output_bytes"] / MB / m["seconds"], 1),
        "cp_seconds": round(m["cp_seconds"], 3),
        "ratio_to_cp": round(m["seconds"] / m["cp_seconds"], 1),
        "rsync_seconds": None if m["rsync_seconds"] is None else round(m["rsync_seconds"], 3),
        "checksum_seconds": round(m["checksum_seconds"], 3),
        "generate_seconds": round(gen_seconds, 3),
        "partition_rows": {c.partition: c.rows for c in m["checksums"]},
    }
    emit(out)
    _print_line(out, m)
    return 0


def _measure(args: argparse.Namespace, files: list[Path]) -> dict[str, Any]:
    """Load the files into a throw-away cluster, check the rows, time cp (and rsync)."""
    rows_in = parquet_rows(files)
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
    return {
        "rows_in": rows_in,
        "seconds": seconds,
        "checksums": checksums,
        "checksum_seconds": checksum_seconds,
        "output_bytes": output_bytes,
        "output_files": len(out_files),
        "cp_seconds": cp_seconds,
        "rsync_seconds": rsync_seconds,
    }


def _print_line(out: dict[str, Any], m: dict[str, Any]) -> None:
    rsync_seconds = m["rsync_seconds"]
    rsync_txt = "" if rsync_seconds is None else f", rsync -a {rsync_seconds:.2f}s"
    print(
        f"load: {out['rows']:,} rows in {m['seconds']:.2f}s = {out['rows_per_s']:,} rows/s, "
        f"{out['mb_per_s']} MB/s ({out['output_mb']} MB in {out['output_files']} files from "
        f"{out['input_mb']} MB input) | cp -r of the same files {m['cp_seconds']:.2f}s{rsync_txt} "
        f"-> load is {out['ratio_to_cp']}x cp | checksum {m['checksum_seconds']:.2f}s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
