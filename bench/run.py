"""Replication benchmarks against the physical limit (cp, rsync of the same bytes).

    .venv/bin/python -m bench.run [--quick] [--only bulk,latency,...] [--results PATH]

Scenarios (each prints one JSON line; the run writes a markdown table to bench/RESULTS.md):

  bulk         TPC-H lineitem (4 partitions x 16 buckets, 1 replica, >= 1 GiB of rowset files in
               several loads) replicated between two clusters; submit -> COMMITTED against
               ``cp -r`` and ``rsync -a`` of the source rowset files, same run, same disk.
  memory       peak RSS (VmHWM) of the one apply worker process that copies all of the bulk
               table's bytes into a third cluster.
  incremental  1% more rows loaded after the bulk job, replicated again; time / bulk time.
  latency      submit -> COMMITTED of a one-tablet table, median of 20 tables.
  concurrency  1,000 small tables replicated by 1,000 jobs submitted at once: time until all
               commit, and the coordinator's per-job tick time while they are open.
  small        10,000 tablets of a few KiB in one table (100 partitions x 100 buckets):
               submit -> COMMITTED against ``cp -r``; Celery messages per tablet.

Everything runs on this machine: a private redis-server, Celery worker subprocesses started by
the supervisor the integration tests use (frontends/supervise.py), and fresh catalog databases on
the local Postgres, all dropped at the end with their storage. Worker logs: bench/out/logs/<run>/.

``--quick`` is a smoke run with small sizes (about a minute); its table goes to
bench/out/RESULTS.quick.md unless --results says otherwise. ``--only`` runs some scenarios
(incremental and memory need the bulk table, so they bring its loads along).

``--postgres auto`` (the default) puts the catalogs on the machine's Postgres unless other users
hold nearly all its connections, and then on a throw-away private server (same binaries, fsync
on); ``shared`` / ``private`` force either. ``--profile`` starts the workers with
bench/profiling/sitecustomize.py, which cProfiles every task and counts its SQL statements,
commits and pool checkouts; summaries land in bench/out/profiles/<run>/<scenario>-<task>.txt
(timings of a profiled run are inflated: measure without it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import re
import resource
import secrets
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from app.catalog import model
from app.client import ClusterHandle, Job, Replicator, Request
from app.config import Settings
from app.errors import JobTimeout
from app.queues import cluster_pattern
from app.replication.taskrows import TaskKind
from app.units import MB
from bench import plots
from bench.common import (
    BENCH_DIR,
    OUT_DIR,
    PG_URL,
    BenchCluster,
    BenchTransfer,
    PrivatePostgres,
    bench_cluster,
    bench_settings,
    create_lineitem,
    emit,
    file_digests,
    lineitem_files,
    machine_info,
    parquet_rows,
    retry_busy,
    scratch_dir,
    sync_disks,
    time_cp,
    time_rsync,
    total_bytes,
)
from frontends.connect import replicator
from frontends.servers import RedisServer
from frontends.supervise import Proc, Workers

GiB = 1024 * MB
SCENARIOS = ("bulk", "memory", "incremental", "latency", "concurrency", "small")
NEEDS_BULK = {"bulk", "memory", "incremental"}

SMALL_COLUMNS = ["id:int64", "day:date", "qty:int32", "price:float64", "note:string"]


@dataclass(frozen=True)
class Sizes:
    scale_factor: float  # lineitem, generated in `parts` files, one load each
    parts: int
    small_partitions: int
    small_buckets: int
    small_rows_per_tablet: int
    latency_jobs: int
    concurrent_jobs: int


FULL = Sizes(5, 5, 100, 100, 30, 20, 1000)
QUICK = Sizes(0.1, 2, 20, 50, 30, 5, 20)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the run: redis, workers, clusters -------------------------------------------------------


@dataclass
class Run:
    run_id: str
    sizes: Sizes
    quick: bool
    settings: Settings
    redis: RedisServer
    logdir: Path
    env: dict[str, str]
    replicator: Replicator
    coordinator: Workers
    results: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    profile_dir: Path | None = None
    pg_pid: int | None = None  # postmaster of a private Postgres (its CPU time is measured)
    transfer: BenchTransfer | None = None
    started: float = field(default_factory=time.perf_counter)
    budget_seconds: float = 12 * 60

    def remaining(self) -> float:
        return self.budget_seconds - (time.perf_counter() - self.started)

    def workers(self, name: str) -> Workers:
        return Workers(self.env, self.logdir / name)

    def cluster(self, stack: contextlib.ExitStack, prefix: str, backends: int) -> BenchCluster:
        """A fresh cluster with its transfer server running; gone when ``stack`` closes."""
        bc = stack.enter_context(bench_cluster(prefix, backends, self.settings))
        assert self.transfer is not None
        stack.enter_context(self.transfer.serve(bc))
        return bc

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        emit(result)
        self.results.append(result)
        with open(OUT_DIR / "results.jsonl", "a") as f:
            f.write(json.dumps({"run": self.run_id, **result}, default=str) + "\n")
        return result


@contextlib.contextmanager
def start_run(
    sizes: Sizes,
    quick: bool,
    private_pg: bool,
    profile: bool,
    extra: dict[str, int] | None = None,
) -> Iterator[Run]:
    """The run's Redis, coordinator and transfer PKI (and Postgres if private); ``extra``:
    more settings, for this process and the workers alike."""
    run_id = f"{time.strftime('%m%d%H%M%S')}_{secrets.token_hex(2)}"
    logdir = OUT_DIR / "logs" / run_id
    logdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        pg_url = None
        if private_pg:
            pg = PrivatePostgres(OUT_DIR / "pg" / run_id).start()
            stack.callback(pg.stop)
            pg_url = pg.url
            log(f"private Postgres on port {pg.port}")
        for run in _start_run(run_id, logdir, sizes, quick, pg_url, profile, extra or {}):
            if private_pg:
                run.pg_pid = pg.postmaster_pid()
            yield run


def _start_run(
    run_id: str,
    logdir: Path,
    sizes: Sizes,
    quick: bool,
    pg_url: str | None,
    profile: bool,
    extra: dict[str, int],
) -> Iterator[Run]:
    redis = RedisServer(OUT_DIR / "redis" / run_id).start()
    tag = secrets.token_hex(3)
    # 1,000 jobs at once need more than the default 100 running jobs per cluster.
    overrides = {
        "broker_url": redis.url,
        "replication_max_parallel_table_count": max(100, sizes.concurrent_jobs + 10),
    }
    settings = bench_settings(tag, pg_url, **overrides, **extra)
    env = dict(os.environ)
    env |= {f"REPLICATOR_{k.upper()}": str(v) for k, v in extra.items()}
    env.pop("REPLICATOR_CONFIG", None)
    env["REPLICATOR_DSN_TEMPLATE"] = settings.dsn_template
    env["REPLICATOR_BROKER_URL"] = redis.url
    env["REPLICATOR_REPLICATION_MAX_PARALLEL_TABLE_COUNT"] = str(
        overrides["replication_max_parallel_table_count"]
    )
    profile_dir = None
    if profile:  # bench/profiling/sitecustomize.py profiles every task of every worker
        profile_dir = OUT_DIR / "profiles" / run_id
        env["BENCH_PROFILE_DIR"] = str(profile_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH_DIR / "profiling"), *filter(None, [env.get("PYTHONPATH")])]
        )
    transfer = BenchTransfer.create(OUT_DIR / "pki" / run_id, env, logdir)
    coordinator = Workers(env, logdir / "coordinator")
    coordinator.coordinator()
    run = Run(run_id, sizes, quick, settings, redis, logdir, env, replicator(settings), coordinator)
    run.profile_dir = profile_dir
    run.transfer = transfer
    try:
        coordinator.wait_ready()
        yield run
    finally:
        coordinator.stop_all()
        redis.stop()


def start_backend_workers(
    run: Run, name: str, clusters: Sequence[tuple[BenchCluster, int]]
) -> Workers:
    """One worker per backend of each cluster, with the given pool concurrency, all ready and
    warmed up: the first cluster replicates a small table to each other one, so that every
    worker process has met both catalogs (connection pools, schema checks) before anything is
    timed, as long-running workers have."""
    workers = run.workers(name)
    for bc, concurrency in clusters:
        for b in bc.handle.backends():
            workers.backend(bc.name, b.name, concurrency=concurrency)
    workers.wait_ready()
    src = clusters[0][0]
    warm = "warmup.t"
    for bc, _ in clusters:
        retry_busy(
            bc.handle.create_table,
            warm,
            SMALL_COLUMNS,
            distributed_by=["id"],
            buckets=4,
            replication_num=1,
        )
    retry_busy(src.handle.load, warm, small_rows(1000, seed=1, days=30), label="warmup")
    for dst, _ in clusters[1:]:
        job = retry_busy(run.replicator.replicate, f"{src.name}:{warm}", dst.name)
        _, states = wait_jobs([job], 120)
        if states[job.id] != "COMMITTED":
            raise RuntimeError(f"warm-up job {job.ref} ended {states[job.id]}")
    return workers


@contextlib.contextmanager
def running(workers: Workers) -> Iterator[Workers]:
    try:
        yield workers
    finally:
        workers.stop_all()


# -- measuring -------------------------------------------------------------------------------


def wait_jobs(
    jobs: Sequence[Job], timeout: float, poll: float = 0.005
) -> tuple[float, dict[int, str]]:
    """Follow the jobs until every one is final; return (perf_counter then, states).

    Fine polling at first, coarser later: a 5 ms loop costs the workers CPU on a small machine,
    and 1% of the time waited is precise enough (growth 1.01 adds about 1% of the time waited
    to each interval)."""
    deadline = time.monotonic() + timeout
    for job in jobs:
        try:
            for _ in job.watch(
                max(deadline - time.monotonic(), 0.0), poll, max_poll=0.1, growth=1.01
            ):
                pass
        except JobTimeout:
            open_ = {j.id: str(j.state) for j in jobs if not j.state.final}
            raise TimeoutError(
                f"{len(open_)} jobs still open after {timeout:.0f}s: {open_}"
            ) from None
    return time.perf_counter(), {j.id: str(j.state) for j in jobs}


def replicate_timed(
    run: Run,
    src: BenchCluster,
    dst: BenchCluster,
    table: str,
    timeout: float = 900,
    workers: Workers | None = None,
    label: str | None = None,
    cancel_late: bool = False,
) -> dict[str, Any]:
    """submit -> COMMITTED, as a client sees it (5 ms polling of the job row); with
    ``workers``, also the CPU seconds each kind of process spent meanwhile."""
    meter = CpuMeter(cpu_roles(run, workers, src, dst)) if workers is not None else None
    profiles = ProfileWindow(run, label)
    wall = time.time()
    t0 = time.perf_counter()
    job = retry_busy(run.replicator.replicate, f"{src.name}:{table}", dst.name)
    t_submitted = time.perf_counter()
    unfinished = None
    try:
        t1, states = wait_jobs([job], timeout)
    except TimeoutError:
        if not cancel_late:
            raise
        # Out of time: record how far it got, then cancel it (the bench must end).
        t1 = time.perf_counter()
        prog = job.progress
        unfinished = {
            "phase": prog.phase,
            "snapshots_done": prog.snapshots_done,
            "snapshots_total": prog.snapshots_total,
            "applies_done": prog.tablets_done,
            "applies_total": prog.tablets_total,
        }
        job.cancel()
        _, states = wait_jobs([job], 120)
    job.refresh()
    out = {
        "job": job.ref,
        "state": states[job.id],
        "unfinished": unfinished,
        "seconds": t1 - t0,
        "submit_seconds": t_submitted - t0,
        "message": job.message,
        "phases": phases(dst.handle, job.id, wall),
    }
    if meter is not None:
        time.sleep(0.3)  # the last nudge tick
        out["cpu_seconds"] = meter.read()
    profiles.summarize()
    if states[job.id] != "COMMITTED" and unfinished is None:
        raise RuntimeError(f"job {job.ref} ended {states[job.id]}: {job.message}")
    return out


def phases(handle: ClusterHandle, job_id: int, submit_wall: float) -> dict[str, float]:
    """Seconds from the client's submit to each state change, from job_events.

    An event's time is the start of the coordinator transaction that made it (now())."""
    with handle.catalog.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT to_state, at FROM job_events WHERE job_id = :j ORDER BY id"),
            {"j": job_id},
        ).all()
    return {str(r[0]): round(r[1].timestamp() - submit_wall, 4) for r in rows}


def table_files(handle: ClusterHandle, full_name: str) -> list[Path]:
    """Every file of every visible rowset of the table, on every replica."""
    with handle.catalog.engine.connect() as conn:
        table = model.get_table(conn, full_name)
        tablets = model.list_tablets(conn, table.id)
        backends = model.list_backends(conn)
        rowsets = model.visible_rowsets(conn, [t.id for t in tablets])
    return [
        Path(backends[b].storage_root, "data", str(t.id), r.id, f["name"])
        for t in tablets
        for b in t.backend_ids
        for r in rowsets[t.id]
        for f in r.files
    ]


def table_rows(handle: ClusterHandle, full_name: str) -> dict[str, tuple[int, int]]:
    """partition -> (visible version, rows in visible rowsets), from the catalog."""
    with handle.catalog.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.name, p.visible_version, coalesce(sum(r.num_rows), 0) "
                "FROM partitions p JOIN tables t ON t.id = p.table_id "
                "JOIN databases d ON d.id = t.db_id "
                "LEFT JOIN tablets tb ON tb.partition_id = p.id "
                "LEFT JOIN rowsets r ON r.tablet_id = tb.id AND r.state = 'VISIBLE' "
                "WHERE d.name || '.' || t.name = :n GROUP BY p.name, p.visible_version"
            ),
            {"n": full_name},
        ).all()
    return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}


def verify_copy(src: BenchCluster, dst: BenchCluster, table: str) -> dict[str, Any]:
    """The target holds byte-identical files (size and xxh3 of each, computed here) and the same
    versions and row counts as the source."""
    t0 = time.perf_counter()
    src_files, dst_files = table_files(src.handle, table), table_files(dst.handle, table)
    same_bytes = file_digests(src_files) == file_digests(dst_files)
    same_rows = table_rows(src.handle, table) == table_rows(dst.handle, table)
    if not (same_bytes and same_rows):
        raise RuntimeError(
            f"{dst.name}:{table} differs from {src.name}:{table}: files equal {same_bytes}, "
            f"versions and rows equal {same_rows}"
        )
    return {
        "verified_files": len(dst_files),
        "verified_bytes": total_bytes(dst_files),
        "verify_seconds": round(time.perf_counter() - t0, 2),
    }


def apply_bytes(handle: ClusterHandle, job_id: int) -> tuple[int, int]:
    """(bytes_done, bytes_total) over the job's apply tasks: what the apply verified."""
    with handle.catalog.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT coalesce(sum(bytes_done), 0), coalesce(sum(bytes_total), 0) "
                "FROM job_tasks WHERE job_id = :j AND kind = :k"
            ),
            {"j": job_id, "k": TaskKind.APPLY},
        ).one()
    return int(row[0]), int(row[1])


class LogWindow:
    """What worker logs gained since this object was made."""

    def __init__(self, procs: Sequence[Proc]) -> None:
        self.start = {p.log: _size(p.log) for p in procs}

    def text(self) -> str:
        out = []
        for path, offset in self.start.items():
            with open(path, errors="replace") as f:
                f.seek(offset)
                out.append(f.read())
        return "".join(out)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


RECEIVED = re.compile(r"Task (replication\.\w+)\[[0-9a-f-]+\] received")
SUCCEEDED = re.compile(
    r"Task (replication\.\w+)\[[0-9a-f-]+\] succeeded in ([0-9.e-]+)s: (.*)$", re.M
)


def received(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in RECEIVED.finditer(text):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def succeeded(text: str, task: str) -> list[tuple[float, str]]:
    return [(float(m.group(2)), m.group(3)) for m in SUCCEEDED.finditer(text) if m.group(1) == task]


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- CPU time and profiles of worker processes ------------------------------------------------


def proc_cpu(pid: int) -> float:
    """user + system seconds of a process (and of its children it has waited for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _proc_tree(procs: Sequence[Proc]) -> Callable[[], list[int]]:
    def pids() -> list[int]:
        out = []
        for p in procs:
            if p.popen is not None:
                out += [p.popen.pid, *_children(p.popen.pid)]
        return out

    return pids


def cpu_roles(
    run: Run, workers: Workers | None, src: BenchCluster, dst: BenchCluster
) -> dict[str, Callable[[], list[int]]]:
    roles = {"coordinator": _proc_tree(list(run.coordinator.procs.values()))}
    if workers is not None:
        roles["source workers"] = _proc_tree(
            [p for n, p in workers.procs.items() if f".{src.name}." in n]
        )
        roles["target workers"] = _proc_tree(
            [p for n, p in workers.procs.items() if f".{dst.name}." in n]
        )
    if run.pg_pid is not None:
        pg = run.pg_pid
        roles["postgres"] = lambda: [pg, *_children(pg)]
    return roles


class CpuMeter:
    """CPU seconds that groups of processes (a worker's main and pool processes; a private
    Postgres and its backends) and this client process spend between construction and
    ``read``. Exited children count through their parent's cutime/cstime."""

    def __init__(self, roles: dict[str, Callable[[], list[int]]]) -> None:
        self.roles = roles
        self.start = {r: self._cpu(pids()) for r, pids in roles.items()}
        self.client = sum(os.times()[:2])

    @staticmethod
    def _cpu(pids: Sequence[int]) -> dict[int, float]:
        return {pid: proc_cpu(pid) for pid in pids}

    def read(self) -> dict[str, float]:
        out = {}
        for role, pids in self.roles.items():
            now = self._cpu(pids())
            before = self.start[role]
            out[role] = round(sum(v - before.get(pid, 0.0) for pid, v in now.items()), 2)
        out["client (bench process)"] = round(sum(os.times()[:2]) - self.client, 2)
        return out


class ProfileWindow:
    """With --profile: summarize the per-task cProfile dumps written during a job."""

    def __init__(self, run: Run, label: str | None) -> None:
        self.dir = run.profile_dir
        self.label = label
        self.before = set(os.listdir(self.dir)) if self.dir and self.dir.is_dir() else set()

    def _counters(self, names: Sequence[str]) -> dict[str, dict[str, float]]:
        """Sum the per-task counters (SQL statements, commits, CPU...) by task name."""
        assert self.dir is not None
        out: dict[str, dict[str, float]] = {}
        for name in names:
            if not name.endswith(".json"):
                continue
            info = json.loads((self.dir / name).read_text())
            total = out.setdefault(info.pop("task"), {})
            for key, value in info.items():
                if isinstance(value, int | float):
                    total[key] = total.get(key, 0) + value
        return out

    def summarize(self) -> None:
        import io
        import pstats

        if self.dir is None or self.label is None or not self.dir.is_dir():
            return
        time.sleep(0.5)
        new = sorted(set(os.listdir(self.dir)) - self.before)
        by_task: dict[str, list[str]] = {}
        for name in new:
            if name.endswith(".prof"):
                by_task.setdefault(name.split("-", 1)[0], []).append(str(self.dir / name))
        counters = self._counters(new)
        for task, files in by_task.items():
            buf = io.StringIO()
            if task in counters:
                buf.write(f"{self.label}: {task} totals (per task row in brackets):\n")
                total = counters[task]
                rows = max(total.get("task_rows", 0), 1)
                for key, value in sorted(total.items()):
                    buf.write(f"  {key}: {value:.3f} [{value / rows:.3f}]\n")
                buf.write("\n")
            stats = pstats.Stats(files[0], stream=buf)
            for f in files[1:]:
                stats.add(f)
            stats.files = []  # not the list of dump files in the header
            buf.write(f"{self.label}: {len(files)} {task} tasks\n")
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(25)
            out = self.dir / f"{self.label}-{task}.txt"
            out.write_text(buf.getvalue())
            log(f"  profile: {out}")


# -- memory of worker processes ----------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Samples VmRSS of some processes every 20 ms; a cross-check of VmHWM."""

    def __init__(self, pids: Sequence[int]) -> None:
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.peak = dict.fromkeys(self.pids, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], status_kb(pid, "VmRSS"))
            self.stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


def pool_children(workers: Workers, names: Sequence[str]) -> dict[int, str]:
    return {pid: name for name in names for pid in workers.procs[name].child_pids()}


def baseline(copy: Callable[[Sequence[Path], Path], float], src: BenchCluster) -> float:
    """One timed copy of the source backends' data/ directories, after a sync."""
    sync_disks()
    with scratch_dir(copy.__name__) as target:
        return copy(src.data_dirs(), target)


# -- loads -------------------------------------------------------------------------------------


def _load_part(
    dsn_template: str, cluster: str, table: str, path: str, label: str
) -> tuple[int, float]:
    """Runs in a separate process: one load of one Parquet file."""
    settings = Settings(dsn_template=dsn_template)
    t0 = time.perf_counter()
    result = retry_busy(replicator(settings).cluster(cluster).load, table, path, label=label)
    return result.rows, time.perf_counter() - t0


def load_parallel(
    run: Run, bc: BenchCluster, table: str, files: Sequence[Path], procs: int = 2
) -> float:
    """Load each file as its own transaction, ``procs`` loads at a time (loads are CPU bound
    and single threaded; each becomes one version of every partition it touches)."""
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=procs, mp_context=ctx) as pool:
        futures = [
            pool.submit(_load_part, run.settings.dsn_template, bc.name, table, str(f), f"bulk-{i}")
            for i, f in enumerate(files)
        ]
        for f in futures:
            rows, seconds = f.result()
            log(f"  loaded {rows:,} rows in {seconds:.1f}s")
    return time.perf_counter() - t0


def head_rows(path: Path, n: int) -> pa.Table:
    batches, have = [], 0
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=65536):
            batches.append(batch)
            have += batch.num_rows
            if have >= n:
                break
    return pa.Table.from_batches(batches).slice(0, n)


def small_rows(n: int, seed: int, days: int, start: str = "2020-01-01") -> pa.Table:
    rng = np.random.default_rng(seed)
    day = np.datetime64(start) + (np.arange(n) % days).astype("timedelta64[D]")
    return pa.table(
        {
            "id": pa.array(rng.integers(0, 2**62, n), pa.int64()),
            "day": pa.array(day).cast(pa.date32()),
            "qty": pa.array(rng.integers(1, 50, n), pa.int32()),
            "price": pa.array(np.round(rng.random(n) * 1000, 2), pa.float64()),
            "note": pa.array([f"n{int(x):x}" for x in rng.integers(0, 2**40, n)], pa.string()),
        }
    )


def create_day_table(bc: BenchCluster, table: str, partitions: int, buckets: int) -> None:
    """SMALL_COLUMNS partitioned by day (``partitions`` days), ``buckets`` a day, one copy."""
    retry_busy(
        bc.handle.create_table,
        table,
        SMALL_COLUMNS,
        partition_by="day",
        partitions=day_partitions(partitions),
        distributed_by=["id"],
        buckets=buckets,
        replication_num=1,
    )


def day_partitions(count: int, start: str = "2020-01-01") -> list[tuple[str, str, str]]:
    first = dt.date.fromisoformat(start)
    out = []
    for i in range(count):
        lo, hi = first + dt.timedelta(days=i), first + dt.timedelta(days=i + 1)
        out.append((f"p{lo:%Y%m%d}", lo.isoformat(), hi.isoformat()))
    return out


# -- scenarios ---------------------------------------------------------------------------------


LINEITEM = "tpch.lineitem"


def bulk_group(run: Run, wanted: set[str]) -> None:
    """bulk, memory and incremental share one loaded lineitem table."""
    sz = run.sizes
    t0 = time.perf_counter()
    files = lineitem_files(sz.scale_factor, sz.parts)
    gen_seconds = time.perf_counter() - t0
    rows_in = parquet_rows(files)
    log(
        f"lineitem SF{sz.scale_factor:g}: {len(files)} files, {rows_in:,} rows ({gen_seconds:.1f}s)"
    )
    with contextlib.ExitStack() as stack:
        src = run.cluster(stack, "bsrc", 2)
        dst = run.cluster(stack, "bdst", 2)
        mem = run.cluster(stack, "bmem", 1) if "memory" in wanted else None
        for bc in (src, dst) + ((mem,) if mem else ()):
            retry_busy(create_lineitem, bc.handle, LINEITEM, buckets=16, replication_num=1)
        clusters = [(src, 1), (dst, 1)] + ([(mem, 1)] if mem else [])
        workers = stack.enter_context(running(start_backend_workers(run, "bulk", clusters)))
        log(f"loading {len(files)} generations into {src.name}:{LINEITEM} (2 at a time)")
        load_seconds = load_parallel(run, src, LINEITEM, files)
        src_files = table_files(src.handle, LINEITEM)
        nbytes = total_bytes(src_files)
        log(
            f"  {nbytes / MB:.0f} MB in {len(src_files)} rowset files, "
            f"loaded in {load_seconds:.0f}s"
        )

        bulk = None
        if "bulk" in wanted or "incremental" in wanted:
            bulk = scenario_bulk(run, workers, src, dst, nbytes, len(src_files))
            bulk["load_seconds"] = round(load_seconds, 1)
            bulk["generate_seconds"] = round(gen_seconds, 1)
            run.record(bulk)
        if mem is not None:
            run.record(scenario_memory(run, workers, src, mem, nbytes))
        if "incremental" in wanted and bulk is not None:
            run.record(scenario_incremental(run, workers, src, dst, files[0], rows_in, bulk))


def scenario_bulk(
    run: Run, workers: Workers, src: BenchCluster, dst: BenchCluster, nbytes: int, nfiles: int
) -> dict[str, Any]:
    cp_runs, rsync_runs = [baseline(time_cp, src)], [baseline(time_rsync, src)]
    sync_disks()
    log(f"bulk: cp -r {cp_runs[0]:.2f}s, rsync -a {rsync_runs[0]:.2f}s; replicating")
    dst_workers = [n for n in workers.procs if fnmatch(n, cluster_pattern(dst.name))]
    children = pool_children(workers, dst_workers)
    for pid in children:
        reset_peak(pid)
    window = LogWindow([workers.procs[n] for n in dst_workers])
    with RssSampler(list(children)) as sampler:
        rep = replicate_timed(run, src, dst, LINEITEM, workers=workers, label="bulk")
    hwm = {pid: status_kb(pid, "VmHWM") for pid in children}
    job_id = int(rep["job"].split(":")[1])
    done, total = apply_bytes(dst.handle, job_id)
    verified = verify_copy(src, dst, LINEITEM)
    applies = succeeded(window.text(), "replication.apply")
    # The baselines again after the job; the best of the two runs is the one compared with.
    cp_runs.append(baseline(time_cp, src))
    rsync_runs.append(baseline(time_rsync, src))
    cp_seconds, rsync_seconds = min(cp_runs), min(rsync_runs)
    seconds = rep["seconds"]
    log(
        f"bulk: {seconds:.2f}s = {seconds / cp_seconds:.2f}x cp, "
        f"{seconds / rsync_seconds:.2f}x rsync"
    )
    return {
        "bench": "bulk",
        "bytes": nbytes,
        "files": nfiles,
        "seconds": round(seconds, 3),
        "mb_per_s": round(nbytes / MB / seconds, 1),
        "cp_seconds": round(cp_seconds, 3),
        "rsync_seconds": round(rsync_seconds, 3),
        "cp_runs": [round(x, 3) for x in cp_runs],
        "rsync_runs": [round(x, 3) for x in rsync_runs],
        "ratio_to_cp": round(seconds / cp_seconds, 2),
        "ratio_to_rsync": round(seconds / rsync_seconds, 2),
        "apply_bytes_verified": done,
        "apply_bytes_total": total,
        "apply_messages": len(applies),
        "apply_message_seconds": sorted(round(s, 2) for s, _ in applies),
        "apply_process_peak_rss_mb": {
            str(pid): round(max(hwm[pid], sampler.peak[pid]) / 1024, 1) for pid in children
        },
        "submit_seconds": round(rep["submit_seconds"], 3),
        "phases": rep["phases"],
        "cpu_seconds": rep["cpu_seconds"],
        "topology": "2 source + 2 target backends, one worker process each",
        **verified,
    }


def scenario_memory(
    run: Run, workers: Workers, src: BenchCluster, mem: BenchCluster, nbytes: int
) -> dict[str, Any]:
    name = next(n for n in workers.procs if fnmatch(n, cluster_pattern(mem.name)))
    proc = workers.procs[name]
    children = proc.child_pids()
    assert proc.popen is not None
    pids = [*children, proc.popen.pid]
    for pid in pids:
        reset_peak(pid)
    before = {pid: status_kb(pid, "VmRSS") for pid in pids}
    log(f"memory: one apply process ({name}) copies {nbytes / MB:.0f} MB")
    with RssSampler(pids) as sampler:
        rep = replicate_timed(run, src, mem, LINEITEM, workers=workers, label="memory")
    hwm = {pid: max(status_kb(pid, "VmHWM"), sampler.peak[pid]) for pid in pids}
    job_id = int(rep["job"].split(":")[1])
    done, _total = apply_bytes(mem.handle, job_id)
    verify_copy(src, mem, LINEITEM)
    peak_child = max(hwm[p] for p in children)
    log(f"memory: apply process peak RSS {peak_child / 1024:.0f} MB")
    return {
        "bench": "memory",
        "bytes_copied": done,
        "peak_rss_mb": round(peak_child / 1024, 1),
        "rss_before_mb": round(max(before[p] for p in children) / 1024, 1),
        "worker_main_process_peak_rss_mb": round(hwm[proc.popen.pid] / 1024, 1),
        "seconds": round(rep["seconds"], 3),
        "mb_per_s": round(nbytes / MB / rep["seconds"], 1),
        "cpu_seconds": rep["cpu_seconds"],
        "how": "VmHWM of the pool process (reset via /proc/PID/clear_refs before the job), "
        "max with 20 ms VmRSS samples",
    }


def scenario_incremental(
    run: Run,
    workers: Workers,
    src: BenchCluster,
    dst: BenchCluster,
    part: Path,
    rows_in: int,
    bulk: dict[str, Any],
) -> dict[str, Any]:
    n = max(1, rows_in // 100)
    rows = head_rows(part, n)
    t0 = time.perf_counter()
    retry_busy(src.handle.load, LINEITEM, rows, label="incremental-1pct")
    load_seconds = time.perf_counter() - t0
    sync_disks()
    rep = replicate_timed(run, src, dst, LINEITEM, workers=workers, label="incremental")
    job_id = int(rep["job"].split(":")[1])
    done, _ = apply_bytes(dst.handle, job_id)
    verify_copy(src, dst, LINEITEM)
    with dst.handle.catalog.engine.connect() as conn:
        incremental = conn.execute(
            sa.text("SELECT bool_and(incremental) FROM job_tasks WHERE job_id = :j AND kind = :k"),
            {"j": job_id, "k": TaskKind.APPLY},
        ).scalar_one()
    fraction = rep["seconds"] / bulk["seconds"]
    log(f"incremental: {rep['seconds']:.2f}s = {fraction:.1%} of bulk")
    return {
        "bench": "incremental",
        "rows": n,
        "bytes": done,
        "all_tablets_incremental": bool(incremental),
        "seconds": round(rep["seconds"], 3),
        "bulk_seconds": bulk["seconds"],
        "fraction_of_bulk": round(fraction, 4),
        "load_seconds": round(load_seconds, 2),
        "phases": rep["phases"],
        "cpu_seconds": rep["cpu_seconds"],
    }


def make_small_tables(
    src: BenchCluster, dst: BenchCluster, names: Sequence[str], buckets: int, rows: int
) -> None:
    for i, name in enumerate(names):
        for bc in (src, dst):
            retry_busy(
                bc.handle.create_table,
                name,
                SMALL_COLUMNS,
                distributed_by=["id"],
                buckets=buckets,
                replication_num=1,
            )
        retry_busy(src.handle.load, name, small_rows(rows, seed=i, days=365), label=f"l-{i}")


def latency_group(run: Run, wanted: set[str]) -> None:
    sz = run.sizes
    with contextlib.ExitStack() as stack:
        src = run.cluster(stack, "lsrc", 2)
        dst = run.cluster(stack, "ldst", 2)
        workers = stack.enter_context(
            running(start_backend_workers(run, "latency", [(src, 1), (dst, 1)]))
        )
        if "latency" in wanted:
            run.record(scenario_latency(run, src, dst, workers))
        if "concurrency" in wanted:
            run.record(scenario_concurrency(run, src, dst, workers))
        del sz


def scenario_latency(
    run: Run, src: BenchCluster, dst: BenchCluster, workers: Workers
) -> dict[str, Any]:
    n = run.sizes.latency_jobs
    names = [f"lat.t{i:02d}" for i in range(n)]
    make_small_tables(src, dst, names, buckets=1, rows=100)
    log(f"latency: {n} one-tablet tables, one job at a time")
    times, submits, all_phases, cpu = [], [], [], []
    for i, name in enumerate(names):
        label = "latency" if i == len(names) - 1 else None
        rep = replicate_timed(run, src, dst, name, timeout=120, workers=workers, label=label)
        times.append(rep["seconds"])
        submits.append(rep["submit_seconds"])
        all_phases.append(rep["phases"])
        cpu.append(rep["cpu_seconds"])
    median = statistics.median(times)
    log(f"latency: median {median * 1000:.0f} ms")

    def med(state: str) -> float:
        return round(statistics.median(p.get(state, float("nan")) for p in all_phases), 4)

    return {
        "bench": "latency",
        "jobs": n,
        "median_seconds": round(median, 4),
        "p90_seconds": round(pct(times, 0.9), 4),
        "min_seconds": round(min(times), 4),
        "max_seconds": round(max(times), 4),
        "seconds": [round(t, 4) for t in times],
        "median_submit_call_seconds": round(statistics.median(submits), 4),
        "median_phase_reached": {s: med(s) for s in ("SNAPSHOTING", "REPLICATING", "COMMITTED")},
        "median_cpu_seconds": {
            role: round(statistics.median(c[role] for c in cpu), 3) for role in cpu[0]
        },
    }


def scenario_concurrency(
    run: Run, src: BenchCluster, dst: BenchCluster, workers: Workers
) -> dict[str, Any]:
    n = run.sizes.concurrent_jobs
    names = [f"conc.t{i:03d}" for i in range(n)]
    t0 = time.perf_counter()
    make_small_tables(src, dst, names, buckets=2, rows=200)
    log(f"concurrency: {n} tables made in {time.perf_counter() - t0:.0f}s; submitting {n} jobs")
    coord = list(run.coordinator.procs.values())
    window = LogWindow(coord)
    backend_window = LogWindow(list(workers.procs.values()))

    meter = CpuMeter(cpu_roles(run, workers, src, dst))
    profiles = ProfileWindow(run, "concurrency")
    t0 = time.perf_counter()
    # One batch (Replicator.replicate_many): one job at a time cost 26-41 ms of client time each.
    jobs = run.replicator.replicate_many([Request(f"{src.name}:{n}", dst.name) for n in names])
    submitted = time.perf_counter() - t0
    t1, states = wait_jobs(jobs, timeout=600, poll=0.02)
    seconds = t1 - t0
    time.sleep(1.5)  # let the last ticks reach the log
    cpu = meter.read()
    profiles.summarize()
    result = _concurrency_result(n, seconds, submitted, states, cpu, window.text(), backend_window)
    return result | _job_timeline(jobs)


def _job_timeline(jobs: Sequence[Job]) -> dict[str, list[float]]:
    """When each job was created and finished, in seconds after the first was created (the
    catalog's clock for both), for the concurrency plot."""
    records = [j.record for j in jobs]
    zero = min(r.created_at for r in records)
    return {
        "submitted_seconds": sorted(
            round((r.created_at - zero).total_seconds(), 3) for r in records
        ),
        "commit_seconds": sorted(
            round((r.finished_at - zero).total_seconds(), 3)
            for r in records
            if r.finished_at is not None and str(r.state) == "COMMITTED"
        ),
    }


def _concurrency_result(
    n: int,
    seconds: float,
    submitted: float,
    states: dict[int, str],
    cpu: dict[str, float],
    text: str,
    backend_window: LogWindow,
) -> dict[str, Any]:
    ticks = succeeded(text, "replication.tick")
    # Per-job ticks: nudges (one job a message) and each job of the beat's chunks ('ms').
    one_job = [s for s, ret in ticks if "'jobs': 1," in ret and "'ms':" not in ret]
    one_job += [
        float(ms) / 1000
        for _, ret in ticks
        if (m := re.search(r"'ms': \[([^\]]*)\]", ret))
        for ms in m.group(1).split(",")
        if ms.strip()
    ]
    # The beat: {'sweep': jobs it sent a tick, 'open': active jobs then, 'nudged': ...}.
    sweeps = [(s, _field(ret, "open")) for s, ret in ticks if "'sweep':" in ret]
    sweeps = [(s, j) for s, j in sweeps if j > 1]
    committed = sum(1 for s in states.values() if s == "COMMITTED")
    btext = backend_window.text()
    log(
        f"concurrency: {committed}/{n} committed in {seconds:.1f}s; job tick p50 "
        f"{pct(one_job, 0.5) * 1000:.0f} ms p95 {pct(one_job, 0.95) * 1000:.0f} ms"
    )
    return {
        "bench": "concurrency",
        "jobs": n,
        "committed": committed,
        "aborted": sum(1 for s in states.values() if s == "ABORTED"),
        "seconds": round(seconds, 2),
        "submit_seconds": round(submitted, 2),
        "job_ticks": len(one_job),
        "job_tick_p50_ms": round(pct(one_job, 0.5) * 1000, 1),
        "job_tick_p95_ms": round(pct(one_job, 0.95) * 1000, 1),
        "job_tick_max_ms": round(max(one_job, default=0.0) * 1000, 1),
        "sweep_ticks": len(sweeps),
        "sweep_tick_max_s": round(max((s for s, _ in sweeps), default=0.0), 3),
        "sweep_tick_max_jobs": max((j for _, j in sweeps), default=0),
        "sweep_ms_per_job_p50": round(pct([s / j for s, j in sweeps], 0.5) * 1000, 1)
        if sweeps
        else None,
        "messages_received": {**received(text), **received(btext)},
        "cpu_seconds": cpu,
        "coordinator_cpu_ms_per_tick": round(
            cpu["coordinator"] * 1000 / max(1, received(text).get("replication.tick", 0)), 1
        ),
        "how": "job ticks: coordinator log lines 'Task replication.tick[...] succeeded in Xs' "
        "of nudges (one job each), and the 'ms' of each job of the beat's chunks; sweeps: the "
        "beat's ticks (one query per cluster, tick messages to the jobs it names), with the "
        "jobs open at that beat",
    }


def _field(ret: str, name: str) -> int:
    m = re.search(rf"'{name}': (\d+)", ret)
    return int(m.group(1)) if m else 0


def scenario_small(run: Run) -> dict[str, Any]:
    sz = run.sizes
    tablets = sz.small_partitions * sz.small_buckets
    table = "small.t"
    with contextlib.ExitStack() as stack:
        src, dst, workers, load_seconds = _small_setup(run, stack, table)
        files = table_files(src.handle, table)
        nbytes = total_bytes(files)
        if len(files) != tablets:
            raise RuntimeError(f"expected one rowset file per tablet ({tablets}), got {len(files)}")
        cp_runs = [baseline(time_cp, src)]
        # Whatever time is left of the run's budget (12 minutes) bounds the job.
        timeout = max(120.0, run.remaining() - 45)
        log(
            f"small: {len(files):,} files, {nbytes / MB:.1f} MB (load {load_seconds:.0f}s); "
            f"cp -r {cp_runs[0]:.2f}s; replicating (cancelled after {timeout:.0f}s)"
        )
        rep, counts = _small_replicate(run, src, dst, workers, table, timeout)
        verified = verify_copy(src, dst, table) if rep["unfinished"] is None else {}
        cp_runs.append(baseline(time_cp, src))
    result = _small_result(rep, counts, tablets, nbytes, len(files), cp_runs, load_seconds)
    return {**result, **verified}


def _small_setup(
    run: Run, stack: contextlib.ExitStack, table: str
) -> tuple[BenchCluster, BenchCluster, Workers, float]:
    """Two clusters with the many-tablet table, their workers, the source loaded; returns them
    and the load's seconds."""
    sz = run.sizes
    src = run.cluster(stack, "ssrc", 2)
    dst = run.cluster(stack, "sdst", 2)
    for bc in (src, dst):
        create_day_table(bc, table, sz.small_partitions, sz.small_buckets)
    workers = stack.enter_context(
        running(start_backend_workers(run, "small", [(src, 1), (dst, 1)]))
    )
    tablets = sz.small_partitions * sz.small_buckets
    rows = tablets * sz.small_rows_per_tablet
    log(f"small: loading {rows:,} rows into {tablets:,} tablets")
    t0 = time.perf_counter()
    retry_busy(
        src.handle.load,
        table,
        small_rows(rows, seed=7, days=sz.small_partitions),
        label="small-1",
    )
    return src, dst, workers, time.perf_counter() - t0


def _small_replicate(
    run: Run, src: BenchCluster, dst: BenchCluster, workers: Workers, table: str, timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The timed job, and the Celery messages the workers logged meanwhile."""
    src_window = LogWindow([p for n, p in workers.procs.items() if src.name in n])
    dst_window = LogWindow([p for n, p in workers.procs.items() if dst.name in n])
    coord_window = LogWindow(list(run.coordinator.procs.values()))
    rep = replicate_timed(
        run,
        src,
        dst,
        table,
        timeout=timeout,
        workers=workers,
        label="small",
        cancel_late=True,
    )
    time.sleep(1.5)
    counts = {
        "snap": received(src_window.text()).get("replication.snapshot", 0),
        "appl": received(dst_window.text()).get("replication.apply", 0),
        "ticks": received(coord_window.text()).get("replication.tick", 0),
        "snap_runs": succeeded(src_window.text(), "replication.snapshot"),
        "apply_runs": succeeded(dst_window.text(), "replication.apply"),
    }
    return rep, counts


def _small_result(
    rep: dict[str, Any],
    counts: dict[str, Any],
    tablets: int,
    nbytes: int,
    n_files: int,
    cp_runs: list[float],
    load_seconds: float,
) -> dict[str, Any]:
    cp_seconds = min(cp_runs)
    seconds = rep["seconds"]
    unfinished = rep["unfinished"]
    if unfinished is not None:
        # Snapshot and apply tasks cost about the same per tablet (see cpu_seconds): extrapolate
        # the job's time from the share of tasks it finished.
        done = unfinished["snapshots_done"] + unfinished["applies_done"]
        total = unfinished["snapshots_total"] + max(unfinished["applies_total"], tablets)
        seconds = rep["seconds"] * total / max(done, 1)
    snap, appl = counts["snap"], counts["appl"]
    log(
        f"small: {seconds:.1f}s{' (extrapolated)' if unfinished else ''} = "
        f"{seconds / cp_seconds:.1f}x cp; {snap} snapshot + {appl} apply messages for "
        f"{tablets} tablets"
    )
    return {
        "bench": "small",
        "tablets": tablets,
        "bytes": nbytes,
        "avg_file_kib": round(nbytes / n_files / 1024, 1),
        "finished": unfinished is None,
        "unfinished": unfinished,
        "seconds": round(seconds, 3),
        "measured_seconds": round(rep["seconds"], 3),
        "cp_seconds": round(cp_seconds, 3),
        "cp_runs": [round(x, 3) for x in cp_runs],
        "ratio_to_cp": round(seconds / cp_seconds, 1),
        "tablets_per_s": round(tablets / seconds, 1),
        "snapshot_messages": snap,
        "apply_messages": appl,
        "messages_per_tablet": round((snap + appl) / tablets, 4),
        "tick_messages": counts["ticks"],
        "snapshot_message_seconds": sorted(round(s, 2) for s, _ in counts["snap_runs"]),
        "apply_message_seconds": sorted(round(s, 2) for s, _ in counts["apply_runs"]),
        "phases": rep["phases"],
        "cpu_seconds": rep["cpu_seconds"],
        "load_seconds": round(load_seconds, 1),
        "how": "messages: 'Task replication.snapshot|apply[...] received' lines the source and "
        "target backend workers logged during the job (each line is one Celery message); "
        "tick messages (nudges and beat) counted the same way in the coordinator log",
    }


# -- the report --------------------------------------------------------------------------------


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


Row = tuple[str, str, str, str, str]


def _row(name: str, measured: str, ratio: str, target: str, met: bool | None) -> Row:
    return (name, measured, ratio, target, "—" if met is None else ("yes" if met else "**no**"))


def summary_rows(results: Sequence[dict[str, Any]]) -> list[Row]:
    by = {r["bench"]: r for r in results}
    makers: list[tuple[str, Callable[[dict[str, Any]], list[Row]]]] = [
        ("bulk", _bulk_rows),
        ("small", _small_rows),
        ("incremental", _incremental_rows),
        ("latency", _latency_rows),
        ("concurrency", _concurrency_rows),
        ("memory", _memory_rows),
    ]
    return [row for bench, make in makers if bench in by for row in make(by[bench])]


def _bulk_rows(b: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    gib = b["bytes"] / GiB
    measured = (
        f"{_fmt_s(b['seconds'])} for {gib:.2f} GiB in {b['files']} files ({b['mb_per_s']} MB/s)"
    )
    rows.append(
        _row(
            "bulk vs cp -r",
            measured + f"; cp -r {_fmt_s(b['cp_seconds'])}",
            f"{b['ratio_to_cp']:.2f}x cp",
            "≤ 1.3x cp",
            b["ratio_to_cp"] <= 1.3,
        )
    )
    rows.append(
        _row(
            "bulk vs rsync -a",
            f"rsync -a {_fmt_s(b['rsync_seconds'])}",
            f"{b['ratio_to_rsync']:.2f}x rsync",
            "< 1x rsync",
            b["ratio_to_rsync"] < 1,
        )
    )
    ok = b["apply_bytes_verified"] == b["bytes"] and b["verified_bytes"] == b["bytes"]
    rows.append(
        _row(
            "bulk: every byte checksummed",
            f"{b['apply_bytes_verified']:,} of {b['bytes']:,} bytes verified by apply (xxh3); "
            "target files byte-identical",
            "",
            "all bytes",
            ok,
        )
    )
    return rows


def _small_rows(s: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    rows.append(
        _row(
            "many small tablets",
            (
                f"{_fmt_s(s['seconds'])}"
                if s["finished"]
                else f"~{_fmt_s(s['seconds'])} (extrapolated: cancelled after "
                f"{_fmt_s(s['measured_seconds'])} with {s['unfinished']['applies_done']:,} of "
                f"{s['tablets']:,} tablets applied)"
            )
            + f" for {s['tablets']:,} tablets of {s['avg_file_kib']} KiB "
            f"({s['tablets_per_s']:.0f} tablets/s); cp -r {_fmt_s(s['cp_seconds'])}",
            f"{s['ratio_to_cp']:.1f}x cp",
            "≤ 5x cp",
            s["ratio_to_cp"] <= 5,
        )
    )
    rows.append(
        _row(
            "small tablets: messages",
            f"{s['snapshot_messages']} snapshot + {s['apply_messages']} apply messages "
            f"(+ {s['tick_messages']} coordinator ticks)",
            f"{s['messages_per_tablet']:.4f} / tablet",
            "batched (≤ 0.01 / tablet)",
            s["messages_per_tablet"] <= 0.01,
        )
    )
    return rows


def _incremental_rows(i: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    rows.append(
        _row(
            "incremental (1% rows)",
            f"{_fmt_s(i['seconds'])} ({i['bytes'] / MB:.1f} MB; bulk {_fmt_s(i['bulk_seconds'])})",
            f"{i['fraction_of_bulk']:.1%} of bulk",
            "≤ 5% of bulk",
            i["fraction_of_bulk"] <= 0.05,
        )
    )
    return rows


def _latency_rows(lat: dict[str, Any]) -> list[Row]:
    # Targets: issue 13's (one tablet ≤ 50 ms median, submit to COMMITTED).
    return [
        _row(
            "latency (one tablet)",
            f"median {_fmt_s(lat['median_seconds'])} of {lat['jobs']} (min "
            f"{_fmt_s(lat['min_seconds'])}, max {_fmt_s(lat['max_seconds'])}); one submit call "
            f"{_fmt_s(lat['median_submit_call_seconds'])}",
            f"{lat['median_seconds'] / 0.05:.2f}x target",
            "≤ 50 ms",
            lat["median_seconds"] <= 0.05,
        )
    ]


def _concurrency_rows(c: dict[str, Any]) -> list[Row]:
    # Targets: issue 13's (1,000 jobs: all commit ≤ 15 s from the first submit, ≤ 5 ms of client
    # time per submit, a beat ≤ 1 s over 1,000 open jobs, per-job tick p95 ≤ 20 ms).
    n = c["jobs"]
    per_submit = c["submit_seconds"] / max(n, 1)
    beat = (
        f"max {c['sweep_tick_max_s']} s ({c['sweep_ticks']} beats; up to "
        f"{c['sweep_tick_max_jobs']} jobs open)"
        if c["sweep_ticks"]
        else "no beat ran while jobs were open"
    )
    return [
        _row(
            "concurrency: all commit",
            f"{c['committed']}/{n} committed in {_fmt_s(c['seconds'])}",
            f"{c['seconds'] / 15:.2f}x target",
            "all commit, ≤ 15 s",
            c["committed"] == n and c["seconds"] <= 15,
        ),
        _row(
            "concurrency: submit",
            f"{_fmt_s(c['submit_seconds'])} for {n} jobs in one batch (replicate_many)",
            f"{per_submit * 1000:.2f} ms a job",
            "≤ 5 ms a job",
            per_submit <= 0.005,
        ),
        _row(
            "concurrency: per-job tick",
            f"p50 {c['job_tick_p50_ms']} ms, p95 {c['job_tick_p95_ms']} ms, max "
            f"{c['job_tick_max_ms']} ms ({c['job_ticks']} ticks)",
            f"{c['job_tick_p95_ms'] / 20:.2f}x target (p95)",
            "p95 ≤ 20 ms",
            c["job_tick_p95_ms"] <= 20,
        ),
        _row(
            "concurrency: beat",
            beat,
            f"{c['sweep_tick_max_s']:.2f}x target" if c["sweep_ticks"] else "",
            "≤ 1 s over 1,000 open jobs",
            bool(c["sweep_ticks"]) and c["sweep_tick_max_s"] <= 1 and n >= 1000,
        ),
    ]


def _memory_rows(m: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    rows.append(
        _row(
            "memory (apply worker)",
            f"peak RSS {m['peak_rss_mb']} MB while one process copied "
            f"{m['bytes_copied'] / GiB:.2f} GiB ({m['mb_per_s']} MB/s)",
            f"{m['peak_rss_mb'] / 200:.2f}x target",
            "≤ 200 MB",
            m["peak_rss_mb"] <= 200,
        )
    )
    return rows


def write_results(run: Run, path: Path, total_seconds: float, argv: Sequence[str]) -> None:
    m = run.machine
    lines = [
        "# Replication benchmarks",
        "",
        f"`{' '.join(['.venv/bin/python -m bench.run', *argv])}` — run `{run.run_id}`, "
        f"{m.get('date', '')}, total {total_seconds / 60:.1f} min (including data generation "
        "and loads).",
        "",
        "| scenario | measured | ratio / target | target | met? |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in summary_rows(run.results):
        lines.append("| " + " | ".join(row) + " |")
    if charts := _plots(run, path):
        lines += ["", "Drawn by this run (bench/plots.py):", "", *charts]
    lines += ["", "## Machine", "", *[f"- {k}: {v}" for k, v in m.items()], "", "## How", ""]
    lines += [
        "- One private redis-server; Celery workers started as frontends/supervise.py starts "
        "them: one "
        "coordinator (2 processes + beat), and for each cluster one worker per backend with one "
        "pool process (`-c 1`). Source and target clusters have 2 backends each; the memory "
        "cluster has 1, so one process copies everything. Catalogs are fresh Postgres databases, "
        "dropped at the end with their storage.",
        "- Times are submit -> COMMITTED as the client sees it (the job row polled every 5 ms). "
        "cp -r and rsync -a copy the source backends' data/ directories (the same rowset files) "
        "to the same disk, once before and once after the job; the best of the two is the "
        "baseline. Every timed copy starts after `sync`; the source files are in the page "
        "cache for all three, as they are right after the loads. Each group of workers first "
        "replicates a small warm-up table, so that no timed job pays for a worker's first "
        "contact with a catalog. `cpu_seconds` in the raw results is the CPU time of each kind "
        "of process during the job (Postgres only when the run uses a private one); on a shared "
        "machine "
        "it is steadier than wall time. The run has a 12-minute budget: a small-tablets job "
        "still open when it runs out is cancelled and its time extrapolated from the share of "
        "tasks done.",
        "- bulk: lineitem generated by tpchgen-cli in several parts, each loaded as one "
        "transaction (so tablets hold several rowsets). The bench then checks that every target "
        "file has the source's size and xxh3 and that versions and row counts match.",
        "- incremental: 1% of the bulk rows loaded again, then replicated (incremental snapshots).",
        "- small: one table of partitions x buckets tablets, one rowset file each. Messages are "
        "counted from the workers' 'Task replication.snapshot|apply[...] received' log lines.",
        "- concurrency: per-job tick = 'Task replication.tick[...] succeeded in Xs' for nudges "
        "(one job per tick) in the coordinator log; a beat sweep ticks every open job in turn.",
        "- memory: VmHWM of the apply pool process, reset through /proc/PID/clear_refs before "
        "the job, cross-checked with VmRSS sampled every 20 ms.",
        "",
        "## Raw results",
        "",
        "```",
        *[json.dumps(_raw(r), default=str) for r in run.results],
        "```",
        "",
    ]
    path.write_text("\n".join(lines) + _kept_sections(path))


def _raw(result: dict[str, Any]) -> dict[str, Any]:
    """A result as the raw section shows it: the per-job timelines (plotted) in brief."""
    return {
        k: f"[{len(v)} values, {min(v)} .. {max(v)}]" if k in _TIMELINES and v else v
        for k, v in result.items()
    }


_TIMELINES = {"submitted_seconds", "commit_seconds"}


def _plots(run: Run, path: Path) -> list[str]:
    """Draw this run's charts next to the results file; markdown lines that show them."""
    drawn = [
        plots.time_against_baselines(run.results, path.with_name(f"{path.stem}-vs-cp.png")),
        plots.concurrency_curve(
            next((r for r in run.results if r["bench"] == "concurrency"), None),
            path.with_name(f"{path.stem}-concurrency.png"),
        ),
    ]
    return [f"![{p.stem}]({p.name})" for p in drawn if p is not None]


def _kept_sections(path: Path) -> str:
    """Sections other benchmarks write into the same file (``bench.transfer``'s "Across hosts",
    ``bench.sync``'s "Continuous sync"): this run replaces only its own part."""
    old = path.read_text() if path.exists() else ""
    found = [at for h in ("\n## Across hosts", "\n## Continuous sync") if (at := old.find(h)) >= 0]
    return "\n" + old[min(found) :] if found else ""


# -- main --------------------------------------------------------------------------------------


def pg_version(settings: Settings) -> str:
    url = settings.dsn_template.rsplit("/", 1)[0] + "/postgres"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


MIN_FREE_CONNECTIONS = 60  # workers and the bench hold about 30 at the busiest


def shared_pg_free_connections() -> int:
    """max_connections minus connections in use on the machine's Postgres (0 if unreachable)."""
    engine = sa.create_engine(f"{PG_URL}/postgres", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            limit = int(conn.execute(sa.text("SHOW max_connections")).scalar_one())
            used = int(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity")).scalar_one())
            reserved = int(
                conn.execute(sa.text("SHOW superuser_reserved_connections")).scalar_one()
            )
            return max(0, limit - reserved - used)
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def _raise_on_term(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--results", type=Path, default=None, help="where to write the markdown table")
    ap.add_argument(
        "--postgres",
        choices=("auto", "shared", "private"),
        default="auto",
        help="catalogs on the machine's Postgres (BENCH_PG_URL, default 127.0.0.1:5432), on a "
        "throw-away private one (same version, fsync on), or (auto) the shared one unless it "
        f"has fewer than {MIN_FREE_CONNECTIONS} free connections",
    )
    ap.add_argument("--private-postgres", action="store_true", help="same as --postgres private")
    ap.add_argument(
        "--jobs", type=int, default=None, help="concurrency: jobs submitted at once (1,000)"
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="cProfile every worker task (slower; see bench/out/profiles/RUN/*.txt)",
    )
    return ap


def _wanted(ap: argparse.ArgumentParser, only: str) -> set[str]:
    wanted = set(SCENARIOS)
    if only:
        wanted = {s.strip() for s in only.split(",") if s.strip()}
        unknown = wanted - set(SCENARIOS)
        if unknown:
            ap.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; pick from {SCENARIOS}")
    return wanted


def _use_private_postgres(args: argparse.Namespace) -> bool:
    private = bool(args.private_postgres or args.postgres == "private")
    if args.postgres == "auto" and not private:
        free = shared_pg_free_connections()
        private = free < MIN_FREE_CONNECTIONS
        log(
            f"shared Postgres has {free} free connections: "
            + ("using a private one" if private else "using it")
        )
    return private


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = _parser()
    args = ap.parse_args(argv)
    wanted = _wanted(ap, args.only)
    results_path = args.results or (
        BENCH_DIR / "RESULTS.md" if not (args.quick or args.only) else OUT_DIR / "RESULTS.quick.md"
    )
    signal.signal(signal.SIGTERM, _raise_on_term)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A load keeps one open file per tablet it writes: 10,000 tablets need more than 1024.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    sizes = QUICK if args.quick else FULL
    if args.jobs is not None:
        sizes = dataclasses.replace(sizes, concurrent_jobs=args.jobs)
    started = time.perf_counter()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    private = _use_private_postgres(args)
    with start_run(sizes, args.quick, private, args.profile) as run:
        _describe_machine(run, private)
        log(
            f"run {run.run_id}: {', '.join(s for s in SCENARIOS if s in wanted)}; logs {run.logdir}"
        )
        steps: list[tuple[set[str], Callable[[], None]]] = [
            (NEEDS_BULK, lambda: bulk_group(run, wanted)),
            ({"latency", "concurrency"}, lambda: latency_group(run, wanted)),
            ({"small"}, lambda: run.record(scenario_small(run))),
        ]
        try:
            for needs, step in steps:
                if needs & wanted:
                    step()
        finally:
            total = time.perf_counter() - started
            if run.results:
                write_results(run, results_path, total, argv)
                log(f"wrote {results_path} ({total / 60:.1f} min)")
    return 0


def _describe_machine(run: Run, private: bool) -> None:
    run.machine["load average at start (1, 5, 15 min)"] = ", ".join(
        f"{x:.2f}" for x in os.getloadavg()
    )
    run.machine["catalog postgres"] = (
        "private (bench/out/pg, started by the run)" if private else PG_URL.split("@")[-1]
    )
    run.machine = {**machine_info(pg_version(run.settings)), **run.machine}


if __name__ == "__main__":
    sys.exit(main())
