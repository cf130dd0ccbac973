"""Sync benchmark: lag of a sync policy under a steady load, and what verification costs.

    .venv/bin/python -m bench.sync [--seconds 60] [--tables 3] [--rows 2000]

A source database of ``--tables`` tables (4 partitions x 4 buckets, 2 source backends) and a
sync policy into a target cluster (2 backends), with real workers, a coordinator and its beat,
and a transfer server per cluster (mutual TLS), as bench.scaling runs them. For ``--seconds``
a load of ``--rows`` rows goes into one of the tables every second, in turn. Measured:
- lag: for every source version, from when a 50 ms poll of the source catalog first saw it to
  when a poll of the target saw the same version (p50, p95, max);
- verification cost per commit: the files and bytes each target backend re-hashed after each
  job (its sync_checks rows), the time from the job's commit to the last backend's answer, and
  the CPU the workers spent in the check tasks (their 'succeeded in' log lines).
Writes the "Continuous sync" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import (
    BENCH_DIR,
    OUT_DIR,
    BenchTransfer,
    bench_cluster,
    bench_settings,
    emit,
    machine_info,
    unique_name,
    write_section,
)
from bench.scaling import _env
from frontends.connect import replicator
from frontends.servers import RedisServer
from frontends.supervise import Workers
from tests.integration.rig import create_test_table, rows

SECTION = "## Continuous sync (bench.sync)"
VERSIONS_SQL = sa.text(
    "SELECT t.name, p.name, p.visible_version FROM partitions p JOIN tables t ON t.id = "
    "p.table_id JOIN databases d ON d.id = t.db_id WHERE d.name = 'synced'"
)


class Poll(threading.Thread):
    """When each (table, partition, version) first appears on each side."""

    def __init__(self, src: sa.Engine, dst: sa.Engine) -> None:
        super().__init__(daemon=True)
        self.engines = {"src": src, "dst": dst}
        self.seen: dict[str, dict[tuple[str, str, int], float]] = {"src": {}, "dst": {}}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for side, engine in self.engines.items():
                now = time.monotonic()
                with engine.connect() as conn:
                    for t, p, v in conn.execute(VERSIONS_SQL):
                        for k in range(2, int(v) + 1):
                            self.seen[side].setdefault((t, p, k), now)
            time.sleep(0.05)

    def lags(self) -> list[float]:
        src, dst = self.seen["src"], self.seen["dst"]
        return [max(dst[k] - at, 0.0) for k, at in src.items() if k in dst]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--tables", type=int, default=3)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = ap.parse_args()
    redis = RedisServer(OUT_DIR / "sync-redis").start()
    settings = bench_settings(unique_name("syn").replace("_", "")[:16], broker_url=redis.url)
    env = _env(settings)
    logs = OUT_DIR / "sync-logs"
    try:
        transfer = BenchTransfer.create(OUT_DIR / "sync-pki", env, logs)
        with (
            bench_cluster("src", 2, settings) as src,
            bench_cluster("dst", 2, settings) as dst,
            transfer.serve(src),
            transfer.serve(dst),
        ):
            workers = Workers(env, logs / "workers")
            for bc in (src, dst):
                for b in ("be1", "be2"):
                    workers.backend(bc.name, b)
            workers.coordinator()
            workers.wait_ready()
            try:
                result = _run(args, settings, src, dst, workers)
            finally:
                workers.stop_all()
    finally:
        redis.stop()
    emit(result)
    write_section(args.results, SECTION, _section(result, args))
    print(f"wrote the '{SECTION[3:]}' section of {args.results}")
    return 0


def _run(
    args: argparse.Namespace, settings: Any, src: Any, dst: Any, workers: Workers
) -> dict[str, Any]:
    tables = [f"synced.t{i}" for i in range(args.tables)]
    for i, t in enumerate(tables):
        create_test_table(src.handle, t, buckets=4, replication_num=1)
        src.handle.load(t, rows(args.rows, seed=i), label=f"{t}-0")
    r = replicator(settings)
    r.sync_create(f"{src.name}:synced", dst.name, name="bench")
    poll = Poll(src.handle.catalog.engine, dst.handle.catalog.engine)
    poll.start()
    start = time.monotonic()
    for i in range(args.seconds):
        t = tables[i % len(tables)]
        src.handle.load(t, rows(args.rows, seed=1000 + i), label=f"{t}-{i + 1}")
        time.sleep(max(0.0, start + i + 1 - time.monotonic()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(x.versions_behind == 0 for x in r.sync(dst.name, "bench").show().tables):
            break
        time.sleep(0.2)
    time.sleep(3)  # the last commit's checks
    poll.halt.set()
    poll.join()
    lags = sorted(poll.lags())
    checks = _checks(dst.handle.catalog.engine)
    check_cpu = _check_seconds(workers)
    policy = r.sync(dst.name, "bench").show()
    return {
        "bench": "sync",
        "seconds": args.seconds,
        "tables": args.tables,
        "rows_per_load": args.rows,
        "versions": len(lags),
        "lag_p50_s": round(statistics.median(lags), 3),
        "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3),
        "lag_max_s": round(lags[-1], 3),
        "jobs": len(checks),
        "check_files_per_commit": round(statistics.mean(c["files"] for c in checks), 1),
        "check_mb_per_commit": round(statistics.mean(c["bytes"] for c in checks) / 2**20, 2),
        "check_answer_after_commit_p50_s": round(statistics.median(c["after"] for c in checks), 3),
        "check_task_seconds_p50": round(statistics.median(check_cpu), 4) if check_cpu else None,
        "mismatches": sum(x.mismatches for x in policy.tables),
        "states": sorted({str(x.state) for x in policy.tables}),
        "machine": machine_info(),
    }


def _checks(engine: sa.Engine) -> list[dict[str, Any]]:
    """Per checked job: files and bytes re-hashed (all backends), and the last answer's delay
    after the job's commit."""
    q = sa.text(
        "SELECT c.job_id, sum(c.files) AS files, sum(c.bytes) AS bytes, "
        "extract(epoch FROM max(c.created_at) - j.finished_at) AS after "
        "FROM sync_checks c JOIN jobs j ON j.id = c.job_id GROUP BY c.job_id, j.finished_at"
    )
    with engine.connect() as conn:
        return [
            {"files": int(r.files), "bytes": int(r.bytes), "after": float(r.after)}
            for r in conn.execute(q)
        ]


def _check_seconds(workers: Workers) -> list[float]:
    pat = re.compile(r"Task sync\.check\[[^\]]+\] succeeded in ([0-9.]+)s")
    found: list[float] = []
    for proc in workers.procs.values():
        if proc.log.exists():
            found += [float(x) for x in pat.findall(proc.log.read_text(errors="replace"))]
    return found


def _section(res: dict[str, Any], args: argparse.Namespace) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    m = res["machine"]
    return "\n".join(
        [
            SECTION,
            "",
            f"`.venv/bin/python -m bench.sync --seconds {args.seconds} --tables {args.tables} "
            f"--rows {args.rows}` on {when}; {m.get('cpu', '')}, {m.get('cores', '')} cores; "
            f"commit {m.get('commit', '')}.",
            "",
            "A sync policy over a database of "
            f"{res['tables']} tables (4 partitions x 4 buckets), real workers and beat, mutual "
            f"TLS; one load of {res['rows_per_load']} rows a second for {res['seconds']} s.",
            "",
            "| measured | value |",
            "| --- | --- |",
            f"| lag, source commit seen -> same version seen on the target ({res['versions']} "
            f"versions) | p50 {res['lag_p50_s']} s, p95 {res['lag_p95_s']} s, max "
            f"{res['lag_max_s']} s |",
            f"| verification per commit ({res['jobs']} jobs) | {res['check_files_per_commit']} "
            f"files, {res['check_mb_per_commit']} MB re-hashed on the target backends; last "
            f"answer {res['check_answer_after_commit_p50_s']} s after the commit (p50) |",
            f"| check task time (p50, per backend) | {res['check_task_seconds_p50']} s |",
            f"| mismatches found | {res['mismatches']} |",
            "",
            "```",
            json.dumps({k: v for k, v in res.items() if k != "machine"}),
            "```",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
