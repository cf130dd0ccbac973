"""The broker side of a scrape: queue depths from Redis, consumers from a Celery inspect."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.config import Settings
from app.queues import BACKEND_PATTERN, COORDINATOR_QUEUES
from workers.inspect import inspector

# kombu's Redis transport keeps priorities 3, 6, 9 in sub-lists named <queue><sep><priority>.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_lengths(client: Any, known: Iterable[str]) -> tuple[dict[str, int], int]:
    """LLEN of every backend queue and the coordinator queue, priority sub-lists added in."""
    keys: set[str] = set()
    for raw in client.scan_iter(match=BACKEND_PATTERN, count=1000):
        keys.add(raw.decode() if isinstance(raw, bytes) else raw)
    for queue in known:
        keys |= {queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS}
    keys |= {
        queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}"
        for queue in COORDINATOR_QUEUES
        for p in PRIORITY_STEPS
    }
    ordered = sorted(keys)
    pipe = client.pipeline(transaction=False)
    for key in ordered:
        pipe.llen(key)
    pipe.hlen("unacked")
    results = pipe.execute(raise_on_error=False)
    lengths: dict[str, int] = {}
    for key, n in zip(ordered, results[:-1], strict=True):
        if isinstance(n, Exception):  # not a list (someone else's key): not a queue
            continue
        base = key.split(PRIORITY_SEP, 1)[0]
        lengths[base] = lengths.get(base, 0) + int(n)
    unacked = results[-1]
    return lengths, 0 if isinstance(unacked, Exception) else int(unacked)


def active_consumers(settings: Settings, timeout: float) -> tuple[dict[str, int], int]:
    """Worker nodes per queue, from one ``inspect active_queues`` broadcast."""
    replies = inspector(settings, timeout).active_queues() or {}
    counts: dict[str, int] = {}
    for queues in replies.values():
        for q in queues or []:
            name = q.get("name") if isinstance(q, dict) else None
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts, len(replies)
