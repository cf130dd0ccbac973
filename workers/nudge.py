"""Wake the coordinator for one job at once, instead of waiting for the next beat tick."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from celery import Celery

from app import broker
from app.config import Settings
from app.queues import COORDINATOR_QUEUE
from workers.celery_app import celery
from workers.celery_app import settings as own_settings
from workers.security import client_key, configure

log = logging.getLogger(__name__)

_clients: dict[tuple[str, ...], Celery] = {}


def _send(client: Celery, cluster: str, job_id: int) -> None:
    client.send_task(
        "replication.tick",
        kwargs={"cluster": cluster, "job_id": job_id},
        queue=COORDINATOR_QUEUE,
        expires=60,
    )


def nudge(cluster: str, job_id: int) -> None:
    _send(celery, cluster, job_id)


# A phase that completes in many small pieces (snapshot messages) wakes the coordinator at most
# this often, so that the next phase (applies) starts on the first pieces instead of waiting
# for the beat's next tick (up to a second) or for the whole phase. Not a tick per piece: that
# makes apply messages of one or two tablets. Measured in bench.transfer (bench/RESULTS.md).
NUDGE_EVERY_SEC = 0.25


def nudge_soon(cluster: str, job_id: int, every_sec: float = NUDGE_EVERY_SEC) -> bool:
    """Nudge unless this job was nudged this way less than ``every_sec`` ago (a Redis key that
    expires, set only if absent: one winner among all workers). False when it did not nudge;
    a broker error is not the caller's problem, the beat's tick covers for it."""
    key = f"replicator:nudged:{cluster}:{job_id}"
    try:  # redis-py, not kombu's connection: that one retries for seconds when Redis is down
        if not broker.claim_key(own_settings, key, every_sec):
            return False
    except redis.RedisError as exc:  # an optimisation only: the beat tick covers
        log.debug("no early nudge for %s:%s: %s", cluster, job_id, exc)
        return False
    nudge(cluster, job_id)
    return True


def notifier(settings: Settings) -> Callable[[str, int], None]:
    """A nudge for the broker that ``settings`` names (the workers' own app if it is the same)."""
    key = client_key(settings)
    if key == client_key(own_settings):
        return nudge
    client = _clients.get(key)
    if client is None:
        client = Celery("olap_replicator_client", broker=settings.broker_url)
        client.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
        configure(client, settings)
        _clients[key] = client
    return lambda cluster, job_id: _send(client, cluster, job_id)
