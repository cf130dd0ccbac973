"""The beat's round over the active jobs: a slice of them each beat, in turn.

``due.due_jobs`` names the jobs a tick would move now, in one query; a need it does not foresee
is caught by ticking every active job now and then. Sending all of them a tick at every beat
grew with the open jobs (1,000 waiting jobs ticked in one beat: 4.8 s, during which no beat
ran), so each beat takes a share of them instead, sized so that every job comes round about
once per ``period`` and bounded by ``MAX_SLICE``: with more than ``MAX_SLICE`` jobs per
``period`` beats, a round takes longer. The beat sends them tick messages (workers/tasks.py).
"""

from __future__ import annotations

import bisect
import math

MAX_SLICE = 100


class Sweep:
    """Round-robin over one cluster's active job ids, remembered between beats."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.after = 0  # the last job id swept: the next slice starts past it
        self.last: float | None = None  # when the last slice was taken

    def slice(self, active: list[int], now: float) -> list[int]:
        """The jobs to tick at this beat, from ``active`` (ascending ids). The first call (a
        coordinator that just started) takes as many as it may."""
        elapsed = self.period if self.last is None else max(now - self.last, 0.0)
        self.last = now
        if not active:
            return []
        share = min(elapsed / self.period, 1.0)
        n = min(max(math.ceil(len(active) * share), 1), MAX_SLICE, len(active))
        start = bisect.bisect_right(active, self.after)
        chosen = (active[start:] + active[:start])[:n]
        self.after = chosen[-1]
        return chosen
