"""Horizontal scaling: the same replication with 1, 2 and 4 worker processes per target queue.

Each round replicates the same source table (TPC-H lineitem, 4 partitions x 16 buckets on two
source backends) into a fresh target table on two target backends, with N separate worker
processes consuming each target backend's queue. It reports submit -> COMMITTED time and MB/s per
N, how many worker processes did apply work, and asserts from the task rows that no tablet
replica was applied twice. On a 2-core machine the curve flattens early: that is the honest
result here, not a ceiling of the design.

    .venv/bin/python -m bench.scaling [--scale-factor 0.5] [--processes 1,2,4]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from app.replication.taskrows import TaskKind
from app.units import MB
from bench import plots
from bench.common import (
    BENCH_DIR,
    OUT_DIR,
    BenchTransfer,
    bench_cluster,
    bench_settings,
    create_lineitem,
    emit,
    lineitem_files,
    load_source,
    unique_name,
)
from frontends.connect import replicator
from frontends.servers import RedisServer
from frontends.supervise import Workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-factor", type=float, default=0.5)
    parser.add_argument("--processes", default="1,2,4")
    args = parser.parse_args()
    counts = [int(x) for x in args.processes.split(",")]

    files = lineitem_files(args.scale_factor)
    redis = RedisServer(OUT_DIR / "scaling-redis").start()
    tag = unique_name("scl").replace("_", "")[:16]
    settings = bench_settings(tag, broker_url=redis.url)
    rows_out = []
    try:
        env = _env(settings)
        transfer = BenchTransfer.create(OUT_DIR / "scaling-pki", env, OUT_DIR / "scaling-logs")
        with (
            bench_cluster("src", 2, settings) as src,
            bench_cluster("dst", 2, settings) as dst,
            transfer.serve(src),
        ):
            create_lineitem(src.handle, replication_num=2)
            t0 = time.monotonic()
            src.handle.load("tpch.lineitem", load_source(files), label="scaling-1")
            print(f"loaded source in {time.monotonic() - t0:.1f}s", flush=True)
            for n in counts:
                rows_out.append(_round(n, src, dst, settings, env))
    finally:
        redis.stop()
    chart = plots.throughput_against_processes(rows_out, BENCH_DIR / "SCALING-throughput.png")
    if chart is not None:
        print(f"drew {chart} (bench/SCALING.md shows it)")
    print("\n| worker processes per target queue | seconds | MB/s | processes that applied |")
    print("|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['processes']} | {r['seconds']} | {r['mb_per_s']} | {r['workers_used']} |")
    return 0


def _env(settings: object) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["REPLICATOR_BROKER_URL"] = settings.broker_url  # type: ignore[attr-defined]
    env["REPLICATOR_DSN_TEMPLATE"] = settings.dsn_template  # type: ignore[attr-defined]
    env.pop("REPLICATOR_CONFIG", None)
    return env


def _round(n: int, src, dst, settings, env) -> dict[str, object]:  # type: ignore[no-untyped-def]
    workers = Workers(env, OUT_DIR / "scaling-logs" / f"n{n}")
    for b in ("be1", "be2"):
        workers.backend(src.name, b)
        for k in range(n):
            workers.backend(dst.name, b, suffix=f"-{k}")
    workers.coordinator()
    try:
        workers.wait_ready()
        table = f"tpch.lineitem_n{n}"
        start = time.monotonic()
        job = replicator(settings).replicate(
            f"{src.name}:tpch.lineitem",
            f"{dst.name}:{table}",
            create_target=True,
            replication_num=1,
        )
        job.wait(1800)
        seconds = time.monotonic() - start
        assert job.state == "COMMITTED", job.message
        applies = [t for t in job.tasks() if t.kind == TaskKind.APPLY]
        replicas = Counter((t.dst_tablet_id, t.dst_backend_id) for t in applies)
        assert all(c == 1 for c in replicas.values()), "a tablet replica has two apply rows"
        assert all(t.attempts == 1 for t in applies), "a tablet replica was applied twice"
        assert dst.handle.checksum(table)[0].rows == src.handle.checksum("tpch.lineitem")[0].rows
        moved = sum(t.bytes_done for t in applies)
        result = {
            "scenario": "scaling",
            "processes": n,
            "seconds": round(seconds, 2),
            "bytes": moved,
            "mb_per_s": round(moved / MB / seconds, 1),
            "tablets": len(applies),
            "workers_used": len({t.worker for t in applies}),
        }
        emit(result)
        return result
    finally:
        workers.stop_all()


if __name__ == "__main__":
    sys.exit(main())
