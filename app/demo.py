"""The one-command demo: ``make demo`` (``python -m app.demo``) and ``make demo-down``.

What it does, end to end, on one machine:

1. resets two clusters, ``prod`` and ``dr``, with three backends each under ``var/demo/<cluster>/``
   (a previous demo's catalogs, storage and processes are removed first);
2. generates TPC-H ``lineitem`` with tpchgen-cli and loads most of it into ``prod:tpch.lineitem``
   (4 range partitions on ``l_shipdate`` x 12 hash buckets, ``replication_num`` 2);
3. starts one Celery worker per backend queue, the coordinator with its beat tick, and Flower,
   as detached processes (logs in ``var/demo/logs/``, pids in ``var/demo/pids/``);
4. replicates ``prod:tpch.lineitem`` to ``dr`` (a full copy), with a live progress bar;
5. loads the rest of the data into ``prod`` and replicates again: only the new rowsets travel;
6. checks that both clusters hold the same data (per partition: rows, checksum, version, epoch);
7. prints a summary. The workers and Flower keep running until ``make demo-down``.

Settings come from ``load_settings()`` (``replicator.toml`` / ``REPLICATOR_*``); the workers inherit
the same environment. ``DEMO_SCALE_FACTOR`` changes the size of the data (default 0.3).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not a package: make `bench.common` importable
    sys.path.insert(0, str(ROOT))

from rich import box  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402

DEMO_DIR = ROOT / "var" / "demo"
LOG_DIR = DEMO_DIR / "logs"
PID_DIR = DEMO_DIR / "pids"
BEAT_SCHEDULE = DEMO_DIR / "beat-schedule"

SOURCE = "prod"
TARGET = "dr"
CLUSTERS = (SOURCE, TARGET)
BACKENDS = ("be1", "be2", "be3")
TABLE = "tpch.lineitem"
BUCKETS = 12
REPLICATION_NUM = 2
# tpchgen writes PARTS disjoint slices of the data; the first load takes all but the last one,
# the second load (the incremental step) takes the last one.
PARTS = 10
DEFAULT_SCALE_FACTOR = 0.3
FLOWER_PORT = 5555
READY_TIMEOUT_SEC = 120.0
JOB_TIMEOUT_SEC = 900.0
STALL_TIMEOUT_SEC = 180.0  # a job whose progress does not move for this long is reported
STOP_TIMEOUT_SEC = 20.0
MB = 1_000_000

# Piped output (CI logs) has no width to respect; rich would wrap it at 80 columns.
console = Console(
    highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 110
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class DemoError(Exception):
    """Something the demo cannot go on with; the message is the one line the user sees."""


# -- processes ------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[2])


def _is_demo_process(pid: int) -> bool:
    """Guard against a recycled pid: the process must exist and be one of our celery commands."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        # No /proc (not Linux): fall back to "it exists".
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _proc_stat(pid)
    ours = b"celery" in cmdline and b"workers" in cmdline
    return ours and stat is not None and stat[0] != "Z"


def _group_alive(pgid: int) -> bool:
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_processes(*, verbose: bool = True) -> list[str]:
    """Stop every process named in var/demo/pids: SIGTERM to its group, SIGKILL after a while."""
    if not PID_DIR.is_dir():
        return []
    running: dict[str, int] = {}
    for pid_file in sorted(PID_DIR.glob("*.pid")):
        name = pid_file.stem
        try:
            pid = int(pid_file.read_text().split()[0])
        except (ValueError, IndexError, OSError):
            pid_file.unlink(missing_ok=True)
            continue
        if _is_demo_process(pid):
            running[name] = pid
            _signal_group(pid, signal.SIGTERM)
        else:
            pid_file.unlink(missing_ok=True)
    if not running:
        return []
    deadline = time.monotonic() + STOP_TIMEOUT_SEC
    with console.status(f"Stopping {len(running)} demo processes..."):
        while time.monotonic() < deadline and any(_group_alive(p) for p in running.values()):
            time.sleep(0.2)
    killed = []
    for name, pid in running.items():
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            killed.append(name)
    if killed:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(running[n]) for n in killed):
            time.sleep(0.1)
    for name, pid in running.items():
        (PID_DIR / f"{name}.pid").unlink(missing_ok=True)
        if verbose:
            how = "SIGKILL after SIGTERM timed out" if name in killed else "SIGTERM"
            console.print(f"  stopped {name} (pid {pid}, {how})")
    return list(running)


@dataclass
class Spawned:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    celery_worker: bool


def _spawn(
    name: str, args: list[str], env: dict[str, str], *, celery_worker: bool = True
) -> Spawned:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    PID_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (PID_DIR / f"{name}.pid").write_text(f"{popen.pid}\n")
    return Spawned(name, popen, log, celery_worker)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ready(proc: Spawned) -> bool:
    if proc.popen.poll() is not None:
        raise DemoError(
            f"{proc.name} exited with code {proc.popen.returncode} while starting; "
            f"see {proc.log.relative_to(ROOT)}:\n{_log_tail(proc.log)}"
        )
    try:
        text = proc.log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return " ready." in text


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The demo's coordinator serves the demo's clusters only, whatever else the server holds.
    env.setdefault("REPLICATOR_COORDINATOR_CLUSTERS", ",".join(CLUSTERS))
    # Workers run with cwd=ROOT; make them read the same settings file the demo read.
    if "REPLICATOR_CONFIG" not in env and Path("replicator.toml").is_file():
        env["REPLICATOR_CONFIG"] = str(Path("replicator.toml").resolve())
    return env


def start_processes() -> tuple[list[Spawned], int]:
    """Backend workers, the coordinator with beat, and Flower. Returns them and Flower's port."""
    env = _worker_env()
    from app.queues import queue_name
    from workers.commands import backend_worker_argv, coordinator_argv

    celery = [sys.executable, "-m", "celery", "-A", "workers"]
    quiet = ("--without-mingle", "--without-gossip")
    procs: list[Spawned] = []
    for cluster in CLUSTERS:
        for backend in BACKENDS:
            queue = queue_name(cluster, backend)
            procs.append(_spawn(queue, backend_worker_argv(queue, extra=quiet), env))
    args = coordinator_argv(beat_schedule=str(BEAT_SCHEDULE), extra=quiet)
    procs.append(_spawn("coordinator", args, env))
    port = FLOWER_PORT if _port_free(FLOWER_PORT) else _free_port()
    procs.append(
        _spawn(
            "flower",
            [*celery, "flower", f"--port={port}", "--address=127.0.0.1"],
            env,
            celery_worker=False,
        )
    )
    return procs, port


def wait_ready(procs: Sequence[Spawned], flower_port: int) -> bool:
    """Wait for every worker's " ready." line; returns whether Flower answers too."""
    workers = [p for p in procs if p.celery_worker]
    flower = next(p for p in procs if not p.celery_worker)
    deadline = time.monotonic() + READY_TIMEOUT_SEC
    ready: set[str] = set()
    with console.status("") as status:
        while len(ready) < len(workers):
            for p in workers:
                if p.name not in ready and _ready(p):
                    ready.add(p.name)
            status.update(f"Waiting for the workers: {len(ready)}/{len(workers)} ready")
            if len(ready) == len(workers):
                break
            if time.monotonic() > deadline:
                missing = ", ".join(p.name for p in workers if p.name not in ready)
                raise DemoError(
                    f"workers not ready after {READY_TIMEOUT_SEC:.0f}s: {missing} "
                    f"(logs in {LOG_DIR.relative_to(ROOT)}/)"
                )
            time.sleep(0.2)
        status.update("Waiting for Flower")
        flower_deadline = time.monotonic() + 20
        while time.monotonic() < flower_deadline:
            if flower.popen.poll() is not None:
                return False
            if _port_answers(flower_port):
                return True
            time.sleep(0.2)
    return False


# -- clusters -------------------------------------------------------------------------------


def _database_name(dsn: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(dsn).database or dsn


def _backend_roots(dsn: str) -> list[str]:
    """Storage roots the catalog names; [] when it has no backends table yet."""
    import sqlalchemy as sa

    engine = sa.create_engine(dsn)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT storage_root FROM backends"))]
    except sa.exc.ProgrammingError:
        return []
    finally:
        engine.dispose()


def _under(path: str | Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def reset_clusters(settings: Any) -> None:
    from app.catalog.engine import database_exists, drop_database

    for name in CLUSTERS:
        dsn = settings.dsn(name)
        if not database_exists(dsn):
            continue
        roots = _backend_roots(dsn)
        foreign = [r for r in roots if not _under(r, DEMO_DIR)]
        if foreign:
            raise DemoError(
                f"cluster {name!r} (database {_database_name(dsn)}) exists and is not a demo "
                f"cluster (it has storage at {foreign[0]}); the demo will not drop it. "
                "Point REPLICATOR_DSN_TEMPLATE elsewhere or drop it yourself."
            )
        drop_database(dsn)
        console.print(
            f"  dropped cluster [bold]{name}[/] (catalog database {_database_name(dsn)}) "
            "from a previous demo run"
        )
    for name in CLUSTERS:
        storage = DEMO_DIR / name
        if storage.exists():
            shutil.rmtree(storage)
            console.print(f"  deleted storage {storage.relative_to(ROOT)}/")
    for leftover in DEMO_DIR.glob("beat-schedule*"):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(LOG_DIR, ignore_errors=True)


def purge_demo_queues(broker_url: str) -> int:
    """Drop messages a previous demo left in the backend queues (they name jobs that are gone)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_connect_timeout=3)
    dropped = 0
    for cluster in CLUSTERS:
        for key in client.scan_iter(match=f"be.{cluster}.*", count=1000):
            if client.type(key) == b"list":
                dropped += int(client.llen(key))
                client.delete(key)
    return dropped


def create_clusters(replicator: Any) -> None:
    for name in CLUSTERS:
        handle = replicator.cluster(name)
        handle.init()
        for backend in BACKENDS:
            handle.add_backend(backend, str(DEMO_DIR / name / backend))
        console.print(
            f"  cluster [bold]{name}[/]: catalog {_database_name(replicator.settings.dsn(name))}, "
            f"backends {', '.join(BACKENDS)} under {(DEMO_DIR / name).relative_to(ROOT)}/"
        )


# -- data -----------------------------------------------------------------------------------


def scale_factor() -> float:
    raw = os.environ.get("DEMO_SCALE_FACTOR")
    if raw is None:
        return DEFAULT_SCALE_FACTOR
    try:
        value = float(raw)
    except ValueError:
        raise DemoError(f"DEMO_SCALE_FACTOR must be a number, got {raw!r}") from None
    if not 0 < value <= 100:
        raise DemoError(f"DEMO_SCALE_FACTOR must be in (0, 100], got {raw!r}")
    return value


def generate(sf: float) -> list[Path]:
    """The PARTS lineitem files of scale factor ``sf`` in part order (cached under bench/out)."""
    from bench.common import lineitem_files

    with console.status(f"Generating TPC-H lineitem at scale factor {sf:g} with tpchgen-cli..."):
        started = time.monotonic()
        try:
            files = lineitem_files(sf, parts=PARTS)
        except subprocess.CalledProcessError as exc:
            raise DemoError(f"tpchgen-cli failed with exit code {exc.returncode}") from None
        took = time.monotonic() - started

    def part_no(path: Path) -> int:
        try:
            return int(path.name.split(".")[1])
        except (IndexError, ValueError):
            return 0

    files = sorted(files, key=part_no)
    size = sum(f.stat().st_size for f in files)
    how = f"generated in {took:.1f}s" if took > 0.5 else "cached"
    console.print(
        f"  TPC-H lineitem SF {sf:g}: {len(files)} Parquet files, {size / MB:.0f} MB ({how}, "
        f"{files[0].parent.relative_to(ROOT)}/)"
    )
    return files


@dataclass
class LoadReport:
    rows: int
    bytes: int
    files: int
    seconds: float
    versions: dict[str, int]


def load_files(handle: Any, files: Sequence[Path], label: str, what: str) -> LoadReport:
    """Load the files as one transaction, with a progress bar of rows read."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from bench.common import parquet_rows

    total = parquet_rows(files)
    scanner = ds.dataset([str(f) for f in files], format="parquet").scanner()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(f"Loading {what}", total=total)

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in scanner.to_batches():
                bar.advance(task, batch.num_rows)
                yield batch
            bar.update(task, description=f"Committing {what}")

        reader = pa.RecordBatchReader.from_batches(scanner.projected_schema, batches())
        started = time.monotonic()
        result = handle.load(TABLE, reader, label=label)
        took = time.monotonic() - started
    return LoadReport(result.rows, result.bytes, result.files, took, dict(result.versions))


def print_load(report: LoadReport, cluster: str) -> None:
    versions = sorted(set(report.versions.values()))
    if len(versions) == 1:
        where = f"partitions now at v{versions[0]}"
    else:
        where = ", ".join(f"{p}=v{v}" for p, v in sorted(report.versions.items()))
    console.print(
        f"  loaded {report.rows:,} rows in {report.seconds:.1f}s: {report.files} rowsets, "
        f"{report.bytes / MB:.1f} MB with replicas; {where}"
    )


# -- replication ----------------------------------------------------------------------------


@dataclass
class JobReport:
    title: str
    ref: str
    label: str
    state: str
    message: str | None
    bytes: int
    replicas: int
    replicas_done: int
    incremental_tablets: int
    full_tablets: int
    seconds: float
    phases: dict[str, float]

    @property
    def mode(self) -> str:
        if self.incremental_tablets and not self.full_tablets:
            return "incremental"
        if self.full_tablets and not self.incremental_tablets:
            return "full"
        if not self.full_tablets and not self.incremental_tablets:
            return "-"
        return "mixed"

    @property
    def mb_per_sec(self) -> float:
        return self.bytes / MB / self.seconds if self.seconds > 0 else 0.0


def _phases(job: Any) -> dict[str, float]:
    """Seconds the job spent in each state, from its events."""
    out: dict[str, float] = {}
    events = job.events
    for prev, nxt in itertools.pairwise(events):
        if prev.to_state == nxt.to_state:
            continue
        key = str(prev.to_state)
        out[key] = out.get(key, 0.0) + (nxt.at - prev.at).total_seconds()
    return out


def replicate(replicator: Any, title: str, label: str, *, create_target: bool) -> JobReport:
    started = time.monotonic()
    job = replicator.replicate(
        f"{SOURCE}:{TABLE}",
        TARGET,
        label=label,
        create_target=create_target,
        replication_num=REPLICATION_NUM if create_target else None,
    )
    console.print(
        f"  submitted job [bold]{job.ref}[/] ({job.label}): {SOURCE}:{TABLE} -> {TARGET}:{TABLE}"
    )
    deadline = started + JOB_TIMEOUT_SEC
    last_change, last_seen = time.monotonic(), None
    with Progress(
        TextColumn("  {task.description:<12}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[size]:>15}"),
        TextColumn("{task.fields[speed]:>11}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(str(job.state), total=None, size="", speed="", detail="")
        copy_started: float | None = None
        while True:
            job.refresh()
            p = job.progress
            if job.state == "SNAPSHOTING" or (p.snapshots_total and not p.tablets_total):
                detail = f"snapshots {p.snapshots_done}/{p.snapshots_total}"
            else:
                detail = f"replicas {p.tablets_done}/{p.tablets_total}"
            size = speed = ""
            if p.bytes_total:
                copy_started = copy_started or time.monotonic()
                size = f"{p.bytes_done / MB:.1f}/{p.bytes_total / MB:.1f} MB"
                took = time.monotonic() - copy_started
                if took > 0.5 and p.bytes_done:
                    speed = f"{p.bytes_done / MB / took:.1f} MB/s"
            bar.update(
                task,
                description=str(job.state),
                completed=p.bytes_done,
                total=p.bytes_total or None,
                size=size,
                speed=speed,
                detail=detail,
            )
            if job.state.final:
                if p.bytes_total:
                    bar.update(task, completed=p.bytes_total, total=p.bytes_total)
                break
            seen = (job.state, p.snapshots_done, p.tablets_done, p.bytes_done)
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            stalled = time.monotonic() - last_change
            if stalled > STALL_TIMEOUT_SEC or time.monotonic() > deadline:
                why = (
                    f"made no progress for {stalled:.0f}s"
                    if stalled > STALL_TIMEOUT_SEC
                    else (f"is not done after {JOB_TIMEOUT_SEC:.0f}s")
                )
                raise DemoError(
                    f"job {job.ref} {why} (state {job.state}, {detail}); see "
                    f"`replicator job show {job.ref}`, Flower and {LOG_DIR.relative_to(ROOT)}/"
                )
            time.sleep(0.2)
    client_seconds = time.monotonic() - started
    rec = job.record
    seconds = (
        (rec.finished_at - rec.created_at).total_seconds() if rec.finished_at else client_seconds
    )
    p = job.progress
    report = JobReport(
        title=title,
        ref=job.ref,
        label=job.label,
        state=str(job.state),
        message=job.message,
        bytes=p.bytes_total,
        replicas=p.tablets_total,
        replicas_done=p.tablets_done,
        incremental_tablets=p.incremental_tablets,
        full_tablets=p.full_tablets,
        seconds=seconds,
        phases=_phases(job),
    )
    colour = "green" if report.state == "COMMITTED" else "red"
    phases = ", ".join(f"{k.lower()} {v:.1f}s" for k, v in report.phases.items())
    console.print(
        f"  job {report.ref} [{colour}]{report.state}[/] in {report.seconds:.1f}s: "
        f"{report.bytes / MB:.1f} MB, {report.replicas_done}/{report.replicas} replicas, "
        f"{report.full_tablets} full + {report.incremental_tablets} incremental tablets"
        + (f" - {escape(report.message)}" if report.message and report.state != "COMMITTED" else "")
    )
    if phases:
        console.print(f"    {phases}")
    return report


# -- verification ---------------------------------------------------------------------------


def _partition_checksum(settings: Any, cluster: str, partition: str) -> Any:
    """One partition's checksum; runs in a pool process (hashing rows is CPU-bound)."""
    from app.client import Replicator

    return Replicator(settings).cluster(cluster).checksum(TABLE, [partition])[0]


def checksums(replicator: Any) -> tuple[bool, Table]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    units = [
        (name, p.name) for name in CLUSTERS for p in replicator.cluster(name).partitions(TABLE)
    ]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    results: dict[str, dict[str, Any]] = {name: {} for name in CLUSTERS}
    workers = max(1, min(len(units), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = {
            unit: pool.submit(_partition_checksum, replicator.settings, *unit) for unit in units
        }
        with console.status(f"Computing checksums of {TABLE} on {SOURCE} and {TARGET}..."):
            for (name, partition), future in futures.items():
                results[name][partition] = future.result()
    src, dst = results[SOURCE], results[TARGET]
    table = Table(
        title=f"{TABLE} per partition (where they differ: {SOURCE} above, {TARGET} below)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col, right in (
        ("partition", False),
        ("rows", True),
        ("version", True),
        ("epoch", True),
        ("checksum", False),
        ("same", False),
    ):
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    all_equal = set(src) == set(dst) and bool(src)
    for name in sorted(set(src) | set(dst)):
        a, b = src.get(name), dst.get(name)
        equal = (
            a is not None
            and b is not None
            and (a.rows, a.checksum, a.version, a.epoch) == (b.rows, b.checksum, b.version, b.epoch)
        )
        all_equal &= equal

        def pair(attr: str, fmt: str = "{}", a: Any = a, b: Any = b) -> str:
            x = fmt.format(getattr(a, attr)) if a is not None else "-"
            y = fmt.format(getattr(b, attr)) if b is not None else "-"
            return x if x == y else f"[red]{x}\n{y}[/]"

        table.add_row(
            name,
            pair("rows", "{:,}"),
            pair("version"),
            pair("epoch"),
            pair("checksum"),
            "[green]yes[/]" if equal else "[red]NO[/]",
        )
    return all_equal, table


# -- the demo -------------------------------------------------------------------------------


def preflight(settings: Any) -> None:
    import redis

    from app.catalog.engine import database_exists
    from app.errors import ReplicatorError

    try:
        database_exists(settings.dsn(SOURCE))
    except ReplicatorError as exc:  # StorageUnavailable: its message names database and cause
        raise DemoError(f"{_one_line(exc)} (is it running? `make services`)") from None
    except Exception as exc:  # turned into one line
        raise DemoError(
            f"cannot reach Postgres for {_database_name(settings.dsn(SOURCE))}: {_one_line(exc)} "
            "(is it running? `make services`)"
        ) from None
    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        raise DemoError(
            f"cannot reach the Redis broker at {_safe_url(settings.broker_url)}: {_one_line(exc)} "
            "(is it running? `make services`)"
        ) from None


class Steps:
    """Wall time of each step, for the summary."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, number: int, title: str, key: str, *, header: bool = True) -> None:
        self.end()
        if header:
            console.print(f"[bold]{number}. {title}[/]")
        self._current = (key, time.monotonic())

    def end(self) -> None:
        if self._current is not None:
            key, at = self._current
            self.times[key] = self.times.get(key, 0.0) + time.monotonic() - at
            self._current = None

    @property
    def total(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        return ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items())


def run() -> int:
    from app.client import Replicator
    from app.config import load_settings
    from bench.common import create_lineitem

    steps = Steps()
    settings = load_settings()
    sf = scale_factor()
    console.rule("[bold]olap-replicator demo")
    preflight(settings)

    steps.begin(1, "Clusters", "reset")
    stopped = stop_processes(verbose=False)
    if stopped:
        console.print(
            f"  stopped {len(stopped)} processes left from a previous demo run "
            f"({', '.join(stopped)})"
        )
    reset_clusters(settings)
    dropped = purge_demo_queues(settings.broker_url)
    if dropped:
        console.print(f"  dropped {dropped} stale messages from the demo's backend queues")
    replicator = Replicator(settings)
    create_clusters(replicator)

    steps.begin(2, "Workers", "workers")
    procs, flower_port = start_processes()
    console.print(
        f"  starting in the background: {len(CLUSTERS) * len(BACKENDS)} backend workers "
        f"(be.{CLUSTERS[0]}.{BACKENDS[0]} .. be.{CLUSTERS[-1]}.{BACKENDS[-1]}), "
        "coordinator + beat, Flower"
    )

    steps.begin(3, f"Data: TPC-H lineitem into {SOURCE}", "data")
    files = generate(sf)
    first, second = files[:-1], files[-1:]
    prod = replicator.cluster(SOURCE)
    info = create_lineitem(prod, TABLE, buckets=BUCKETS, replication_num=REPLICATION_NUM)
    n_parts = len(prod.partitions(TABLE))
    console.print(
        f"  created {SOURCE}:{info.full_name}: {n_parts} range partitions x {info.buckets} "
        f"buckets = {n_parts * info.buckets} tablets, {info.replication_num} replicas each"
    )
    load1 = load_files(prod, first, "demo-lineitem-1", f"parts 1-{len(first)} of {PARTS}")
    print_load(load1, SOURCE)

    steps.begin(2, "Workers", "workers", header=False)
    flower_ok = wait_ready(procs, flower_port)
    console.print(
        f"  workers ready ({len(CLUSTERS) * len(BACKENDS)} backends + coordinator); "
        f"logs {LOG_DIR.relative_to(ROOT)}/, pids {PID_DIR.relative_to(ROOT)}/"
    )
    flower_url = f"http://127.0.0.1:{flower_port}"
    if flower_ok:
        console.print(f"  Flower at {flower_url}")
    else:
        console.print(
            f"  [yellow]Flower did not come up on port {flower_port}; see "
            f"{(LOG_DIR / 'flower.log').relative_to(ROOT)}[/]"
        )

    steps.begin(4, f"Replicate {SOURCE}:{TABLE} -> {TARGET} (first copy)", "replicate")
    job1 = replicate(replicator, "first copy", "demo-full", create_target=True)
    jobs = [job1]
    if job1.state == "COMMITTED":
        steps.begin(5, f"Load more rows into {SOURCE}, replicate again", "load+replicate")
        load2 = load_files(prod, second, "demo-lineitem-2", f"part {PARTS} of {PARTS}")
        print_load(load2, SOURCE)
        job2 = replicate(replicator, "incremental", "demo-incremental", create_target=False)
        jobs.append(job2)

    steps.begin(6, f"Verify: checksum {TABLE} on {SOURCE} and {TARGET}", "verify")
    equal, table = checksums(replicator)
    console.print(table)
    steps.end()

    console.rule("[bold]Summary")
    summary = Table(box=box.SIMPLE_HEAD)
    for col, right in (
        ("job", False),
        ("mode", False),
        ("state", False),
        ("tablets\nincr/full", True),
        ("replicas", True),
        ("MB", True),
        ("time", True),
        ("MB/s", True),
    ):
        summary.add_column(col, justify="right" if right else "left")
    for j in jobs:
        colour = "green" if j.state == "COMMITTED" else "red"
        summary.add_row(
            j.ref,
            j.mode,
            f"[{colour}]{j.state}[/]",
            f"{j.incremental_tablets}/{j.full_tablets}",
            f"{j.replicas_done}/{j.replicas}",
            f"{j.bytes / MB:.1f}",
            f"{j.seconds:.1f}s",
            f"{j.mb_per_sec:.1f}",
        )
    console.print(summary)
    committed = len(jobs) == 2 and all(j.state == "COMMITTED" for j in jobs)
    if len(jobs) == 2 and jobs[0].bytes:
        share = 100.0 * jobs[1].bytes / jobs[0].bytes
        if jobs[1].mode == "incremental":
            console.print(
                f"  the second job was incremental: it moved only the new rowsets, "
                f"{share:.1f}% of the first job's bytes"
            )
        else:
            console.print(
                f"  [yellow]the second job was not incremental ({jobs[1].incremental_tablets} "
                f"incremental / {jobs[1].full_tablets} full tablets, {share:.1f}% of the bytes)[/]"
            )
    if equal:
        console.print(
            f"  check: [green]{SOURCE} and {TARGET} are equal[/] in all partitions "
            "(rows, checksum, version, epoch)"
        )
    else:
        console.print(f"  check: [red]{SOURCE} and {TARGET} differ[/] (see the table above)")
    console.print(
        f"  Flower: {flower_url}"
        + ("" if flower_ok else " (did not start)")
        + f"   logs: {LOG_DIR.relative_to(ROOT)}/"
    )
    console.print(f"  demo time {steps.total:.0f}s: {steps.line()}")
    console.print("  [bold]make demo-down[/] stops the workers and Flower")
    if not committed:
        failed = next((j for j in jobs if j.state != "COMMITTED"), None)
        why = f"job {failed.ref} {failed.state}: {failed.message or 'no message'}" if failed else ""
        console.print(f"[red]demo failed:[/] {escape(why)}")
        return 1
    if not equal:
        console.print(f"[red]demo failed:[/] {TARGET}:{TABLE} does not equal {SOURCE}:{TABLE}")
        return 1
    console.print("[green bold]demo OK[/]")
    return 0


def down() -> int:
    stopped = stop_processes()
    if stopped:
        console.print(f"stopped {len(stopped)} demo processes")
    else:
        console.print("no demo processes are running")
    return 0


def _safe_url(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"://[^@/]*@", "://***@", url)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.demo", description="Run the olap-replicator demo (or stop it)."
    )
    parser.add_argument("--down", action="store_true", help="stop the demo's workers and Flower")
    args = parser.parse_args(argv)
    from app.errors import ReplicatorError

    try:
        return down() if args.down else run()
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/]")
        code = 130
    except DemoError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        code = 1
    except ReplicatorError as exc:
        err_console.print(f"[red]error:[/] {escape(_one_line(exc))}")
        code = 1
    except Exception as exc:  # one clear line, never a traceback
        err_console.print(f"[red]error:[/] {type(exc).__name__}: {escape(_one_line(exc))}")
        if os.environ.get("DEMO_DEBUG"):
            raise
        code = 1
    if not args.down and PID_DIR.is_dir() and any(PID_DIR.glob("*.pid")):
        console.print(
            f"workers and Flower started by the demo are still running (logs in "
            f"{LOG_DIR.relative_to(ROOT)}/); `make demo-down` stops them"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
