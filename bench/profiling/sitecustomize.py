"""Per-task cProfile for Celery workers, loaded only when bench/run.py --profile starts them.

bench/run.py puts this directory on the workers' PYTHONPATH and sets BENCH_PROFILE_DIR; Python
then imports this module at start-up. Every Celery task a pool process runs is profiled on its
own (wall-clock timer, so time spent waiting for Postgres shows) and written to
``$BENCH_PROFILE_DIR/<task>-<pid>-<n>.prof``. Without BENCH_PROFILE_DIR it does nothing.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("BENCH_PROFILE_DIR")


def _install(directory: str) -> None:
    import cProfile
    import itertools

    try:
        from celery import signals
    except ImportError:
        return
    running: dict[str, cProfile.Profile] = {}
    count = itertools.count()

    def start(task_id: str | None = None, **_: object) -> None:
        if task_id is None:
            return
        prof = cProfile.Profile()
        running[task_id] = prof
        prof.enable()

    def stop(task_id: str | None = None, task: object = None, **_: object) -> None:
        prof = running.pop(task_id or "", None)
        if prof is None:
            return
        prof.disable()
        name = getattr(task, "name", "task")
        prof.dump_stats(os.path.join(directory, f"{name}-{os.getpid()}-{next(count)}.prof"))

    signals.task_prerun.connect(start, weak=False)
    signals.task_postrun.connect(stop, weak=False)


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _install(_DIR)
