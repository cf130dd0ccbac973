"""One process supervisor for the demo, the tests and the benchmarks.

A supervised process runs in its own process group (so a signal reaches a prefork worker's pool
children too) with its output in a log file. The supervisor waits until processes are ready,
kills or restarts one by name, and stops them all. Worker command lines come from
``workers/commands.py``; :class:`Workers` names them by queue. With a ``pid_dir``, every spawn
leaves ``<name>.pid`` behind, so another process (``make demo-down``) can stop them later with
:func:`stop_recorded`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.queues import queue_name
from workers.commands import backend_worker_argv, coordinator_argv

ROOT = Path(__file__).resolve().parents[1]

# Workers started here start faster without the cluster-wide hello and gossip.
QUIET = ("--without-mingle", "--without-gossip")


class ProcessExited(RuntimeError):
    """A supervised process ended while we were waiting for it to be ready."""

    def __init__(self, proc: Proc) -> None:
        code = proc.popen.returncode if proc.popen is not None else None
        super().__init__(f"{proc.name} exited with code {code}: see {proc.log}\n{proc.tail()}")
        self.proc = proc
        self.code = code


class NotReady(TimeoutError):
    """Processes that did not become ready in time."""

    def __init__(self, names: Sequence[str], timeout: float) -> None:
        super().__init__(f"not ready after {timeout:.0f}s: {', '.join(names)}")
        self.names = list(names)
        self.timeout = timeout


# -- ports -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


# -- primitives --------------------------------------------------------------------------------


def spawn(
    args: Sequence[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session (its own process group), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[2])


def _exists(pid: int, kill: Callable[[int, int], None]) -> bool:
    try:
        kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of the group is left."""
    proc = Path("/proc")
    if not proc.is_dir():
        return _exists(pgid, os.killpg)
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
    return False


def runs(pid: int, words: Iterable[bytes]) -> bool:
    """Guard against a recycled pid: the process exists, is no zombie, and its command line
    holds every one of ``words``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): fall back to "it exists"
        return _exists(pid, os.kill)
    stat = proc_stat(pid)
    return all(w in cmdline for w in words) and stat is not None and stat[0] != "Z"


def wait_groups(pgids: Iterable[int], timeout: float, interval: float = 0.2) -> None:
    groups = list(pgids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(group_alive(p) for p in groups):
        time.sleep(interval)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def celery_ready(log: Path) -> bool:
    """The log's last Celery banner is followed by its " ready." line (each restart appends a
    new banner)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return text.rfind(" ready.") > text.rfind("-------------- ")


# -- supervised processes ----------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    ready_check: Callable[[Proc], bool] | None = None  # None: Celery's " ready." line
    popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ready(self) -> bool:
        """Whether it is ready; raises ProcessExited once it has ended."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessExited(self)
        return self.ready_check(self) if self.ready_check else celery_ready(self.log)

    def tail(self, lines: int = 15) -> str:
        return log_tail(self.log, lines)

    def child_pids(self) -> list[int]:
        """Pool processes of a prefork worker (children of the main process)."""
        assert self.popen is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]


@dataclass
class Supervisor:
    """Processes by name, each in its own group with a log under ``logdir``."""

    env: dict[str, str]
    logdir: Path
    pid_dir: Path | None = None
    procs: dict[str, Proc] = field(default_factory=dict)

    def spawn(
        self, name: str, args: Sequence[str], ready: Callable[[Proc], bool] | None = None
    ) -> Proc:
        return self.start(Proc(name, list(args), self.logdir / f"{name}.log", ready))

    def start(self, proc: Proc) -> Proc:
        proc.popen = spawn(proc.args, proc.log, env=self.env)
        self.procs[proc.name] = proc
        if self.pid_dir is not None:
            self.pid_dir.mkdir(parents=True, exist_ok=True)
            (self.pid_dir / f"{proc.name}.pid").write_text(f"{proc.popen.pid}\n")
        return proc

    def wait_ready(
        self,
        timeout: float = 60,
        names: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Wait until every named process (default: all) is ready; ``progress(ready, total)``
        after each round. Raises NotReady past the timeout, ProcessExited if one ends."""
        todo = list(names if names is not None else self.procs)
        ready: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            ready |= {n for n in todo if n not in ready and self.procs[n].ready()}
            if progress is not None:
                progress(len(ready), len(todo))
            if len(ready) == len(todo):
                return
            if time.monotonic() > deadline:
                raise NotReady([n for n in todo if n not in ready], timeout)
            time.sleep(0.05)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.popen and proc.popen.poll() is None:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait(30)

    def restart(self, name: str, timeout: float = 60) -> None:
        self.kill(name)
        self.start(self.procs[name])
        self.wait_ready(timeout, [name])

    def stop_all(self, timeout: float = 15) -> None:
        """SIGTERM to every group, SIGKILL to those still running after ``timeout``."""
        for proc in self.procs.values():
            if proc.running:
                assert proc.popen is not None
                signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                signal_group(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(10)


@dataclass
class Workers(Supervisor):
    """Celery worker processes for backend queues and the coordinator."""

    def backend(
        self,
        cluster: str,
        backend: str,
        concurrency: int = 1,
        suffix: str = "",
        extra: Sequence[str] = QUIET,
    ) -> Proc:
        queue = queue_name(cluster, backend)
        name = f"{queue}{suffix}"
        return self.spawn(name, backend_worker_argv(queue, f"{name}@%h", concurrency, extra))

    def coordinator(
        self,
        name: str = "coordinator",
        beat: bool = True,
        schedule: Path | None = None,
        extra: Sequence[str] = QUIET,
    ) -> Proc:
        if beat and schedule is None:
            schedule = self.logdir / f"{name}-beat-schedule"
        args = coordinator_argv(f"{name}@%h", 2, str(schedule) if beat else None, extra)
        return self.spawn(name, args)

    def transfer(self, cluster: str, backends: Sequence[str], port: int) -> Proc:
        """The transfer server of a host holding ``backends`` of ``cluster``."""
        args = [sys.executable, "-m", "frontends.cli", "transfer", "serve", "--cluster", cluster]
        for b in backends:
            args += ["--backend", b]
        args += ["--listen", f"127.0.0.1:{port}"]
        return self.spawn(f"transfer.{cluster}", args, lambda _p: port_answers(port))


# -- processes recorded by an earlier run ------------------------------------------------------


@dataclass
class Stopped:
    name: str
    pid: int
    killed: bool  # SIGKILL after SIGTERM timed out


def recorded(pid_dir: Path, words: Iterable[bytes]) -> dict[str, int]:
    """name -> pid of the recorded processes still running ``words``; stale pid files go."""
    found: dict[str, int] = {}
    if not pid_dir.is_dir():
        return found
    words = list(words)
    for pid_file in sorted(pid_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (ValueError, IndexError, OSError):
            pid_file.unlink(missing_ok=True)
            continue
        if runs(pid, words):
            found[pid_file.stem] = pid
        else:
            pid_file.unlink(missing_ok=True)
    return found


def stop_recorded(
    pid_dir: Path,
    words: Iterable[bytes],
    timeout: float,
    waiting: Callable[[int], contextlib.AbstractContextManager[object]] | None = None,
) -> list[Stopped]:
    """Stop every process group named in ``pid_dir``: SIGTERM, SIGKILL after ``timeout``.
    ``waiting(n)`` wraps the wait (e.g. a status line)."""
    running = recorded(pid_dir, words)
    if not running:
        return []
    for pid in running.values():
        signal_group(pid, signal.SIGTERM)
    with waiting(len(running)) if waiting else contextlib.nullcontext():
        wait_groups(running.values(), timeout)
    killed = {name for name, pid in running.items() if group_alive(pid)}
    for name in killed:
        signal_group(running[name], signal.SIGKILL)
    if killed:
        wait_groups([running[n] for n in killed], 10, interval=0.1)
    for name in running:
        (pid_dir / f"{name}.pid").unlink(missing_ok=True)
    return [Stopped(name, pid, name in killed) for name, pid in running.items()]
