"""The demo's processes: a worker per backend queue, the coordinator with beat, and Flower, all
run by the shared supervisor with their pids recorded for ``make demo-down``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from app.errors import SetupError
from frontends.demo.common import (
    BACKENDS,
    BEAT_SCHEDULE,
    CLUSTERS,
    FLOWER_PORT,
    LOG_DIR,
    PID_DIR,
    READY_TIMEOUT_SEC,
    STOP_TIMEOUT_SEC,
    console,
    rel,
)
from frontends.demo.lake import LAKE
from frontends.supervise import (
    NotReady,
    Proc,
    ProcessExited,
    Workers,
    free_port,
    port_answers,
    port_free,
    stop_recorded,
)

# Every demo process is this interpreter running a module (celery, or the replicator CLI for the
# transfer servers): a pid whose command line lacks it is not ours (a recycled pid).
OURS = (sys.executable.encode(), b"-m")


def stop_processes(*, verbose: bool = True) -> list[str]:
    """Stop every process named in var/demo/pids: SIGTERM to its group, SIGKILL after a while."""
    from frontends.demo.lake import STORE_PID_DIR, STORE_WORDS

    stopped = stop_recorded(
        PID_DIR,
        OURS,
        STOP_TIMEOUT_SEC,
        waiting=lambda n: console.status(f"Stopping {n} demo processes..."),
    )
    # SeaweedFS takes about 17 s to stop on SIGTERM; its data is the demo's to throw away
    # (the next run deletes it), so it gets 2 s before SIGKILL.
    stopped += stop_recorded(STORE_PID_DIR, STORE_WORDS, 2.0)
    if verbose:
        for s in stopped:
            how = "SIGKILL after SIGTERM timed out" if s.killed else "SIGTERM"
            console.print(f"  stopped {s.name} (pid {s.pid}, {how})")
    return [s.name for s in stopped]


def worker_env(transfer_env: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ) | transfer_env
    env["PYTHONUNBUFFERED"] = "1"
    # The demo's coordinator serves the demo's clusters only, whatever else the server holds.
    env.setdefault("REPLICATOR_COORDINATOR_CLUSTERS", ",".join((*CLUSTERS, LAKE)))
    # Workers run with cwd=ROOT; make them read the same settings file the demo read.
    if "REPLICATOR_CONFIG" not in env and Path("replicator.toml").is_file():
        env["REPLICATOR_CONFIG"] = str(Path("replicator.toml").resolve())
    return env


def start_processes(
    transfer_env: dict[str, str], transfer_ports: dict[str, int]
) -> tuple[Workers, int]:
    """A transfer server per cluster (its "host"), backend workers, the coordinator with beat,
    and Flower. Returns them and Flower's port."""
    procs = Workers(worker_env(transfer_env), LOG_DIR, pid_dir=PID_DIR)
    for cluster in CLUSTERS:
        procs.transfer(cluster, BACKENDS, transfer_ports[cluster])
        for backend in BACKENDS:
            procs.backend(cluster, backend)
    procs.coordinator(schedule=BEAT_SCHEDULE)
    port = FLOWER_PORT if port_free(FLOWER_PORT) else free_port()
    celery = [sys.executable, "-m", "celery", "-A", "workers"]
    procs.spawn(
        "flower",
        [*celery, "flower", f"--port={port}", "--address=127.0.0.1"],
        ready=lambda _p: port_answers(port),
    )
    return procs, port


def _exited(proc: Proc, code: int | None) -> SetupError:
    return SetupError(
        f"{proc.name} exited with code {code} while starting; see {rel(proc.log)}:\n{proc.tail()}"
    )


def wait_ready(procs: Workers) -> bool:
    """Wait for every worker's " ready." line; returns whether Flower answers too."""
    workers = [name for name in procs.procs if name != "flower"]
    with console.status("") as status:
        try:
            procs.wait_ready(
                READY_TIMEOUT_SEC,
                workers,
                lambda n, total: status.update(f"Waiting for the workers: {n}/{total} ready"),
            )
        except ProcessExited as exc:
            raise _exited(exc.proc, exc.code) from None
        except NotReady as exc:
            raise SetupError(
                f"workers not ready after {READY_TIMEOUT_SEC:.0f}s: {', '.join(exc.names)} "
                f"(logs in {rel(LOG_DIR)}/)"
            ) from None
        status.update("Waiting for Flower")
        try:
            procs.wait_ready(20, ["flower"])
        except (ProcessExited, NotReady):
            return False
    return True
