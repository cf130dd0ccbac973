"""Command lines of the worker processes, built in one place for the CLI, the demo and tests."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from app.queues import BEAT_QUEUE, COORDINATOR_QUEUE


def _celery_worker(queue: str, node: str, concurrency: int) -> list[str]:
    # prefetch 1 with late acks: a process reserves only the message it is working on.
    return [
        sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-n", node,
        "-c", str(concurrency), "-P", "prefork", "--prefetch-multiplier", "1", "-E",
        "--loglevel", "INFO",
    ]  # fmt: skip


def backend_worker_argv(
    queue: str, node: str | None = None, concurrency: int = 1, extra: Sequence[str] = ()
) -> list[str]:
    """A worker for one backend queue ``be.<cluster>.<backend>``."""
    return [*_celery_worker(queue, node or f"{queue}@%h", concurrency), *extra]


def coordinator_argv(
    node: str = "coordinator@%h",
    concurrency: int = 2,
    beat_schedule: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The coordinator worker; with ``beat_schedule``, the beat tick runs in it too."""
    argv = _celery_worker(f"{COORDINATOR_QUEUE},{BEAT_QUEUE}", node, concurrency)
    if beat_schedule is not None:
        argv += ["-B", "-s", beat_schedule]
    return [*argv, *extra]
