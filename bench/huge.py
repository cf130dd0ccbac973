"""One table of 100,000 tablets: load it, replicate it (full), then incremental after +1% rows.

    .venv/bin/python -m bench.huge [--tablets 100000] [--rows-per-tablet 3]

Real workers (one process per backend, two backends a cluster), a private Redis, the machine's
Postgres. Reports each step's time, the peak RSS of every kind of process (VmHWM, sampled every
0.5 s so that a pool process replaced meanwhile still counts), the longest Postgres statement
seen running (pg_stat_activity sampled every 100 ms), and whether the two tables' checksums
(the project's per-partition checksum, every row read) are equal. Writes its section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import sqlalchemy as sa

from bench.common import BENCH_DIR, PG_URL, machine_info, write_section
from bench.run import (
    FULL,
    BenchCluster,
    Run,
    cpu_roles,
    create_day_table,
    log,
    pg_version,
    replicate_timed,
    running,
    small_rows,
    start_backend_workers,
    start_run,
    status_kb,
)

BUCKETS = 1000
TABLE = "huge.t"
SECTION = "## 100,000 tablets (bench.huge)"


class Peaks(threading.Thread):
    """Peak RSS (MB) per role and the longest running Postgres statement, sampled."""

    def __init__(self, roles: dict[str, Callable[[], list[int]]], dbs: list[str]) -> None:
        super().__init__(daemon=True)
        self.roles, self.dbs = roles, dbs
        self.rss: dict[str, float] = dict.fromkeys(roles, 0.0)
        self.statement = (0.0, "")
        self.stop = threading.Event()
        self.engine = sa.create_engine(f"{PG_URL}/postgres", pool_size=1)

    def run(self) -> None:
        last_rss = 0.0
        while not self.stop.wait(0.1):
            self._statements()
            if time.monotonic() - last_rss >= 0.5:
                last_rss = time.monotonic()
                for role, pids in self.roles.items():
                    peak = max((status_kb(p, "VmHWM") for p in pids()), default=0) / 1024
                    self.rss[role] = max(self.rss[role], peak)

    def _statements(self) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT extract(epoch FROM now() - query_start), left(query, 160) "
                    "FROM pg_stat_activity WHERE state = 'active' AND datname = ANY(:dbs) "
                    "ORDER BY query_start LIMIT 1"
                ),
                {"dbs": self.dbs},
            ).first()
        if row is not None and float(row[0]) > self.statement[0]:
            self.statement = (float(row[0]), " ".join(str(row[1]).split()))

    def __enter__(self) -> Peaks:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()
        self.engine.dispose()


def _load(settings: Any, cluster: str, rows: int, seed: int, days: int, label: str) -> dict:  # type: ignore[type-arg]
    """In a child process, so that its peak RSS is the load's alone."""
    from frontends.connect import replicator

    table = small_rows(rows, seed=seed, days=days).sort_by("day")
    t0 = time.perf_counter()
    replicator(settings).cluster(cluster).load(TABLE, table, label=label)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def load(run: Run, src: BenchCluster, rows: int, seed: int, days: int, label: str) -> dict:  # type: ignore[type-arg]
    with ProcessPoolExecutor(1) as pool:
        return pool.submit(_load, run.settings, src.name, rows, seed, days, label).result()


def _checksum(settings: Any, cluster: str) -> list[Any]:
    from frontends.connect import replicator

    return replicator(settings).cluster(cluster).checksum(TABLE)


def checksums_equal(run: Run, src: BenchCluster, dst: BenchCluster) -> tuple[bool, float]:
    """Both tables' per-partition checksums (every row read), one process each side."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        a, b = (pool.submit(_checksum, run.settings, c.name) for c in (src, dst))
        equal = a.result() == b.result()
    return equal, round(time.perf_counter() - t0, 1)


@contextlib.contextmanager
def clusters(run: Run, partitions: int) -> Iterator[tuple[BenchCluster, BenchCluster, Any]]:
    with contextlib.ExitStack() as stack:
        src = run.cluster(stack, "hsrc", 2)
        dst = run.cluster(stack, "hdst", 2)
        for bc in (src, dst):
            create_day_table(bc, TABLE, partitions, BUCKETS)
        workers = stack.enter_context(
            running(start_backend_workers(run, "huge", [(src, 1), (dst, 1)]))
        )
        yield src, dst, workers


def scenario(run: Run, tablets: int, rows_per_tablet: int) -> dict[str, Any]:
    partitions = tablets // BUCKETS
    rows = partitions * BUCKETS * rows_per_tablet
    out: dict[str, Any] = {"bench": "huge", "tablets": partitions * BUCKETS, "rows": rows}
    with clusters(run, partitions) as (src, dst, workers):
        dbs = [f"{run.settings.dsn_template.rsplit('/', 1)[1].format(cluster=c.name)}"
               for c in (src, dst)]  # fmt: skip
        with Peaks(cpu_roles(run, workers, src, dst), dbs) as peaks:
            log(f"huge: loading {rows:,} rows into {out['tablets']:,} tablets")
            out["load"] = load(run, src, rows, 7, partitions, "huge-1")
            log(f"huge: load {out['load']}; full replication")
            out["full"] = _job(run, src, dst, workers, "huge-full")
            out["full"]["checksums_equal"], out["full"]["checksum_seconds"] = checksums_equal(
                run, src, dst
            )
            log(f"huge: full {_brief(out['full'])}; loading +1% and replicating again")
            out["load_1pct"] = load(run, src, max(rows // 100, 1), 8, partitions, "huge-2")
            out["incremental"] = _job(run, src, dst, workers, "huge-incr")
            out["incremental"]["checksums_equal"], _ = checksums_equal(run, src, dst)
            log(f"huge: incremental {_brief(out['incremental'])}")
        out["peak_rss_mb"] = {k: round(v, 1) for k, v in peaks.rss.items()}
        out["longest_statement_s"] = round(peaks.statement[0], 2)
        out["longest_statement"] = peaks.statement[1]
    return out


def _job(run: Run, src: BenchCluster, dst: BenchCluster, workers: Any, label: str) -> dict:  # type: ignore[type-arg]
    rep = replicate_timed(run, src, dst, TABLE, timeout=3600, workers=workers, label=label)
    return {
        "state": rep["state"],
        "seconds": round(rep["seconds"], 1),
        "submit_seconds": round(rep["submit_seconds"], 3),
        "phases": rep["phases"],
        "cpu_seconds": rep.get("cpu_seconds"),
    }


def _brief(job: dict) -> str:  # type: ignore[type-arg]
    return f"{job['state']} in {job['seconds']} s, checksums equal: {job['checksums_equal']}"


def report(result: dict[str, Any], argv: list[str], m: dict[str, str]) -> str:
    full, incr = result["full"], result["incremental"]
    rows = [
        ("load (one transaction)", f"{result['load']['seconds']} s, loader peak RSS "
         f"{result['load']['peak_rss_mb']} MB"),
        ("full replication", f"{full['state']} in {full['seconds']} s; checksums equal: "
         f"{full['checksums_equal']}"),
        ("+1% rows loaded", f"{result['load_1pct']['seconds']} s"),
        ("incremental replication", f"{incr['state']} in {incr['seconds']} s "
         f"({incr['seconds'] / full['seconds']:.0%} of the full job); checksums equal: "
         f"{incr['checksums_equal']}"),
        ("peak RSS per process (MB)", ", ".join(
            f"{k} {v}" for k, v in result["peak_rss_mb"].items())),
        ("longest Postgres statement seen", f"{result['longest_statement_s']} s: "
         f"`{result['longest_statement'][:120]}`"),
    ]  # fmt: skip
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python -m bench.huge {' '.join(argv)}` on {m['date']}; {m['cpu']}, "
        f"{m['cores']} cores; commit {m['commit']}.",
        "",
        f"One table of {result['tablets']:,} tablets ({result['tablets'] // BUCKETS} partitions "
        f"x {BUCKETS} buckets, {result['rows']:,} rows, one rowset file per tablet), two "
        "backends per cluster, one worker process per backend, mutual TLS between them.",
        "",
        "| step | measured |",
        "| --- | --- |",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "```",
        json.dumps(result, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tablets", type=int, default=100_000, help="a multiple of 1000")
    ap.add_argument("--rows-per-tablet", type=int, default=3)
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.tablets < BUCKETS or args.tablets % BUCKETS:
        ap.error(f"--tablets must be a positive multiple of {BUCKETS}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    # Admission: the default cap (10,240 replicas, StarRocks') stays the default; this job
    # needs its tablets' worth.
    extra = {"replication_max_parallel_replica_count": 2 * args.tablets + 1000}
    with start_run(FULL, False, False, False, extra) as run:
        run.budget_seconds = 3 * 3600
        result = scenario(run, args.tablets, args.rows_per_tablet)
        run.record(result)
        machine = machine_info(pg_version(run.settings))
    if not args.no_results:
        write_section(BENCH_DIR / "RESULTS.md", SECTION, report(result, argv, machine))
        log(f"wrote {BENCH_DIR / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
