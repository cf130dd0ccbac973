"""Wake the coordinator for one job at once, instead of waiting for the next beat tick."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from app.config import Settings
from app.queues import COORDINATOR_QUEUE
from workers.celery_app import celery

_clients: dict[str, Celery] = {}


def _send(client: Celery, cluster: str, job_id: int) -> None:
    client.send_task(
        "replication.tick",
        kwargs={"cluster": cluster, "job_id": job_id},
        queue=COORDINATOR_QUEUE,
        expires=60,
    )


def nudge(cluster: str, job_id: int) -> None:
    _send(celery, cluster, job_id)


def notifier(settings: Settings) -> Callable[[str, int], None]:
    """A nudge for the broker that ``settings`` names (the workers' own app if it is the same)."""
    if settings.broker_url == celery.conf.broker_url:
        return nudge
    client = _clients.get(settings.broker_url)
    if client is None:
        client = Celery("olap_replicator_client", broker=settings.broker_url)
        client.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
        _clients[settings.broker_url] = client
    return lambda cluster, job_id: _send(client, cluster, job_id)
