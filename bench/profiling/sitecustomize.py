"""Per-task profiles for Celery workers, loaded only when bench/run.py --profile starts them.

bench/run.py puts this directory on the workers' PYTHONPATH and sets BENCH_PROFILE_DIR; Python
then imports this module at start-up. Every Celery task a pool process runs is profiled on its
own with cProfile (wall-clock timer, so time spent waiting for Postgres shows) and written to
``$BENCH_PROFILE_DIR/<task>-<pid>-<n>.prof``, with ``.json`` beside it counting the task's SQL
statements (by verb), commits, pool checkouts (each one pings the server: pool_pre_ping) and the
process CPU time the task used. Without BENCH_PROFILE_DIR it does nothing. With
BENCH_PROFILE_TIMER=cpu the profiles time CPU, not wall-clock.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

_DIR = os.environ.get("BENCH_PROFILE_DIR")


def _install(directory: str) -> None:

    try:
        from celery import signals
    except ImportError:
        return
    counts: Counter[str] = Counter()
    if not _count_sql(counts):
        return
    start, stop = _task_hooks(directory, counts)
    signals.task_prerun.connect(start, weak=False)
    signals.task_postrun.connect(stop, weak=False)


def _count_sql(counts: Counter[str]) -> bool:
    """Count SQL statements by verb, commits and pool checkouts into ``counts``."""
    try:
        import sqlalchemy as sa
        from sqlalchemy.pool import Pool
    except ImportError:
        return False

    def on_execute(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        counts["sql " + statement.lstrip().split(None, 1)[0].upper()] += 1

    def on_commit(_conn: object) -> None:
        counts["commits"] += 1

    def on_checkout(*_: object) -> None:
        counts["pool checkouts (each pings)"] += 1

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", on_execute)
    sa.event.listen(sa.engine.Engine, "commit", on_commit)
    sa.event.listen(Pool, "checkout", on_checkout)
    return True


def _task_hooks(
    directory: str, counts: Counter[str]
) -> tuple[Callable[..., None], Callable[..., None]]:
    """Celery prerun/postrun handlers: profile each task, dump .prof and .json beside it."""
    import cProfile
    import itertools
    import json
    import time

    running: dict[str, tuple[cProfile.Profile, float, float]] = {}
    count = itertools.count()

    def start(task_id: str | None = None, **_: object) -> None:
        if task_id is None:
            return
        counts.clear()
        # BENCH_PROFILE_TIMER=cpu: process CPU time instead of wall time (what a task costs
        # the machine, not what it waited for).
        cpu = os.environ.get("BENCH_PROFILE_TIMER") == "cpu"
        prof = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
        running[task_id] = (prof, time.perf_counter(), time.process_time())
        prof.enable()

    def stop(
        task_id: str | None = None,
        task: object = None,
        args: object = None,
        kwargs: dict[str, object] | None = None,
        **_: object,
    ) -> None:
        entry = running.pop(task_id or "", None)
        if entry is None:
            return
        prof, wall0, cpu0 = entry
        prof.disable()
        name = getattr(task, "name", "task")
        base = os.path.join(directory, f"{name}-{os.getpid()}-{next(count)}")
        prof.dump_stats(base + ".prof")
        ids = (kwargs or {}).get("task_ids")
        info = {
            "task": name,
            "task_rows": len(ids) if isinstance(ids, list) else None,
            "wall_s": time.perf_counter() - wall0,
            "cpu_s": time.process_time() - cpu0,
            **counts,
        }
        with open(base + ".json", "w") as f:
            json.dump(info, f)

    return start, stop


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _install(_DIR)
