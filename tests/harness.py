"""Real processes for integration and fault tests: a private Redis and Celery workers.

Every process is a subprocess the test can SIGKILL and restart. Nothing here is mocked.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.queues import queue_name
from workers.commands import backend_worker_argv, coordinator_argv

# Workers in tests start faster without the cluster-wide hello and gossip.
QUIET = ("--without-mingle", "--without-gossip")

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class RedisServer:
    """A redis-server of the test's own, on its own port, keeping nothing on disk."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run `make services` (scripts/services.sh)"
            )
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=open(self.workdir / f"redis-{self.port}.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_until(lambda: _pings(client), 10, f"redis on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def restart_empty(self) -> None:
        """Kill and start again: every queued and unacked message is gone."""
        self.stop()
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def child_pids(self) -> list[int]:
        """Pool processes of a prefork worker (children of the main process)."""
        assert self.popen is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]


@dataclass
class Workers:
    """Celery worker processes for backend queues and the coordinator."""

    env: dict[str, str]
    logdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def _spawn(self, proc: Proc) -> Proc:
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = open(proc.log, "ab")  # noqa: SIM115 - owned by the child
        proc.popen = subprocess.Popen(
            proc.args,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[proc.name] = proc
        return proc

    def backend(self, cluster: str, backend: str, concurrency: int = 1, suffix: str = "") -> Proc:
        queue = queue_name(cluster, backend)
        name = f"{queue}{suffix}"
        args = backend_worker_argv(queue, f"{name}@%h", concurrency, QUIET)
        return self._spawn(Proc(name, args, self.logdir / f"{name}.log"))

    def coordinator(self, name: str = "coordinator", beat: bool = True) -> Proc:
        schedule = str(self.logdir / f"{name}-beat-schedule") if beat else None
        args = coordinator_argv(f"{name}@%h", 2, schedule, QUIET)
        return self._spawn(Proc(name, args, self.logdir / f"{name}.log"))

    def wait_ready(self, timeout: float = 60) -> None:
        for proc in self.procs.values():
            wait_until(functools.partial(_ready, proc), timeout, f"worker {proc.name} to be ready")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.popen and proc.popen.poll() is None:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait(30)

    def restart(self, name: str) -> None:
        proc = self.procs[name]
        self.kill(name)
        self._spawn(proc)
        wait_until(lambda: _ready(proc), 60, f"worker {name} to be ready again")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.popen and proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(10)


def _ready(proc: Proc) -> bool:
    if proc.popen is not None and proc.popen.poll() is not None:
        raise AssertionError(
            f"worker {proc.name} exited: see {proc.log}\n{proc.log.read_text()[-3000:]}"
        )
    try:
        text = proc.log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    # Each (re)start appends a new banner; the last one must say ready.
    return text.rfind(" ready.") > text.rfind("-------------- ")


class PostgresServer:
    """A Postgres of the test's own (initdb in a temp dir, its own port), so a test may kill or
    restart it without touching the machine's. Runs as the ``postgres`` user when we are root."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if found:
            self.bindir = found[-1].parent
        elif shutil.which("pg_ctl"):
            self.bindir = Path(shutil.which("pg_ctl") or "").parent
        else:
            raise RuntimeError("Postgres server binaries are not installed: run `make services`")
        import tempfile

        self.datadir = Path(tempfile.mkdtemp(prefix="olap-pg-")) / "data"
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> PostgresServer:
        if self.as_root:
            shutil.chown(self.datadir.parent, "postgres", "postgres")
        self._run(
            self.bindir / "initdb",
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        return self.start()

    def start(self) -> PostgresServer:
        opts = f"-p {self.port} -k {self.datadir.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            str(self.datadir),
            "-o",
            opts,
            "-l",
            str(self.datadir.parent / "server.log"),
            "-w",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(
            self.bindir / "pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False
        )

    def restart(self, down_for: float = 0.0) -> None:
        """Stop at once (every connection dies), stay down a while, start again."""
        self.stop("immediate")
        time.sleep(down_for)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)
