"""Helpers shared by the benchmarks: a throw-away cluster, baselines, output.

Everything a benchmark writes lives under ``bench/out/`` (git-ignored):

    bench/out/data/sf<N>/...                    TPC-H lineitem (frontends/tpch.py), cached
    bench/out/clusters/<cluster>/<backend>/     storage roots of a bench cluster (deleted after)
    bench/out/scratch/<name>/                    targets of the cp / rsync baselines (deleted after)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.catalog.engine import drop_database
from app.client import ClusterHandle
from app.config import Settings
from app.units import MB
from frontends.connect import replicator
from frontends.supervise import Workers, free_port
from frontends.tpch import (
    LINEITEM_COLUMNS,
    LINEITEM_PARTITIONS,
    create_lineitem,
    lineitem_files,
    load_source,
    parquet_rows,
    tpchgen_executable,
)
from frontends.transfer_setup import LocalTransfer, local_transfer

__all__ = [
    "LINEITEM_COLUMNS",
    "LINEITEM_PARTITIONS",
    "MB",
    "create_lineitem",
    "lineitem_files",
    "load_source",
    "parquet_rows",
    "tpchgen_executable",
]

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
DATA_DIR = OUT_DIR / "data"
CLUSTERS_DIR = OUT_DIR / "clusters"
SCRATCH_DIR = OUT_DIR / "scratch"

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
DB_PREFIX = "olapbench"


# -- a throw-away cluster ------------------------------------------------------------------


def bench_settings(tag: str = "", pg_url: str | None = None, **overrides: Any) -> Settings:
    """Settings whose catalogs are ``<DB_PREFIX><tag>_<cluster>`` databases on PG_URL.

    A run-specific ``tag`` keeps the coordinator's cluster discovery (every database the DSN
    template matches) to this run's clusters only.
    """
    return Settings(dsn_template=f"{pg_url or PG_URL}/{DB_PREFIX}{tag}_{{cluster}}", **overrides)


def unique_name(prefix: str) -> str:
    """A cluster name no other run uses (lower-case, at most 40 characters)."""
    return f"{prefix[:20]}_{os.getpid()}_{secrets.token_hex(3)}"


@dataclass
class BenchCluster:
    name: str
    settings: Settings
    handle: ClusterHandle
    root: Path
    backend_roots: list[Path] = field(default_factory=list)

    def data_dirs(self) -> list[Path]:
        """The ``data/`` directory of every backend (the installed rowset files)."""
        return [r / "data" for r in self.backend_roots if (r / "data").is_dir()]

    def data_files(self) -> list[Path]:
        return sorted(p for d in self.data_dirs() for p in d.rglob("*") if p.is_file())


@contextlib.contextmanager
def bench_cluster(
    prefix: str, backends: int = 1, settings: Settings | None = None
) -> Iterator[BenchCluster]:
    """A fresh, uniquely named cluster with ``backends`` backends under bench/out/clusters/.

    Its catalog database and storage are removed on exit, whatever happened.
    """
    settings = settings or bench_settings()
    name = unique_name(prefix)
    root = CLUSTERS_DIR / name
    handle = replicator(settings).cluster(name)
    bc = BenchCluster(name, settings, handle, root)
    try:
        retry_busy(handle.init)
        for i in range(1, backends + 1):
            be_root = root / f"be{i}"
            handle.add_backend(f"be{i}", str(be_root))
            bc.backend_roots.append(be_root)
        yield bc
    finally:
        try:
            drop_database(settings.dsn(name))
        finally:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """An empty directory under bench/out/scratch/ (same disk as the cluster), removed on exit."""
    path = SCRATCH_DIR / f"{name}_{os.getpid()}_{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- baselines -----------------------------------------------------------------------------


def _copy_groups(src_files: Path | Sequence[Path], dst_dir: Path) -> list[tuple[list[Path], Path]]:
    """Split the sources into groups whose names do not collide inside one target directory."""
    if isinstance(src_files, str | os.PathLike):
        srcs = [Path(src_files)]
    else:
        srcs = [Path(s) for s in src_files]
    if not srcs:
        raise ValueError("nothing to copy")
    names = [s.name for s in srcs]
    if len(set(names)) == len(names):
        return [(srcs, dst_dir)]
    # e.g. several backends' data/ dirs, or several 0.parquet files: one sub-directory each
    return [([s], dst_dir / str(i)) for i, s in enumerate(srcs)]


def _timed_copy(argv_prefix: list[str], src_files: Path | Sequence[Path], dst_dir: Path) -> float:
    groups = _copy_groups(src_files, dst_dir)
    for _srcs, dst in groups:
        dst.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for srcs, dst in groups:
        subprocess.run([*argv_prefix, *map(str, srcs), f"{dst}/"], check=True)
    return time.perf_counter() - start


def time_cp(src_files: Path | Sequence[Path], dst_dir: Path) -> float:
    """Seconds ``cp -r`` takes to copy a directory or a list of files/directories into
    ``dst_dir``. Reflinks are refused so that the bytes are really copied on any file system."""
    return _timed_copy(["cp", "-r", "--reflink=never", "--"], src_files, dst_dir)


def time_rsync(src_files: Path | Sequence[Path], dst_dir: Path) -> float:
    """Seconds ``rsync -a`` takes to copy a directory or a list of files/directories into
    ``dst_dir`` (whole files, as on a first transfer)."""
    return _timed_copy(["rsync", "-a", "--"], src_files, dst_dir)


def total_bytes(files: Sequence[Path]) -> int:
    return sum(Path(f).stat().st_size for f in files)


def sync_disks() -> None:
    """Flush dirty pages so that a timed copy does not pay for the previous one's writeback."""
    os.sync()


def file_digests(dirs: Sequence[Path]) -> list[tuple[int, str]]:
    """Sorted (size, xxh3-64) of every file in ``dirs`` (files, or directories walked):
    equal lists = the same bytes."""
    import xxhash

    out = []
    buf = bytearray(8 * MB)
    view = memoryview(buf)
    for d in dirs:
        # A file stands for itself; a directory for every file under it.
        for p in [Path(d)] if Path(d).is_file() else sorted(Path(d).rglob("*")):
            if not p.is_file():
                continue
            h = xxhash.xxh3_64()
            size = 0
            with open(p, "rb") as f:
                while n := f.readinto(view):
                    h.update(view[:n])
                    size += n
            out.append((size, h.hexdigest()))
    return sorted(out)


# -- the machine ---------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine_info(pg_version: str | None = None) -> dict[str, str]:
    """What the numbers were measured on."""
    import datetime as dt
    import platform

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(OUT_DIR)
    fs = "unknown"
    with contextlib.suppress(OSError):
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, kind, *_ = line.split()
            if str(OUT_DIR).startswith(mnt) and len(mnt) > len(best):
                best, fs = mnt, f"{kind} on {dev} ({mnt})"
    commit = _first_line(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "disk": f"{usage.free / 1024**3:.0f} GiB free of {usage.total / 1024**3:.0f} GiB, {fs}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": pg_version or "unknown",
        "redis": _first_line(["redis-server", "--version"]),
        "rsync": _first_line(["rsync", "--version"]),
        "cp": _first_line(["cp", "--version"]),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


# -- a private Postgres (for a machine whose shared server is busy) ------------------------


def _statements_wanted() -> bool:
    return os.environ.get("BENCH_PG_STATEMENTS") == "1"


class PrivatePostgres:
    """A throw-away Postgres server of the installed version, on its own port, configured like
    the machine's (fsync and synchronous commit on), with room for more connections.

    Runs as the ``postgres`` user when started by root (initdb refuses root)."""

    def __init__(self, workdir: Path, max_connections: int = 400) -> None:
        import glob

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        binary = found[-1] if found else shutil.which("initdb")
        if binary is None:
            raise RuntimeError("initdb is not installed (Debian: postgresql)")
        self.bindir = Path(binary).parent
        self.workdir = workdir
        self.port = free_port()
        self.max_connections = max_connections
        self.data = workdir / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> PrivatePostgres:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        subprocess.run(
            self._as_owner(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c max_connections="
            f"{self.max_connections} -c unix_socket_directories={self.workdir} "
            "-c fsync=on -c synchronous_commit=on -c shared_buffers=128MB"
        )
        if _statements_wanted():  # BENCH_PG_STATEMENTS=1: what Postgres spent its time on
            opts += " -c shared_preload_libraries=pg_stat_statements"
        subprocess.run(
            self._as_owner(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.workdir / "postgres.log"),
                    "-o",
                    opts,
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        return self

    def _dump_statements(self) -> None:
        """The 25 statements that took Postgres the most time, into the run's log directory
        (postgres-statements.txt; a diagnosis: ``--private-postgres``, BENCH_PG_STATEMENTS=1)."""
        query = (
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT round(total_exec_time) AS "
            "ms, calls, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 300) FROM "
            "pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25"
        )
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-c", query],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        logs = OUT_DIR / "logs" / self.workdir.name  # the workdir goes with the run
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "postgres-statements.txt").write_text(out.stdout + out.stderr)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if _statements_wanted():
            self._dump_statements()
        subprocess.run(
            self._as_owner(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
            ),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.workdir, ignore_errors=True)


def retry_busy(fn: Any, *args: Any, attempts: int = 60, **kwargs: Any) -> Any:
    """Call ``fn``, waiting out a Postgres that refuses connections because others hold them
    all ("too many clients"); any other error is raised at once."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "too many clients" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


# -- output --------------------------------------------------------------------------------


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON line (for scripts), flushed at once."""
    print(json.dumps(result, sort_keys=False, default=str), flush=True)


# -- the transfer service of a run ------------------------------------------------------------


@dataclass
class BenchTransfer:
    """The run's transfer set-up: one development CA for every host of the run (mutual TLS),
    and per cluster a token secret and a transfer server. ``env`` is the run's worker
    environment: each cluster's secret is added to it before its workers start."""

    setup: LocalTransfer
    env: dict[str, str]
    logdir: Path

    @staticmethod
    def create(base: Path, env: dict[str, str], logdir: Path) -> BenchTransfer:
        setup = local_transfer(base, ["bench"])
        env.update({k: v for k, v in setup.env.items() if not k.endswith("_TRANSFER_SECRET")})
        return BenchTransfer(setup, env, logdir)

    @contextlib.contextmanager
    def serve(self, bc: BenchCluster) -> Iterator[None]:
        """A transfer server for ``bc``'s backends (its "host"), registered in its catalog."""
        self.env[f"REPLICATOR_CLUSTER_{bc.name.upper()}_TRANSFER_SECRET"] = secrets.token_hex(32)
        port = free_port()
        backends = bc.handle.backends()
        for b in backends:
            bc.handle.add_backend(b.name, b.storage_root, self.setup.url(port))
        servers = Workers(self.env, self.logdir / f"transfer-{bc.name}")
        servers.transfer(bc.name, [b.name for b in backends], port)
        try:
            servers.wait_ready(30)
            yield
        finally:
            servers.stop_all()


def write_section(path: Path, section: str, text: str) -> None:
    """Replace the section headed ``section`` of ``path`` with ``text`` (or add it at the
    end): each benchmark owns its section of bench/RESULTS.md."""
    old = path.read_text() if path.exists() else ""
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        rest = old[start + len(section) :]
        nxt = re.search(r"^## ", rest, re.M)
        tail = rest[nxt.start() :] if nxt else ""
        new = old[:start] + text + ("\n" + tail if tail else "")
    path.write_text(new)
