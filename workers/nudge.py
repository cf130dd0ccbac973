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


# At most one tick message per job waits in the coordinator's queue. A tick that has not started
# yet will read everything committed before it starts, so a second one behind it finds nothing
# to do; with 1,000 open jobs, the beat and the workers sent the same job several (each tick
# costs a transaction and its queries). The key is claimed before a tick is sent and given back
# when that tick starts (:func:`tick_started`), so what is committed after the start gets a tick
# of its own. It expires after PENDING_SEC, in case a message is lost (a broker restarted
# empty): then the next nudge, or the beat, sends again.
PENDING_SEC = 10.0


def _pending_key(cluster: str, job_id: int) -> str:
    return f"replicator:tick-pending:{cluster}:{job_id}"


def _send(client: Celery, settings: Settings, cluster: str, job_id: int) -> bool:
    """Send a tick of the job unless one is waiting already; True when it sent."""
    try:  # redis-py, not kombu's connection: that one retries for seconds when Redis is down
        if not broker.claim_key(settings, _pending_key(cluster, job_id), PENDING_SEC):
            return False
    except redis.RedisError as exc:  # cannot tell: send, and let kombu say if the broker is away
        log.debug("no tick dedupe for %s:%s: %s", cluster, job_id, exc)
    client.send_task(
        "replication.tick",
        kwargs={"cluster": cluster, "job_id": job_id},
        queue=COORDINATOR_QUEUE,
        expires=60,
    )
    return True


def tick_started(cluster: str, job_id: int) -> None:
    """A tick of the job starts here: what happens from now on needs a tick of its own."""
    try:
        broker.release_key(own_settings, _pending_key(cluster, job_id))
    except redis.RedisError as exc:  # the key expires by itself
        log.debug("tick of %s:%s: pending key kept: %s", cluster, job_id, exc)


def nudge(cluster: str, job_id: int) -> bool:
    """Have the coordinator tick the job soon; False if a tick of it is waiting already."""
    return _send(celery, own_settings, cluster, job_id)


# The beat's ticks go BEAT_CHUNK jobs to a message: a message costs about 0.8 ms to send, so
# one per job made a beat over 1,000 due jobs take 2 s; chunks still let every coordinator
# process take a share.
BEAT_CHUNK = 25


def nudge_many(cluster: str, job_ids: list[int]) -> int:
    """The beat's nudges: a tick for each job none is waiting for (the claims in one Redis
    round trip), BEAT_CHUNK jobs to a message; returns how many jobs it sent."""
    try:
        keys = [_pending_key(cluster, j) for j in job_ids]
        claimed = [
            j
            for j, ok in zip(
                job_ids, broker.claim_keys(own_settings, keys, PENDING_SEC), strict=True
            )
            if ok
        ]
    except redis.RedisError as exc:  # cannot tell: send them all
        log.debug("no tick dedupe for %s: %s", cluster, exc)
        claimed = list(job_ids)
    for i in range(0, len(claimed), BEAT_CHUNK):
        celery.send_task(
            "replication.tick",
            kwargs={"cluster": cluster, "job_ids": claimed[i : i + BEAT_CHUNK]},
            queue=COORDINATOR_QUEUE,
            expires=60,
        )
    return len(claimed)


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
        client, settings = celery, own_settings
    else:
        client = _clients.get(key)
        if client is None:
            client = Celery("olap_replicator_client", broker=settings.broker_url)
            client.conf.update(
                task_serializer="json", accept_content=["json"], task_ignore_result=True
            )
            configure(client, settings)
            _clients[key] = client

    def notify(cluster: str, job_id: int) -> None:
        _send(client, settings, cluster, job_id)

    return notify
