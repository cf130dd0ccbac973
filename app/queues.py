"""Queue names: the one place that spells them.

Every backend has a queue of its own, ``be.<cluster>.<backend>``: snapshot tasks for a source
backend and apply tasks for a target backend go there, and only worker processes on the host that
holds that backend's storage consume it. The coordinator has two: ``coordinator`` for nudges and
``coordinator.beat`` for the periodic tick, so a backlog of nudges can never starve the beat.
The names are routing keys, not Celery objects: the library names them, ``workers`` binds them.
"""

from __future__ import annotations

COORDINATOR_QUEUE = "coordinator"
BEAT_QUEUE = "coordinator.beat"
COORDINATOR_QUEUES = (COORDINATOR_QUEUE, BEAT_QUEUE)

BACKEND_PREFIX = "be."
BACKEND_PATTERN = BACKEND_PREFIX + "*"  # a Redis SCAN/glob pattern for every backend queue


def queue_name(cluster: str, backend: str) -> str:
    return f"{BACKEND_PREFIX}{cluster}.{backend}"


def cluster_pattern(cluster: str) -> str:
    """A glob for every backend queue of one cluster."""
    return f"{BACKEND_PREFIX}{cluster}.*"


def split_queue(queue: str) -> tuple[str, str] | None:
    """(cluster, backend) of a backend queue, or None for any other queue."""
    if not queue.startswith(BACKEND_PREFIX):
        return None
    cluster, sep, backend = queue[len(BACKEND_PREFIX) :].partition(".")
    return (cluster, backend) if sep and cluster and backend else None
